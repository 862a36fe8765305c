"""Transfer from a pretrained network: its features computed once per slice, a small head learnt on them.

With ``train.model=musicnn`` and ``train.fine_tune=head`` (the default) the pretrained
layers stay as they are, so their 200-d features of every train and validation slice
are computed once, and only the head (Dense 128 = the embedding, ELU, dropout, genre
softmax) is trained, on those arrays: an epoch takes well under a second instead of
a pass of the whole network over the slices, so a CPU trains it in minutes. The head's
weights are then put back on the full network, which is what the model folder holds
and what the embed stage runs.

Without usable genres there is nothing to train: the embedding layer becomes the
projection of the pretrained features onto their 128 principal components (over the
train and validation slices), so the catalogue still gets the pretrained embedding.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import keras
import numpy as np

from deepcrate.model import (
    EMBEDDING_LAYER,
    EMBEDDING_SIZE,
    OUTPUT_LAYER,
    build_model,
    embedding_and_genres,
    embedding_model,
    slices_per_call,
    supervised_contrastive_loss,
)
from deepcrate.musicnn import PENULTIMATE_LAYER, load_pretrained
from deepcrate.slice_reader import SliceTable

logger = logging.getLogger(__name__)

HEAD_LAYERS = (EMBEDDING_LAYER, "logits")  # the layers with weights that the head learns


def pretrained_model(*, n_classes: int, image_shape: tuple[int, int], level_range: float, checkpoint: str,
                     seed: int) -> keras.Model:
    """The musicnn classifier with the checkpoint's weights on every pretrained layer."""
    model = build_model(preset="musicnn", n_classes=n_classes, input_shape=image_shape, seed=seed,
                        level_range=level_range)
    load_pretrained(model, checkpoint=checkpoint)
    return model


def slice_features(extractor: keras.Model, table: SliceTable, *, split: str, labels: Sequence[str] | None,
                   batch_size: int, interval_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The pretrained features (n, 200) and the label index (n,) of a split's slices
    (its labelled slices, or every slice when ``labels`` is None)."""
    features, targets, done = [], [], 0
    started = last = time.monotonic()
    batch_size = slices_per_call(extractor, batch_size)
    for batch in table.batches(split=split, labels=labels, batch_size=batch_size):
        features.append(np.asarray(extractor(batch.images, training=False), dtype=np.float32))
        targets.append(batch.labels)
        done += len(batch.images)
        if time.monotonic() - last >= interval_s:
            last = time.monotonic()
            logger.info("pretrained features of the %s split: %d slices (%.0f slices/s)", split, done,
                        done / (last - started))
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int32)
    logger.info("pretrained features of the %s split: %d slices in %.1f s", split, done, time.monotonic() - started)
    return np.concatenate(features), np.concatenate(targets).astype(np.int32)


def fit_head(model: keras.Model, *, table: SliceTable, labels: Sequence[str], objective: str, batch_size: int,
             max_epochs: int, patience: int, learning_rate: float, class_weight: dict[int, float] | None,
             interval_s: float) -> tuple[dict[str, list[float]], int, bool]:
    """Train ``model``'s head on its frozen pretrained features (in place).

    ``objective`` ``classify``: genre cross-entropy; ``supcon``: the cross-entropy plus the
    supervised contrastive loss on the embedding (weight 1 each; class weights apply to
    the cross-entropy only).

    Returns
    -------
    history : dict
        Loss and accuracy per epoch, train and validation.
    best_epoch : int
        The epoch whose weights the head keeps (lowest validation loss).
    stopped_early : bool
    """
    extractor = keras.Model(model.input, model.get_layer(PENULTIMATE_LAYER).output)
    train_x, train_y = slice_features(extractor, table, split="train", labels=labels, batch_size=batch_size,
                                      interval_s=interval_s)
    val_x, val_y = slice_features(extractor, table, split="validation", labels=labels, batch_size=batch_size,
                                  interval_s=interval_s)
    inputs = keras.Input(shape=(train_x.shape[1],), name="pretrained_features")
    embedding, probabilities = embedding_and_genres(inputs, n_classes=len(labels), seed=0)
    started = time.monotonic()
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    if objective == "supcon":
        head = keras.Model(inputs, {OUTPUT_LAYER: probabilities, EMBEDDING_LAYER: embedding}, name="head")
        head.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                     loss={OUTPUT_LAYER: _weighted_crossentropy(class_weight, len(labels)),
                           EMBEDDING_LAYER: supervised_contrastive_loss},
                     metrics={OUTPUT_LAYER: ["accuracy"]})
        fitted = head.fit(train_x, {OUTPUT_LAYER: train_y, EMBEDDING_LAYER: train_y},
                          validation_data=(val_x, {OUTPUT_LAYER: val_y, EMBEDDING_LAYER: val_y}),
                          batch_size=batch_size, epochs=max_epochs, shuffle=True, verbose=0, callbacks=[stop])
    else:
        head = keras.Model(inputs, probabilities, name="head")
        head.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                     loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        fitted = head.fit(train_x, train_y, validation_data=(val_x, val_y), batch_size=batch_size, epochs=max_epochs,
                          class_weight=class_weight, shuffle=True, verbose=0, callbacks=[stop])
    history = {key.replace(f"{OUTPUT_LAYER}_", ""): [float(v) for v in values]
               for key, values in fitted.history.items()}
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    logger.info("head trained on %d slices' pretrained features (%s): %d epochs in %.1f s, best validation loss "
                "%.4f (accuracy %.3f) at epoch %d", len(train_x), objective, len(history["val_loss"]),
                time.monotonic() - started, min(history["val_loss"]), history["val_accuracy"][best_epoch - 1],
                best_epoch)
    for name in HEAD_LAYERS:
        model.get_layer(name).set_weights(head.get_layer(name).get_weights())
    return history, best_epoch, stop.stopped_epoch > 0


def _weighted_crossentropy(class_weight: dict[int, float] | None, n_classes: int):
    """Sparse cross-entropy with per-genre weights (Keras' ``class_weight`` is refused for several outputs)."""
    if not class_weight:
        return "sparse_categorical_crossentropy"
    weights = keras.ops.convert_to_tensor([class_weight[i] for i in range(n_classes)], dtype="float32")

    def loss(y_true, y_pred):
        y_true = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred) * keras.ops.take(weights, y_true)

    return loss


def principal_embedding(model: keras.Model, *, table: SliceTable, batch_size: int, interval_s: float) -> keras.Model:
    """The encoder (slice -> 128-d embedding) whose embedding layer projects the pretrained
    features onto their principal components: no labels needed."""
    extractor = keras.Model(model.input, model.get_layer(PENULTIMATE_LAYER).output)
    parts = [slice_features(extractor, table, split=split, labels=None, batch_size=batch_size,
                            interval_s=interval_s)[0] for split in ("train", "validation")]
    features = np.concatenate([p for p in parts if len(p)]).astype(np.float64)
    mean = features.mean(axis=0)
    _, _, components = np.linalg.svd(features - mean, full_matrices=False)
    basis = np.zeros((features.shape[1], EMBEDDING_SIZE))
    kept = components[:EMBEDDING_SIZE].T  # fewer slices than 128: the remaining columns stay zero
    basis[:, :kept.shape[1]] = kept
    layer = model.get_layer(EMBEDDING_LAYER)
    layer.set_weights([basis.astype(np.float32), (-mean @ basis).astype(np.float32)])
    logger.info("no genres to learn: the embedding is the pretrained features' %d principal components "
                "(%d slices)", kept.shape[1], len(features))
    return embedding_model(model)
