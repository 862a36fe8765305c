"""The train stage: train, evaluate on the test split, publish a model folder to ``WH/models/<version>``.

At the end the best model is evaluated on the test split; its folder (see
:mod:`deepcrate.models.store`) holds the metrics and is published.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras

from deepcrate import __version__
from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.config import Settings, TrainSettings
from deepcrate.errors import TrainingError
from deepcrate.models.feature_head import FeatureHead
from deepcrate.models.feature_reader import FeatureTable
from deepcrate.models.pretrained_runtime import Network
from deepcrate.models.store import MODELS, ModelFolder, open_model, read_model_folder, write_model_folder
from deepcrate.stages.pipeline import Outcome, RebuildContext, Stage, current_record, digest, without
from deepcrate.stages.training.checks import check_pretrained_weights, genres_to_learn, slices_learnt, table_settings
from deepcrate.stages.training.fitting import (
    choose_precision,
    evaluate_head,
    evaluate_model,
    final_model_file,
    fit_genre_head,
    fit_network,
    fit_pretrained_head,
    model_to_train,
)
from deepcrate.stages.training.runs import RunState, can_resume, new_run, unfinished_run, work_folder
from deepcrate.storage.schemas import Table
from deepcrate.storage.table_metadata import IngestMetadata
from deepcrate.storage.warehouse import Warehouse
from deepcrate.storage.writer_lock import holds_writer_lock
from deepcrate.vectors.genre_accuracy import Evaluation

logger = logging.getLogger(__name__)


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
    heads: dict = field(default_factory=dict)  # fine_tune=head: RunState.heads

    def lines(self) -> list[str]:
        stop = f"early stop after {self.epochs} epochs" if self.stopped_early else f"{self.epochs} epochs"
        return [
            f"model {self.version}: {stop}, best {self.kept_by} at epoch {self.best_epoch} "
            f"({self.precision} on {', '.join(self.devices)})",
            *self._head_lines(),
            *(self.evaluation.report_lines() if self.evaluation is not None
              else ["no genre head: the catalogue has no usable genres; songs are embedded, not classified"]),
            f"model folder: {self.model_uri} "
            f"({'metrics.json, confusion.png, ' if self.evaluation is not None else ''}training.png)",
            "next: deepcrate embed, index and evaluate (the evaluation table), or deepcrate rebuild",
        ]

    def _head_lines(self) -> list[str]:
        if len(self.heads.get("trained", [])) < 2:
            return []
        alone = ", ".join(f"{h['validation_precision_at_10']:.3f}" for h in self.heads["trained"])
        kept = "their average" if self.heads["averaged"] else "the untrained start (the average ranked worse)"
        return [f"{len(self.heads['trained'])} heads trained (validation P@10 {alone}); kept {kept}: "
                f"{self.heads['validation_precision_at_10']:.3f}"]


@holds_writer_lock()
def train(
    spark,
    *,
    warehouse: str,
    settings: Settings,
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
    settings : Settings
        The resolved settings; the ``train`` section drives the run.
    resume : bool
        Continue the newest unfinished run in the work folder (with the settings it started with).
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
    store = Warehouse(spark, warehouse)
    work_root = work_folder(store, settings.train)
    run_dir = None
    if resume:
        run_dir, settings = unfinished_run(work_root, given=settings)
    options = settings.train
    check_pretrained_weights(options)  # before a run folder exists
    spectrogram = table_settings(store, SpectrogramSettings.of(settings.spectrogram))
    table = store.arrow.slice_table(image_shape=(spectrogram.n_rows, spectrogram.slice_frames))
    features, features_record = _stored_features(store, options, spectrogram)
    counts = table.genre_counts()
    labels = genres_to_learn(counts, uri=table.uri, objective=options.objective,
                              labels_optional=options.model == "musicnn")
    if run_dir is None:
        run_dir = new_run(work_root, settings, fingerprint=fingerprint)
    version = os.path.basename(run_dir)

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    precision = choose_precision(options.precision, gpus)
    devices = [g.name for g in gpus] or ["CPU"]
    state = RunState.load(run_dir)
    keras.utils.set_random_seed(options.seed + state.epochs_done)
    previous_policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        strategy = tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
        if not state.finished:
            logger.info("training %s (%s model, %s, %d train / %d validation slices, %d genres) on %s",
                        version, options.model, precision,
                        slices_learnt(counts, "train", labels=labels, settings=options),
                        slices_learnt(counts, "validation", labels=labels, settings=options),
                        len(labels), ", ".join(devices))
            if options.on_frozen_features:
                fit_pretrained_head(run_dir, features=features, labels=labels, counts=counts, settings=options,
                                    state=state, spectrogram=spectrogram, image_shape=table.image_shape)
            else:
                with strategy.scope():  # a contrastive encoder drops the head: any width builds it
                    model = model_to_train(run_dir, state, options, n_classes=max(len(labels), 2),
                                            input_shape=table.image_shape, spectrogram=spectrogram)
                fit_network(model, table=table, labels=labels, counts=counts, settings=options, state=state,
                     run_dir=run_dir, callbacks=callbacks)
        final = final_model_file(options, labels)
        if final == "classifier.keras" and not os.path.exists(os.path.join(run_dir, final)):
            with strategy.scope():
                fit_genre_head(run_dir, table=table, labels=labels, counts=counts, settings=options)
        evaluation = head = None
        if labels or features is not None:
            best = keras.models.load_model(os.path.join(run_dir, final), compile=False)
            head = FeatureHead.from_model(best) if features is not None else None  # embed applies it alone
        if labels:
            evaluation = (evaluate_head(head, features=features, labels=labels, version=version)
                          if features is not None else
                          evaluate_model(best, table=table, labels=labels, version=version,
                                         batch_size=options.batch_size))
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)

    model_dir = os.path.join(run_dir, "model")
    _write_model_folder(model_dir, run_dir=run_dir, labels=labels, spectrogram=spectrogram, settings=options,
                        state=state, evaluation=evaluation, precision=precision, devices=devices,
                        slices_meta=store.metadata(Table.SLICES), table_uri=table.uri, counts=counts,
                        features=features_record, head=head)
    _publish(store, version=version, model_dir=model_dir)
    shutil.rmtree(run_dir)
    if not os.listdir(work_root):
        os.rmdir(work_root)
    return TrainResult(version=version, model_uri=store.folder_uri(f"{MODELS}/{version}"), evaluation=evaluation,
                       epochs=state.epochs_done, best_epoch=state.best_epoch, stopped_early=state.stopped_early,
                       precision=precision, devices=devices,
                       kept_by=("validation P@10" if options.on_frozen_features and labels else "validation loss"),
                       heads=state.heads)


def _write_model_folder(model_dir: str, *, run_dir: str, labels, spectrogram: SpectrogramSettings,
                        settings: TrainSettings, state: RunState, evaluation: Evaluation | None, precision: str,
                        devices: list[str], slices_meta: IngestMetadata, table_uri: str, counts,
                        features: dict[str, Any] | None, head: FeatureHead | None) -> None:
    from deepcrate.models.plots import plot_confusion, plot_training

    version = os.path.basename(run_dir)
    train = {
        "version": version,
        "deepcrate_version": __version__,
        "settings": settings.__dict__,
        "precision": precision,
        "devices": devices,
        "epochs": state.epochs_done,
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss,
        "stopped_early": state.stopped_early,
        "heads": state.heads,
        "slices_table": table_uri,
        "audio": slices_meta.audio,
        "split": slices_meta.split,
        "slices": {split: slices_learnt(counts, split, labels=labels, settings=settings)
                   for split in ("train", "validation", "test")},
        "fingerprint": state.fingerprint,
        "features": features,
    }
    write_model_folder(model_dir, model_file=os.path.join(run_dir, final_model_file(settings, labels)),
                       labels=list(labels), spectrogram=spectrogram, history=state.history, train=train,
                       metrics=evaluation.metrics() if evaluation is not None else None, head=head)
    if evaluation is not None:
        plot_confusion(os.path.join(model_dir, "confusion.png"), matrix=evaluation.confusion, labels=labels,
                       title=f"{version}: test songs (song accuracy "
                             f"{100 * (evaluation.metrics()['song_accuracy'] or 0):.1f}%)")
    plot_training(os.path.join(model_dir, "training.png"), history=state.history, title=version)


def _stored_features(store: Warehouse, settings: TrainSettings, spectrogram: SpectrogramSettings
                     ) -> tuple[FeatureTable | None, dict[str, Any] | None]:
    """The ``pretrained_features`` table a head learns from, with what the model folder records of it
    (None, None: this model learns from the slices).

    Raises
    ------
    TrainingError
        No such table, or one of other networks than ``train.pretrained`` on these slices.
    """
    if not settings.on_frozen_features:
        return None, None
    if not store.exists(Table.PRETRAINED_FEATURES):
        raise TrainingError(f"warehouse {store.root}: no pretrained_features table (train.model=musicnn learns "
                            "its head on them): run deepcrate features first, or rebuild")
    metadata = store.metadata(Table.PRETRAINED_FEATURES)
    wanted = Network.on_slices(settings.pretrained, spectrogram).identity()
    if metadata.network != wanted:
        raise TrainingError(f"warehouse {store.root}: pretrained_features holds features of {metadata.network}, "
                            f"not of {wanted} (train.pretrained={settings.pretrained} on these slices): "
                            "run deepcrate features again, or rebuild")
    tables = store.arrow
    table = FeatureTable(tables.dataset(Table.PRETRAINED_FEATURES), tables.dataset(Table.SONGS),
                         width=metadata.width, uri=f"table pretrained_features in {store.root}",
                         max_slices=settings.head_max_slices)
    record = {"network": metadata.network, "checkpoints": metadata.checkpoints, "width": metadata.width,
              "table_version": store.version(Table.PRETRAINED_FEATURES)}
    return table, record


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
    after = ("ingest", "features")

    def check(self, context: RebuildContext) -> None:
        if context.model:  # a mismatch would otherwise surface only after the whole ingest
            context.model_folder = open_model(context.store, context.model)
            context.model_folder.check_settings(SpectrogramSettings.of(context.settings.spectrogram),
                                                what="the settings")
        else:
            check_pretrained_weights(context.settings.train)

    def given(self, context: RebuildContext) -> tuple[str, str] | None:
        if not context.model:
            return None
        return context.model_folder.version, f"model {context.model_folder.version}"

    def settings(self, settings: Settings) -> Any:
        return without(settings.train, ("progress_interval_s", "work_dir"))

    def outputs(self, context: RebuildContext) -> list[str]:
        return [f"{MODELS}/{context.model_folder.version}"]

    def is_up_to_date(self, context: RebuildContext, fingerprint: str) -> bool:
        record = current_record(context.store, self.name, fingerprint=fingerprint)
        if record is None:
            return False
        (published,) = record["versions"]
        context.model_folder = _open_published(context.store, published)
        return True

    def passed_on(self, context: RebuildContext, fingerprint: str) -> str:
        return digest(fingerprint, context.model_folder.version)  # a new model means new embeddings

    def run(self, context: RebuildContext, *, fingerprint: str) -> Outcome:
        resume = can_resume(context.store, context.settings, fingerprint=fingerprint)
        result = train(context.spark, warehouse=context.warehouse, settings=context.settings, resume=resume,
                       fingerprint=fingerprint)
        context.model_folder = _open_published(context.store, f"{MODELS}/{result.version}")
        return Outcome(f"model {result.version}" + (" (resumed)" if resume else ""))


def _open_published(store: Warehouse, name: str) -> ModelFolder:
    return read_model_folder(store.local_folder(name, scratch=tempfile.mkdtemp(prefix="deepcrate-")))


STAGE = TrainStage()
