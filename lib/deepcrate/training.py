"""Train the genre classifier on the ``slices`` table, evaluate it, publish a model folder.

The run lives in a work folder (``train.work_dir``) until it is published::

    <work_dir>/<version>/config.yaml   the resolved config (a resumed run keeps it)
    <work_dir>/<version>/state.json    epochs done, history, early-stopping state
    <work_dir>/<version>/last.keras    the model after the last finished epoch (with optimizer)
    <work_dir>/<version>/best.keras    the model with the lowest validation loss so far

Every finished epoch is checkpointed, so ``resume=True`` continues an interrupted run
where it stopped. At the end the best model is evaluated on the test split and its
folder (see :mod:`deepcrate.model_store`) is published to ``WH/models/<version>``
together with the ``evaluation`` table.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import yaml

from deepcrate import __version__
from deepcrate.config import config_to_yaml
from deepcrate.errors import ConfigError, TrainingError
from deepcrate.genre_accuracy import Evaluation
from deepcrate.model import MODEL_PRESETS, build_model, embedding_model, pair_contrastive_loss, slices_per_call
from deepcrate.model_store import MODELS, ModelFolder, open_model, read_model_folder, write_json
from deepcrate.pipeline import Outcome, RebuildContext, Stage, digest, without
from deepcrate.schemas import Table
from deepcrate.slice_reader import SliceTable
from deepcrate.spectrogram import SpectrogramSettings
from deepcrate.uris import local_path
from deepcrate.warehouse import Warehouse, holds_writer_lock

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
OBJECTIVES = ("classify", "contrastive", "supcon")
FINE_TUNING = ("head", "all")
HEAD_EPOCHS = 10  # the genre head on a contrastive embedding: a linear layer, quick to fit


@dataclass(frozen=True)
class TrainSettings:
    """The ``train`` section of the config, checked."""

    model: str
    objective: str
    batch_size: int
    max_epochs: int
    patience: int
    learning_rate: float
    balance_genres: bool
    fine_tune: str
    pretrained: str
    head_max_epochs: int
    head_patience: int
    precision: str
    shuffle_buffer: int
    interleave: int
    seed: int
    work_dir: str
    progress_interval_s: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrainSettings:
        section = dict(config["train"])
        settings = cls(**section)
        if settings.model not in MODEL_PRESETS:
            raise ConfigError(f"train.model must be one of {MODEL_PRESETS}, got {settings.model!r}")
        if settings.objective not in OBJECTIVES:
            raise ConfigError(f"train.objective must be one of {OBJECTIVES}, got {settings.objective!r}")
        if settings.fine_tune not in FINE_TUNING:
            raise ConfigError(f"train.fine_tune must be one of {FINE_TUNING}, got {settings.fine_tune!r}")
        if settings.model == "musicnn" and settings.objective == "contrastive":
            raise ConfigError("train.model=musicnn learns with train.objective=classify or supcon (the pretrained "
                              "embedding needs no labels: a catalogue without genres gets it as it is)")
        if settings.objective == "supcon" and not (settings.model == "musicnn" and settings.fine_tune == "head"):
            raise ConfigError("train.objective=supcon trains the head on a pretrained network's features "
                              "(train.model=musicnn, train.fine_tune=head) only, so far")
        if settings.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {settings.precision!r}")
        if settings.model == "musicnn":
            from deepcrate.musicnn import parse_checkpoints

            parse_checkpoints(settings.pretrained)
        for name in ("batch_size", "max_epochs", "patience", "head_max_epochs", "head_patience", "shuffle_buffer",
                     "interleave"):
            if getattr(settings, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(settings, name)}")
        if settings.learning_rate < 0:
            raise ConfigError(f"train.learning_rate must be > 0 (or 0 for the preset's own), got {settings.learning_rate}")
        return settings


@dataclass
class TrainResult:
    version: str
    model_uri: str
    evaluation: Evaluation | None  # None: no genre head to evaluate
    epochs: int
    best_epoch: int
    stopped_early: bool
    precision: str
    devices: list[str] = field(default_factory=list)
    kept_by: str = "validation loss"

    def lines(self) -> list[str]:
        stop = f"early stop after {self.epochs} epochs" if self.stopped_early else f"{self.epochs} epochs"
        return [
            f"model {self.version}: {stop}, best {self.kept_by} at epoch {self.best_epoch} "
            f"({self.precision} on {', '.join(self.devices)})",
            *(self.evaluation.report_lines() if self.evaluation is not None
              else ["no genre head: the catalogue has no usable genres; songs are embedded, not classified"]),
            f"model folder: {self.model_uri} "
            f"({'metrics.json, confusion.png, ' if self.evaluation is not None else ''}training.png)",
            "next: deepcrate embed, index and evaluate (the evaluation table), or deepcrate rebuild",
        ]


@holds_writer_lock()
def train(
    spark,
    *,
    warehouse: str,
    config: dict[str, Any],
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    fingerprint: str | None = None,
) -> TrainResult:
    """Train, evaluate and publish a model from ``WH/slices``.

    Parameters
    ----------
    spark : SparkSession
        Used for the warehouse's file system (training itself runs in this process).
    warehouse : str
        The warehouse an ingest wrote.
    config : dict
        The resolved config; its ``train`` section drives the run.
    resume : bool
        Continue the newest unfinished run in the work folder (with that run's config).
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks, run after the checkpoint of each epoch is written.
    fingerprint : str, optional
        The rebuild's fingerprint of the run's inputs: stored in a new run's state, so that
        a rebuild resumes only a run started from the same inputs, and in ``train.json``.

    Raises
    ------
    TrainingError
        No run to resume, no usable train split, a single genre, genres missing from
        the validation split, or a slices table made with other spectrogram settings.
        With ``train.objective=contrastive`` the genre checks only decide whether a genre
        head is fitted (without one, ``labels.json`` is empty and no genre is predicted);
        the train and validation splits just need slices.
    """
    store = Warehouse(spark, warehouse, table_format=config["warehouse"]["table_format"])
    work_root = _work_root(store, TrainSettings.from_config(config))
    if resume:
        run_dir, config = _unfinished_run(work_root, given=config)
    else:
        run_dir = None
    settings = TrainSettings.from_config(config)
    check_pretrained_weights(settings)  # before a run folder exists
    spectrogram = _table_settings(store, config)
    table = store.arrow.slice_table(image_shape=(spectrogram.n_rows, spectrogram.slice_frames))
    counts = table.genre_counts()
    labels = _genres_to_learn(counts, uri=table.uri, objective=settings.objective,
                              labels_optional=settings.model == "musicnn")
    if run_dir is None:
        run_dir = _new_run(work_root, settings, config, fingerprint=fingerprint)
    version = os.path.basename(run_dir)

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    precision = _precision(settings.precision, gpus)
    devices = [g.name for g in gpus] or ["CPU"]
    state = _State.load(run_dir)
    keras.utils.set_random_seed(settings.seed + state.epochs_done)
    previous_policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        strategy = tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
        if not state.finished:
            logger.info("training %s (%s model, %s, %d train / %d validation slices, %d genres) on %s",
                        version, settings.model, precision,
                        _slices_learnt(counts, "train", labels=labels, settings=settings),
                        _slices_learnt(counts, "validation", labels=labels, settings=settings),
                        len(labels), ", ".join(devices))
            if _on_frozen_features(settings):
                _fit_pretrained_head(run_dir, table=table, labels=labels, counts=counts, settings=settings,
                                     state=state, spectrogram=spectrogram)
            else:
                with strategy.scope():  # a contrastive encoder drops the head: any width builds it
                    model = _model_to_train(run_dir, state, settings, n_classes=max(len(labels), 2),
                                            input_shape=table.image_shape, spectrogram=spectrogram)
                _fit(model, table=table, labels=labels, counts=counts, settings=settings, state=state,
                     run_dir=run_dir, callbacks=callbacks)
        final = _final_model_file(settings, labels)
        if final == "classifier.keras" and not os.path.exists(os.path.join(run_dir, final)):
            with strategy.scope():
                _fit_genre_head(run_dir, table=table, labels=labels, counts=counts, settings=settings)
        evaluation = None
        if labels:
            best = keras.models.load_model(os.path.join(run_dir, final), compile=False)
            evaluation = evaluate_model(best, table=table, labels=labels, version=version,
                                        batch_size=settings.batch_size)
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)

    model_dir = os.path.join(run_dir, "model")
    _write_model_folder(model_dir, run_dir=run_dir, labels=labels, spectrogram=spectrogram, settings=settings,
                        state=state, evaluation=evaluation, precision=precision, devices=devices,
                        slices_meta=store.metadata(Table.SLICES), table_uri=table.uri, counts=counts)
    _publish(store, version=version, model_dir=model_dir)
    shutil.rmtree(run_dir)
    if not os.listdir(work_root):
        os.rmdir(work_root)
    return TrainResult(version=version, model_uri=store.table_uri(f"{MODELS}/{version}"), evaluation=evaluation,
                       epochs=state.epochs_done, best_epoch=state.best_epoch, stopped_early=state.stopped_early,
                       precision=precision, devices=devices,
                       kept_by=("validation P@10" if _on_frozen_features(settings) and labels else "validation loss"))


def evaluate_model(model, *, table: SliceTable, labels: Sequence[str], version: str, batch_size: int) -> Evaluation:
    """Predict every labelled test slice and score slices and songs."""
    song_ids, true_labels, probabilities = [], [], []
    batch_size = slices_per_call(model, batch_size)
    for batch in table.batches(split="test", labels=labels, batch_size=batch_size):
        probabilities.append(np.asarray(model.predict_on_batch(batch.images), dtype=np.float32))
        song_ids.append(batch.song_ids)
        true_labels.append(batch.labels)
    if not song_ids:
        logger.warning("the test split has no labelled slices: the evaluation is empty")
    return Evaluation.from_predictions(
        model_version=version,
        labels=labels,
        song_ids=np.concatenate(song_ids) if song_ids else np.zeros(0, dtype=object),
        true_labels=np.concatenate(true_labels) if true_labels else np.zeros(0, dtype=np.int32),
        probabilities=np.concatenate(probabilities) if probabilities else np.zeros((0, len(labels)), np.float32),
    )


# -- checks before training ------------------------------------------------------------


def _table_settings(store: Warehouse, config: dict[str, Any]) -> SpectrogramSettings:
    if not store.exists(Table.SLICES):
        raise TrainingError(f"warehouse {store.root}: no slices table; run deepcrate ingest first")
    table = SpectrogramSettings(**store.metadata(Table.SLICES)["spectrogram"])
    wanted = SpectrogramSettings.from_config(config)
    differences = table.differences(wanted)
    if differences:
        detail = ", ".join(f"{k}: table {t!r}, config {c!r}" for k, (t, c) in differences.items())
        # Only these are config keys of their own; the rest follow from the preset.
        hint = " ".join(f"--set spectrogram.{k}={t}" for k, (t, _) in differences.items()
                        if k in ("preset", "slice_frames", "slice_hop_frames")) or "the table's spectrogram settings"
        raise TrainingError(
            f"the slices table was made with other spectrogram settings than the config asks for ({detail}); "
            f"train with {hint} or re-ingest with the settings you want"
        )
    return table


def _genres_to_learn(counts: dict[str, dict[str | None, int]], *, uri: str, objective: str,
                     labels_optional: bool = False) -> list[str]:
    """The genres the model's head predicts: none for a contrastive embedding without usable
    labels, nor for a pretrained one (``labels_optional``)."""
    if objective != "contrastive":
        genres = {g for g, n in counts.get("train", {}).items() if g is not None and n}
        if labels_optional and len(genres) < 2:
            logger.warning("no genre head (%s in the train split): songs get the pretrained embedding and no "
                           "predicted genre", f"one genre, {genres.pop()!r}," if genres else "no genres")
            return []
        return _check_splits(counts, uri=uri)
    for split in ("train", "validation"):  # pairs to learn from, and pairs for early stopping
        if not sum(counts.get(split, {}).values()):
            raise TrainingError(f"slices table {uri}: the {split} split has no slices; the contrastive "
                                f"objective needs songs in both the train and the validation split")
    try:
        return _check_splits(counts, uri=uri)
    except TrainingError as exc:
        logger.warning("no genre head (%s): the embedding is learnt without labels and songs get no "
                       "predicted genre", exc)
        return []


def _check_splits(counts: dict[str, dict[str | None, int]], *, uri: str) -> list[str]:
    """The label list (the train split's genres, sorted), after checking the splits can train."""
    train = {g: n for g, n in counts.get("train", {}).items() if g is not None}
    if not train:
        unlabelled = counts.get("train", {}).get(None, 0)
        why = f"its {unlabelled} slices have no genre" if unlabelled else "it is empty"
        raise TrainingError(f"slices table {uri}: no labelled slices in the train split ({why}); "
                            f"give genres with --manifest or one folder per genre, and enough songs per genre")
    labels = sorted(train)
    if len(labels) < 2:
        raise TrainingError(f"slices table {uri}: the train split has one genre only ({labels[0]!r}); "
                            f"a genre classifier needs at least two")
    validation = {g for g, n in counts.get("validation", {}).items() if g is not None and n}
    missing = [g for g in labels if g not in validation]
    if missing:
        raise TrainingError(
            f"slices table {uri}: no validation slices for {', '.join(missing)}; early stopping would "
            f"ignore them. Add songs to those genres or raise split.validation and re-ingest"
        )
    for split in ("validation", "test"):
        unknown = sorted(g for g in counts.get(split, {}) if g is not None and g not in train)
        if unknown:
            logger.warning("%s slices of genres absent from the train split are ignored: %s",
                           split, ", ".join(unknown))
    return labels


def _slices_learnt(counts: dict[str, dict[str | None, int]], split: str, *, labels: Sequence[str],
                   settings: TrainSettings) -> int:
    """Slices of ``split`` the objective reads: every one for contrastive pairs, labelled ones otherwise."""
    if settings.objective == "contrastive":
        return sum(counts.get(split, {}).values())
    return _total(counts, split, labels)


def _total(counts: dict[str, dict[str | None, int]], split: str, labels: Sequence[str]) -> int:
    return sum(n for g, n in counts.get(split, {}).items() if g in labels)


# -- the work folder -------------------------------------------------------------------


def _work_root(store: Warehouse, settings: TrainSettings) -> str:
    if settings.work_dir:
        return os.path.abspath(os.path.expanduser(settings.work_dir))
    if store.root.startswith("file:"):
        return local_path(store.root) + "/_training"
    digest = hashlib.sha256(store.root.encode()).hexdigest()[:12]
    return os.path.expanduser(f"~/.cache/deepcrate/training/{digest}")


def can_resume(store: Warehouse, config: dict[str, Any], *, fingerprint: str) -> bool:
    """Whether ``resume=True`` would continue an interrupted run started with ``fingerprint``."""
    runs = _runs_in(_work_root(store, TrainSettings.from_config(config)))
    return bool(runs) and _State.load(runs[-1]).fingerprint == fingerprint


def _runs_in(work_root: str) -> list[str]:
    if not os.path.isdir(work_root):
        return []
    return sorted(os.path.join(work_root, d) for d in os.listdir(work_root)
                  if os.path.isfile(os.path.join(work_root, d, "state.json")))


def _new_run(work_root: str, settings: TrainSettings, config: dict[str, Any], *, fingerprint: str | None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kind = settings.model if settings.objective == "classify" else f"{settings.model}-{settings.objective}"
    base = os.path.join(work_root, f"{stamp}-{kind}")
    run_dir, n = base, 1
    while os.path.exists(run_dir):
        n += 1
        run_dir = f"{base}-{n}"
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as out:
        out.write(config_to_yaml(config) + "\n")
    _State(fingerprint=fingerprint).save(run_dir)
    return run_dir


def _unfinished_run(work_root: str, *, given: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    runs = _runs_in(work_root)
    if not runs:
        raise TrainingError(f"nothing to resume: no unfinished training run in {work_root}")
    run_dir = runs[-1]
    try:
        with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as stream:
            config = yaml.safe_load(stream)
    except (OSError, yaml.YAMLError) as exc:
        raise TrainingError(f"cannot resume {run_dir}: its config.yaml is unreadable: {exc}") from None
    state = _State.load(run_dir)
    if config != given:
        logger.warning("resuming %s with the config it started with; settings given now are ignored", run_dir)
    logger.info("resuming %s after epoch %d", run_dir, state.epochs_done)
    return run_dir, config


@dataclass
class _State:
    """What a resumed run needs besides the model: saved after every epoch."""

    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    wait: int = 0
    stopped_early: bool = False
    finished: bool = False
    fingerprint: str | None = None  # the rebuild job's record of the run's inputs

    @classmethod
    def load(cls, run_dir: str) -> _State:
        try:
            with open(os.path.join(run_dir, "state.json"), encoding="utf-8") as stream:
                return cls(**json.load(stream))
        except (OSError, ValueError, TypeError) as exc:
            raise TrainingError(f"cannot resume {run_dir}: state.json is unreadable: {exc}") from None

    def save(self, run_dir: str) -> None:
        tmp = os.path.join(run_dir, "state.json.tmp")
        write_json(run_dir, "state.json.tmp", self.__dict__)
        os.replace(tmp, os.path.join(run_dir, "state.json"))


# -- the Keras part --------------------------------------------------------------------


def _precision(requested: str, gpus: list) -> str:
    if requested != "auto":
        return requested
    if not gpus:
        return "float32"
    import tensorflow as tf

    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) for g in gpus]
    return "mixed_bfloat16" if min(capabilities) >= (8, 0) else "mixed_float16"


def check_pretrained_weights(settings: TrainSettings) -> None:
    """Raise ConfigError, naming what to install, when the model needs pretrained weights that are missing."""
    if settings.model == "musicnn":
        from deepcrate.musicnn import checkpoint_prefix, parse_checkpoints

        for name in parse_checkpoints(settings.pretrained):
            checkpoint_prefix(name)


def _on_frozen_features(settings: TrainSettings) -> bool:
    """Whether only a head is learnt, on a pretrained network's features computed once."""
    return settings.model == "musicnn" and settings.fine_tune == "head"


def _fit_pretrained_head(run_dir: str, *, table: SliceTable, labels: list[str], counts, settings: TrainSettings,
                         state: _State, spectrogram: SpectrogramSettings) -> None:
    """The head on the frozen musicnn features (or, without genres, the principal-component
    embedding), saved as best.keras: minutes on a CPU, so a resumed run starts it again."""
    from deepcrate.transfer import fit_head, pretrained_model, principal_embedding

    model = pretrained_model(n_classes=max(len(labels), 2), image_shape=table.image_shape,
                             level_range=spectrogram.db_range, checkpoint=settings.pretrained, seed=settings.seed)
    if labels:
        history, best_epoch, stopped_early = fit_head(
            model, table=table, labels=labels, objective=settings.objective, batch_size=settings.batch_size,
            max_epochs=settings.head_max_epochs, patience=settings.head_patience,
            learning_rate=settings.learning_rate or 0.001,
            class_weight=_genre_weights(counts, labels=labels, settings=settings),
            interval_s=settings.progress_interval_s)
        state.history, state.best_epoch, state.stopped_early = history, best_epoch, stopped_early
        state.epochs_done = len(history["loss"])
        state.best_val_loss = min(history["val_loss"])
    else:
        model = principal_embedding(model, table=table, batch_size=settings.batch_size,
                                    interval_s=settings.progress_interval_s)
    tmp = os.path.join(run_dir, "tmp-best.keras")
    model.save(tmp)
    os.replace(tmp, os.path.join(run_dir, "best.keras"))
    state.finished = True
    state.save(run_dir)


def _model_to_train(run_dir: str, state: _State, settings: TrainSettings, *, n_classes: int,
                    input_shape: tuple[int, int], spectrogram: SpectrogramSettings):
    if state.epochs_done:
        try:  # the optimizer state comes back with the weights
            return keras.models.load_model(os.path.join(run_dir, "last.keras"))
        except Exception as exc:
            raise TrainingError(f"cannot resume {run_dir}: last.keras is unreadable: {exc}") from None
    if settings.model == "musicnn":  # train.fine_tune=all: every layer learns, from the pretrained weights
        from deepcrate.transfer import pretrained_model

        model = pretrained_model(n_classes=n_classes, image_shape=input_shape, level_range=spectrogram.db_range,
                                 checkpoint=settings.pretrained, seed=settings.seed)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=settings.learning_rate or 0.0001),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model
    model = build_model(preset=settings.model, n_classes=n_classes, input_shape=input_shape, seed=settings.seed)
    if settings.objective == "contrastive":  # the encoder alone: the genre head comes afterwards
        encoder = embedding_model(model)
        encoder.compile(optimizer=keras.optimizers.Adam(learning_rate=settings.learning_rate or 0.001),
                        loss=pair_contrastive_loss)
        return encoder
    if settings.model == "seed":  # the original's optimizer
        optimizer = keras.optimizers.RMSprop(learning_rate=settings.learning_rate or 0.001)
    else:
        # 0.001: at 0.003 the improved model settled on the largest genre on real recordings
        # (README, Evaluate: P@10 0.370 vs 0.427 over 3 seeds)
        optimizer = keras.optimizers.Adam(learning_rate=settings.learning_rate or 0.001)
    # Integer labels with the sparse loss: the same categorical cross-entropy, no one-hot copies.
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _fit(model, *, table: SliceTable, labels: list[str], counts, settings: TrainSettings, state: _State,
         run_dir: str, callbacks: Sequence[Any]) -> None:
    train_slices = _slices_learnt(counts, "train", labels=labels, settings=settings)
    weights = None
    if settings.objective == "contrastive":  # every slice, labelled or not
        data = pair_dataset(table, split="train", settings=settings, first_epoch=state.epochs_done)
        validation = pair_dataset(table, split="validation", settings=settings, fixed_seed=True)
    else:
        weights = _genre_weights(counts, labels=labels, settings=settings)
        data = training_dataset(table, labels=labels, settings=settings, n_slices=train_slices,
                                first_epoch=state.epochs_done)
        validation = validation_dataset(table, labels=labels, batch_size=settings.batch_size,
                                        n_slices=_total(counts, "validation", labels))
    model.fit(
        data,
        validation_data=validation,
        epochs=settings.max_epochs,
        initial_epoch=state.epochs_done,
        class_weight=weights,
        shuffle=False,  # the dataset shuffles itself
        verbose=0,
        callbacks=[
            _Checkpoint(run_dir, state, patience=settings.patience),
            _ProgressLog(max_epochs=settings.max_epochs, train_slices=train_slices,
                         batch_size=settings.batch_size, interval_s=settings.progress_interval_s),
            *callbacks,
        ],
    )
    state.finished = True
    state.save(run_dir)


def _genre_weights(counts: dict[str, dict[str | None, int]], *, labels: Sequence[str],
                   settings: TrainSettings) -> dict[int, float] | None:
    """Loss weight of each genre index so that every genre of the train split weighs the same
    in total (``train.balance_genres``); None when off.

    Real catalogues are uneven: unweighted, a small model can settle on always answering
    the largest genre.
    """
    if not settings.balance_genres:
        return None
    train = counts.get("train", {})
    total = sum(train[genre] for genre in labels)
    return {index: total / (len(labels) * train[genre]) for index, genre in enumerate(labels)}


def training_dataset(table: SliceTable, *, labels: Sequence[str], settings: TrainSettings, n_slices: int,
                     first_epoch: int = 0):
    """The train split as a tf.data pipeline of (uint8 images, label) batches, reshuffled every epoch.

    Keras iterates the dataset afresh each epoch; each pass draws its order from
    ``(train.seed, epoch)``, so a resumed run sees the orders it would have seen.
    """
    next_epoch = [first_epoch]

    def batches():
        epoch_seed = int(np.random.SeedSequence([settings.seed, next_epoch[0]]).generate_state(1)[0])
        next_epoch[0] += 1
        for batch in table.shuffled_batches(split="train", labels=labels, batch_size=settings.batch_size,
                                            buffer_size=settings.shuffle_buffer, interleave=settings.interleave,
                                            seed=epoch_seed):
            yield batch.images, batch.labels

    return _dataset(batches, table.image_shape, n_batches=_n_batches(n_slices, settings.batch_size))


def pair_dataset(table: SliceTable, *, split: str, settings: TrainSettings, first_epoch: int = 0,
                 fixed_seed: bool = False):
    """Batches of slice pairs for the contrastive objective (labels are not read: zeros).

    The number of batches depends on how the songs fall into the shuffle buffer, so the
    dataset has no declared length; ``fixed_seed`` gives the same pairs every pass (validation).
    """
    import tensorflow as tf

    next_epoch = [first_epoch]

    def batches():
        epoch = 0 if fixed_seed else next_epoch[0]
        next_epoch[0] += 1
        epoch_seed = int(np.random.SeedSequence([settings.seed, epoch, 1]).generate_state(1)[0])
        for batch in table.paired_batches(split=split, batch_size=settings.batch_size,
                                          buffer_size=settings.shuffle_buffer, interleave=settings.interleave,
                                          seed=epoch_seed):
            yield batch.images, np.zeros(len(batch.images), np.int32)

    signature = (tf.TensorSpec((None, *table.image_shape), tf.uint8), tf.TensorSpec((None,), tf.int32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)


def _fit_genre_head(run_dir: str, *, table: SliceTable, labels: list[str], counts, settings: TrainSettings) -> None:
    """The classifier on top of the best contrastive encoder: only its last layer learns.

    Gives the embed stage its genre probabilities (predicted genres for unlabelled songs)
    and the evaluation its song accuracy; the embedding itself is not changed.
    """
    encoder = keras.models.load_model(os.path.join(run_dir, "best.keras"), compile=False)
    model = build_model(preset=settings.model, n_classes=len(labels), input_shape=table.image_shape,
                        seed=settings.seed)
    for layer in encoder.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    for layer in model.layers:
        layer.trainable = layer.name == "logits"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.003), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    logger.info("fitting the genre head on the contrastive embedding (%d genres)", len(labels))
    model.fit(
        training_dataset(table, labels=labels, settings=settings, n_slices=_total(counts, "train", labels)),
        validation_data=validation_dataset(table, labels=labels, batch_size=settings.batch_size,
                                           n_slices=_total(counts, "validation", labels)),
        epochs=HEAD_EPOCHS, class_weight=_genre_weights(counts, labels=labels, settings=settings),
        shuffle=False, verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)],
    )
    for layer in model.layers:
        layer.trainable = True
    tmp = os.path.join(run_dir, "tmp-classifier.keras")
    model.save(tmp)
    os.replace(tmp, os.path.join(run_dir, "classifier.keras"))


def _final_model_file(settings: TrainSettings, labels: Sequence[str]) -> str:
    """The run's file that becomes model.keras: the best classifier, the contrastive encoder
    with its genre head, or the encoder alone when there are no genres to predict."""
    return "classifier.keras" if settings.objective == "contrastive" and labels else "best.keras"


def validation_dataset(table: SliceTable, *, labels: Sequence[str], batch_size: int, n_slices: int):
    """The validation split in table order."""
    def batches():
        for batch in table.batches(split="validation", labels=labels, batch_size=batch_size):
            yield batch.images, batch.labels

    return _dataset(batches, table.image_shape, n_batches=_n_batches(n_slices, batch_size))


def _n_batches(n_slices: int, batch_size: int) -> int:
    return -(-n_slices // batch_size)


def _dataset(batches: Any, image_shape: tuple[int, int], *, n_batches: int):
    """A tf.data pipeline over a batch generator; the known length lets Keras plan its epochs."""
    import tensorflow as tf

    signature = (tf.TensorSpec((None, *image_shape), tf.uint8), tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)


class _Checkpoint(keras.callbacks.Callback):
    """Save last.keras / best.keras and the state after each epoch; stop early on a plateau."""

    def __init__(self, run_dir: str, state: _State, *, patience: int) -> None:
        super().__init__()
        self.run_dir, self.state, self.patience = run_dir, state, patience

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        state = self.state
        for key, value in logs.items():
            state.history.setdefault(key, []).append(float(value))
        self._save("last.keras")
        val_loss = float(logs.get("val_loss", np.inf))
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.wait = val_loss, epoch + 1, 0
            self._copy("last.keras", "best.keras")
        else:
            state.wait += 1
        state.epochs_done = epoch + 1
        if state.wait >= self.patience:
            state.stopped_early = True
            self.model.stop_training = True
            logger.info("early stop: no lower validation loss for %d epochs", state.wait)
        state.save(self.run_dir)

    def _save(self, name: str) -> None:
        tmp = os.path.join(self.run_dir, "tmp-" + name)
        self.model.save(tmp)
        os.replace(tmp, os.path.join(self.run_dir, name))  # never a half-written checkpoint

    def _copy(self, source: str, name: str) -> None:
        tmp = os.path.join(self.run_dir, "tmp-" + name)
        shutil.copyfile(os.path.join(self.run_dir, source), tmp)
        os.replace(tmp, os.path.join(self.run_dir, name))


class _ProgressLog(keras.callbacks.Callback):
    """A line per epoch, and within long epochs one every ``interval_s`` seconds."""

    def __init__(self, *, max_epochs: int, train_slices: int, batch_size: int, interval_s: float) -> None:
        super().__init__()
        self.max_epochs, self.train_slices, self.batch_size, self.interval_s = (
            max_epochs, train_slices, batch_size, interval_s)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = self.last = time.monotonic()
        self.epoch, self.batches = epoch, 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches += 1
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            done = min(self.batches * self.batch_size, self.train_slices)
            logger.info("epoch %d/%d: %d/%d slices, loss %.4f, %.0f slices/s", self.epoch + 1, self.max_epochs,
                        done, self.train_slices, (logs or {}).get("loss", np.nan), done / (now - self.started))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        seconds = time.monotonic() - self.started
        logger.info("epoch %d/%d: loss %.4f accuracy %.3f, validation loss %.4f accuracy %.3f (%.1f s, %.0f slices/s)",
                    epoch + 1, self.max_epochs, logs.get("loss", np.nan), logs.get("accuracy", np.nan),
                    logs.get("val_loss", np.nan), logs.get("val_accuracy", np.nan), seconds,
                    self.train_slices / seconds if seconds else 0)


# -- publishing ------------------------------------------------------------------------


def _write_model_folder(model_dir: str, *, run_dir: str, labels, spectrogram: SpectrogramSettings,
                        settings: TrainSettings, state: _State, evaluation: Evaluation | None, precision: str,
                        devices: list[str], slices_meta: dict[str, Any], table_uri: str, counts) -> None:
    from deepcrate.plots import plot_confusion, plot_training

    version = os.path.basename(run_dir)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.makedirs(model_dir)
    shutil.copyfile(os.path.join(run_dir, _final_model_file(settings, labels)), os.path.join(model_dir, "model.keras"))
    write_json(model_dir, "labels.json", list(labels))
    write_json(model_dir, "spectrogram.json", spectrogram.to_dict())
    write_json(model_dir, "history.json", state.history)
    if evaluation is not None:
        write_json(model_dir, "metrics.json", evaluation.metrics())
    write_json(model_dir, "train.json", {
        "version": version,
        "deepcrate_version": __version__,
        "settings": settings.__dict__,
        "precision": precision,
        "devices": devices,
        "epochs": state.epochs_done,
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss,
        "stopped_early": state.stopped_early,
        "slices_table": table_uri,
        "audio": slices_meta.get("audio"),
        "split": slices_meta.get("split"),
        "slices": {split: _slices_learnt(counts, split, labels=labels, settings=settings)
                   for split in ("train", "validation", "test")},
        "fingerprint": state.fingerprint,
    })
    if evaluation is not None:
        plot_confusion(os.path.join(model_dir, "confusion.png"), matrix=evaluation.confusion, labels=labels,
                       title=f"{version}: test songs (song accuracy "
                             f"{100 * (evaluation.metrics()['song_accuracy'] or 0):.1f}%)")
    plot_training(os.path.join(model_dir, "training.png"), history=state.history, title=version)


def _publish(store: Warehouse, *, version: str, model_dir: str) -> None:
    """The model folder; its test-split metrics are in it (``metrics.json``), the ``evaluation``
    table is the evaluate stage's."""
    run = store.begin_run()
    store.stage_folder(run, model_dir, f"{MODELS}/{version}")
    store.publish(run, [f"{MODELS}/{version}"])


class TrainStage(Stage):
    """Rebuild stage: trains a model (resuming an interrupted run on the same inputs), or takes
    the one given with ``--model``."""

    name = "train"
    after = ("ingest",)

    def check(self, context: RebuildContext) -> None:
        if context.model:  # a mismatch would otherwise surface only after the whole ingest
            context.model_folder = open_model(context.store, context.model)
            context.model_folder.check_settings(SpectrogramSettings.from_config(context.config), what="the config")
        else:
            check_pretrained_weights(TrainSettings.from_config(context.config))

    def given(self, context: RebuildContext) -> tuple[str, str] | None:
        if not context.model:
            return None
        return context.model_folder.version, f"model {context.model_folder.version}"

    def settings(self, config: dict[str, Any]) -> Any:
        return without(config["train"], ("progress_interval_s", "work_dir"))

    def outputs(self, context: RebuildContext) -> list[str]:
        return [f"{MODELS}/{context.model_folder.version}"]

    def is_up_to_date(self, context: RebuildContext, fingerprint: str) -> bool:
        if not super().is_up_to_date(context, fingerprint):
            return False
        (published,) = context.store.stage_record(self.name)["versions"]
        context.model_folder = _open_published(context.store, published)
        return True

    def passed_on(self, context: RebuildContext, fingerprint: str) -> str:
        return digest(fingerprint, context.model_folder.version)  # a new model means new embeddings

    def run(self, context: RebuildContext, *, fingerprint: str) -> Outcome:
        resume = can_resume(context.store, context.config, fingerprint=fingerprint)
        result = train(context.spark, warehouse=context.warehouse, config=context.config, resume=resume,
                       fingerprint=fingerprint)
        context.model_folder = _open_published(context.store, f"{MODELS}/{result.version}")
        return Outcome(f"model {result.version}" + (" (resumed)" if resume else ""))


def _open_published(store: Warehouse, name: str) -> ModelFolder:
    return read_model_folder(store.local_folder(name, scratch=tempfile.mkdtemp(prefix="deepcrate-")))


STAGE = TrainStage()
