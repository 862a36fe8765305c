"""Model folders: ``WH/models/<version>/``, written once and read by later stages.

A folder holds::

    model.keras         the trained Keras model (best validation loss; musicnn's head: best validation P@10)
    labels.json         the genre of each output, in order; empty for an embedding-only
                        model (contrastive objective on a catalogue without genres)
    spectrogram.json    the spectrogram settings of the slices it was trained on
    train.json          model preset, precision, epochs, the slices table it came from
    head.npz            a head learnt on stored pretrained features: its weights alone, so
                        embed applies it without loading the network (older folders: read
                        off model.keras)
    history.json        loss and accuracy per epoch (training.png draws them)
    metrics.json        the test-split evaluation (confusion.png draws its matrix), when
                        the model predicts genres
    _SUCCESS            written last: the folder is complete

Versions are named ``<UTC time>-<model preset>`` and sort by age.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.errors import ModelError
from deepcrate.models.feature_head import FeatureHead

logger = logging.getLogger(__name__)

MODELS = "models"
REQUIRED_FILES = ("model.keras", "labels.json", "spectrogram.json", "train.json")
HEAD_FILE = "head.npz"


@dataclass(frozen=True)
class ModelFolder:
    """A complete model folder on the local file system."""

    path: str
    version: str
    labels: list[str]
    spectrogram: SpectrogramSettings
    train: dict[str, Any]

    def load_keras(self, *, compile: bool = False):
        """The Keras model (``compile=False`` for inference: no optimizer state)."""
        import keras

        import deepcrate.models.architectures  # noqa: F401  registers the augmentation layers

        file = os.path.join(self.path, "model.keras")
        try:
            model = keras.models.load_model(file, compile=compile)
        except Exception as exc:  # zip, h5 and deserialisation errors all mean the same to a user
            raise ModelError(f"model {self.path}: model.keras cannot be loaded: {type(exc).__name__}: {exc}") from None
        from deepcrate.models.architectures import EMBEDDING_LAYER

        if not self.labels:
            if model.output_names != [EMBEDDING_LAYER]:
                raise ModelError(f"model {self.path}: labels.json lists no genres but the network's output is "
                                 f"{model.output_names}, not the {EMBEDDING_LAYER!r} layer")
            return model
        outputs = model.outputs[0].shape[-1]
        if outputs != len(self.labels):
            raise ModelError(f"model {self.path}: the network has {outputs} outputs but labels.json "
                             f"lists {len(self.labels)} genres")
        return model

    @property
    def features(self) -> dict[str, Any] | None:
        """What a model whose head learnt on stored pretrained features was trained on (``network``: the
        networks' identity, ``checkpoints``, ``table_version``), or None: it reads the slices."""
        value = self.train.get("features") if isinstance(self.train, dict) else None
        return value if isinstance(value, dict) and "network" in value else None

    def feature_head(self) -> FeatureHead:
        """The head of a model learnt on stored features, in numpy.

        Raises
        ------
        ModelError
            ``head.npz`` unreadable, or its genre layer disagrees with ``labels.json``.
        """
        file = os.path.join(self.path, HEAD_FILE)
        if not os.path.isfile(file):  # written before head.npz was
            return FeatureHead.from_model(self.load_keras())
        try:
            head = FeatureHead.load(file)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"model {self.path}: {HEAD_FILE} cannot be read: {type(exc).__name__}: {exc}") from None
        genres = 0 if head.logits_kernel is None else head.logits_kernel.shape[1]
        if genres != len(self.labels):
            raise ModelError(f"model {self.path}: {HEAD_FILE} has {genres} genre outputs but labels.json "
                             f"lists {len(self.labels)} genres")
        return head

    def check_features(self, metadata, *, where: str) -> None:
        """Refuse a ``pretrained_features`` table of other networks than this model's head learnt on."""
        if self.features is not None and metadata.network != self.features["network"]:
            raise ModelError(f"model {self.version} was trained on pretrained features of {self.features['network']}; "
                             f"{where} holds features of {metadata.network}: compute them again (deepcrate "
                             f"features, or rebuild) with train.pretrained={self.features['checkpoints']}")

    def history(self) -> dict[str, list[float]]:
        """Loss, accuracy and validation P@10 per epoch (``history.json``; empty when absent)."""
        if not os.path.isfile(os.path.join(self.path, "history.json")):
            return {}
        history = _read_json(self.path, "history.json")
        return history if isinstance(history, dict) else {}

    def check_settings(self, settings: SpectrogramSettings, *, what: str) -> None:
        """Refuse slices whose pixels mean something else than the model's (the hop between slices may differ)."""
        differ = self.spectrogram.differences(settings, pixels_only=True)
        if differ:
            detail = ", ".join(f"{k}: model {m!r}, {what} {t!r}" for k, (m, t) in differ.items())
            raise ModelError(
                f"model {self.version} was trained on '{self.spectrogram.preset}' spectrograms and "
                f"{what} holds '{settings.preset}' ones ({detail}); re-ingest with "
                f"spectrogram.preset={self.spectrogram.preset} or train a model on this table"
            )


def read_model_folder(path: str) -> ModelFolder:
    """Open a model folder, checking that it is complete.

    Raises
    ------
    ModelError
        Missing folder, a missing or unreadable file, or inconsistent contents.
    """
    if not os.path.isdir(path):
        raise ModelError(f"model {path}: no such folder")
    missing = [name for name in (*REQUIRED_FILES, "_SUCCESS") if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise ModelError(f"model {path}: incomplete, missing {', '.join(missing)}")
    labels = _read_json(path, "labels.json")
    settings = _read_json(path, "spectrogram.json")
    train = _read_json(path, "train.json")
    if not isinstance(labels, list) or len(labels) == 1 or not all(isinstance(g, str) for g in labels):
        raise ModelError(f"model {path}: labels.json must be a list of at least 2 genre names "
                         f"(or empty, for an embedding-only model)")
    try:
        spectrogram = SpectrogramSettings(**settings)
    except TypeError as exc:
        raise ModelError(f"model {path}: spectrogram.json does not describe spectrogram settings: {exc}") from None
    return ModelFolder(path=path, version=os.path.basename(path.rstrip("/")), labels=labels,
                       spectrogram=spectrogram, train=train)


def latest_model(store, *, scratch: str | None = None) -> str:
    """The local path of the newest published model folder of a :class:`~deepcrate.storage.warehouse.Warehouse`."""
    versions = [v for v in store.list_folder(MODELS) if store.exists(f"{MODELS}/{v}")]
    if not versions:
        raise ModelError(f"warehouse {store.root}: no trained model; run deepcrate train first")
    return store.local_folder(f"{MODELS}/{versions[-1]}", scratch=scratch or tempfile.mkdtemp(prefix="deepcrate-"))


def open_model(store, model: str | None) -> ModelFolder:
    """``model`` as a folder path or a version under ``WH/models`` of a
    :class:`~deepcrate.storage.warehouse.Warehouse`; the newest one when None."""
    if model is None:
        return read_model_folder(latest_model(store))
    if os.path.isdir(model):
        return read_model_folder(model)
    if store.exists(f"{MODELS}/{model}"):
        return read_model_folder(store.local_folder(f"{MODELS}/{model}", scratch=tempfile.mkdtemp(prefix="deepcrate-")))
    versions = store.list_folder(MODELS)
    raise ModelError(f"no model {model!r}: not a folder, nor a version in {store.root}/{MODELS} "
                         f"(has: {', '.join(versions) or 'none'})")


def write_model_folder(folder: str, *, model_file: str, labels: list[str], spectrogram: SpectrogramSettings,
                       history: dict[str, list[float]], train: dict[str, Any],
                       metrics: dict[str, Any] | None = None, head: FeatureHead | None = None) -> None:
    """Write a new model folder (the layout above, less the plots and ``_SUCCESS``) that
    :func:`read_model_folder` reads; ``model_file`` is copied in as ``model.keras``, ``head``
    saved as ``head.npz``."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    shutil.copyfile(model_file, os.path.join(folder, "model.keras"))
    write_json(folder, "labels.json", list(labels))
    write_json(folder, "spectrogram.json", spectrogram.to_dict())
    write_json(folder, "history.json", history)
    write_json(folder, "train.json", train)
    if metrics is not None:
        write_json(folder, "metrics.json", metrics)
    if head is not None:
        head.save(os.path.join(folder, HEAD_FILE))


def write_json(folder: str, name: str, value: Any) -> None:
    with open(os.path.join(folder, name), "w", encoding="utf-8") as out:
        json.dump(value, out, indent=2, sort_keys=True)
        out.write("\n")


def _read_json(folder: str, name: str) -> Any:
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {folder}: {name} is not readable JSON: {exc}") from None
