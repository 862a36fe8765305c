"""Fitting the network: precision, the model to train (new or resumed), the fit, the genre head, evaluation."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.config import TrainSettings
from deepcrate.errors import TrainingError
from deepcrate.models.architectures import build_model, embedding_model, pair_contrastive_loss, slices_per_call
from deepcrate.models.feature_head import FeatureHead
from deepcrate.models.feature_reader import FeatureTable
from deepcrate.models.slice_reader import SliceTable
from deepcrate.stages.training.checks import slice_total, slices_learnt
from deepcrate.stages.training.inputs import genre_weights, pair_dataset, training_dataset, validation_dataset
from deepcrate.stages.training.runs import Checkpoint, RunState
from deepcrate.vectors.genre_accuracy import Evaluation

logger = logging.getLogger(__name__)
HEAD_EPOCHS = 10  # the genre head on a contrastive embedding: a linear layer, quick to fit


def choose_precision(requested: str, gpus: list) -> str:
    if requested != "auto":
        return requested
    if not gpus:
        return "float32"
    import tensorflow as tf

    capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0)) for g in gpus]
    return "mixed_bfloat16" if min(capabilities) >= (8, 0) else "mixed_float16"


def fit_pretrained_head(run_dir: str, *, features: FeatureTable, labels: list[str], counts, settings: TrainSettings,
                         state: RunState, spectrogram: SpectrogramSettings, image_shape: tuple[int, int]) -> None:
    """The head on the stored musicnn features (or, without genres, the principal-component
    embedding), saved as best.keras: seconds on a CPU, so a resumed run starts it again."""
    from deepcrate.models.transfer import fit_head, pretrained_model, principal_embedding

    model = pretrained_model(n_classes=max(len(labels), 2), image_shape=image_shape,
                             level_range=spectrogram.db_range, checkpoint=settings.pretrained, seed=settings.seed)
    if labels:
        head = fit_head(
            model, train=features.split("train", labels=labels), val=features.split("validation", labels=labels),
            n_classes=len(labels), objective=settings.objective, batch_size=settings.batch_size,
            max_epochs=settings.head_max_epochs, patience=settings.head_patience, heads=settings.heads_averaged,
            seed=settings.seed, learning_rate=settings.learning_rate or 0.001,
            class_weight=genre_weights(counts, labels=labels, settings=settings),
            overwrite_features=True)  # the splits are read for this call alone: held once, not twice
        state.history, state.best_epoch, state.stopped_early = head.history, head.best_epoch, head.stopped_early
        state.heads = head.summary()
        state.epochs_done = len(head.history["loss"])
        state.best_val_loss = min(head.history["val_loss"])
    else:
        parts = [features.split(split, labels=None).features for split in ("train", "validation")]
        model = principal_embedding(model, parts=parts)
    tmp = os.path.join(run_dir, "tmp-best.keras")
    model.save(tmp)
    os.replace(tmp, os.path.join(run_dir, "best.keras"))
    state.finished = True
    state.save(run_dir)


def model_to_train(run_dir: str, state: RunState, settings: TrainSettings, *, n_classes: int,
                    input_shape: tuple[int, int], spectrogram: SpectrogramSettings):
    if state.epochs_done:
        try:  # the optimizer state comes back with the weights
            return keras.models.load_model(os.path.join(run_dir, "last.keras"))
        except Exception as exc:
            raise TrainingError(f"cannot resume {run_dir}: last.keras is unreadable: {exc}") from None
    if settings.model == "musicnn":  # train.fine_tune=all: every layer learns, from the pretrained weights
        from deepcrate.models.transfer import pretrained_model

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


def fit_network(model, *, table: SliceTable, labels: list[str], counts, settings: TrainSettings, state: RunState,
         run_dir: str, callbacks: Sequence[Any]) -> None:
    train_slices = slices_learnt(counts, "train", labels=labels, settings=settings)
    weights = None
    if settings.objective == "contrastive":  # every slice, labelled or not
        data = pair_dataset(table, split="train", settings=settings, first_epoch=state.epochs_done)
        validation = pair_dataset(table, split="validation", settings=settings, fixed_seed=True)
    else:
        weights = genre_weights(counts, labels=labels, settings=settings)
        data = training_dataset(table, labels=labels, settings=settings, n_slices=train_slices,
                                first_epoch=state.epochs_done)
        validation = validation_dataset(table, labels=labels, batch_size=settings.batch_size,
                                        n_slices=slice_total(counts, "validation", labels))
    model.fit(
        data,
        validation_data=validation,
        epochs=settings.max_epochs,
        initial_epoch=state.epochs_done,
        class_weight=weights,
        shuffle=False,  # the dataset shuffles itself
        verbose=0,
        callbacks=[
            Checkpoint(run_dir, state, patience=settings.patience),
            _ProgressLog(max_epochs=settings.max_epochs, train_slices=train_slices,
                         batch_size=settings.batch_size, interval_s=settings.progress_interval_s),
            *callbacks,
        ],
    )
    state.finished = True
    state.save(run_dir)


def fit_genre_head(run_dir: str, *, table: SliceTable, labels: list[str], counts, settings: TrainSettings) -> None:
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
        training_dataset(table, labels=labels, settings=settings, n_slices=slice_total(counts, "train", labels)),
        validation_data=validation_dataset(table, labels=labels, batch_size=settings.batch_size,
                                           n_slices=slice_total(counts, "validation", labels)),
        epochs=HEAD_EPOCHS, class_weight=genre_weights(counts, labels=labels, settings=settings),
        shuffle=False, verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)],
    )
    for layer in model.layers:
        layer.trainable = True
    tmp = os.path.join(run_dir, "tmp-classifier.keras")
    model.save(tmp)
    os.replace(tmp, os.path.join(run_dir, "classifier.keras"))


def final_model_file(settings: TrainSettings, labels: Sequence[str]) -> str:
    """The run's file that becomes model.keras: the best classifier, the contrastive encoder
    with its genre head, or the encoder alone when there are no genres to predict."""
    return "classifier.keras" if settings.objective == "contrastive" and labels else "best.keras"


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


def evaluate_model(model, *, table: SliceTable, labels: Sequence[str], version: str, batch_size: int) -> Evaluation:
    """Predict every labelled test slice and score slices and songs."""
    song_ids, true_labels, probabilities = [], [], []
    batch_size = slices_per_call(model, batch_size)
    for batch in table.batches(split="test", labels=labels, batch_size=batch_size):
        probabilities.append(np.asarray(model.predict_on_batch(batch.images), dtype=np.float32))
        song_ids.append(batch.song_ids)
        true_labels.append(batch.labels)
    return _evaluation(version, labels, song_ids, true_labels, probabilities)


def evaluate_head(head: FeatureHead, *, features: FeatureTable, labels: Sequence[str], version: str) -> Evaluation:
    """:func:`evaluate_model` for a head on stored features: the test slices' features, not their images."""
    test = features.split("test", labels=labels)
    if not len(test.labels):
        return _evaluation(version, labels, [], [], [])
    probabilities = head(test.features)[1]
    return _evaluation(version, labels, [test.song_ids], [test.labels], [probabilities])


def _evaluation(version: str, labels: Sequence[str], song_ids: list, true_labels: list,
                probabilities: list) -> Evaluation:
    if not song_ids:
        logger.warning("the test split has no labelled slices: the evaluation is empty")
    return Evaluation.from_predictions(
        model_version=version,
        labels=labels,
        song_ids=np.concatenate(song_ids) if song_ids else np.zeros(0, dtype=object),
        true_labels=np.concatenate(true_labels) if true_labels else np.zeros(0, dtype=np.int32),
        probabilities=np.concatenate(probabilities) if probabilities else np.zeros((0, len(labels)), np.float32),
    )
