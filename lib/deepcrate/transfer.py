"""Transfer from a pretrained network: its features computed once per slice, a small head learnt on them.

With ``train.model=musicnn`` and ``train.fine_tune=head`` (the default) the pretrained
layers stay as they are, so their 200-d features of every train and validation slice
are computed once, and only the head (Dense 128 = the embedding, ELU, dropout, genre
softmax) is trained, on those arrays: an epoch takes well under a second instead of
a pass of the whole network over the slices, so a CPU trains it in minutes. The head's
weights are then put back on the full network, which is what the model folder holds
and what the embed stage runs.

The head is trained for what the product ranks by, and is kept only where it ranks the
validation songs better than the network as it comes: the embedding layer starts as
the projection of the pretrained features onto their principal components (cosine
neighbours then are nearly those of the untuned features), and after every epoch the
validation songs are ranked against the train and validation songs exactly as
``deepcrate evaluate`` ranks test songs (mean of the slice embeddings, cosine, P@10 by
genre). The head of the best epoch is
kept, the start (epoch 0) included (its genre layer is then fitted on it). A head
that only learns its training songs by heart (their genre clusters tight, new songs
thrown into the wrong one) ranks the validation songs worse than the start and is
not kept. The lowest validation loss, the rule before, stopped after 2-5 epochs while
the ranking kept improving for 30-90 (docs/quality.md).

Without usable genres there is nothing to train: the embedding layer becomes the
projection of the pretrained features onto their 128 principal components (over the
train and validation slices), so the catalogue still gets the pretrained embedding.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

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
from deepcrate.musicnn import load_pretrained, parse_checkpoints, pretrained_layer
from deepcrate.retrieval import nearest_songs, retrieval_scores
from deepcrate.slice_reader import SliceTable

logger = logging.getLogger(__name__)

HEAD_LAYERS = (EMBEDDING_LAYER, "logits")  # the layers with weights that the head learns
SELECTION_K = 10  # the head is kept by the validation songs' precision at this many neighbours


@dataclass
class SliceFeatures:
    """A split's pretrained features (n, d), label indices (n,) and song ids (n,)."""

    features: np.ndarray
    labels: np.ndarray
    song_ids: np.ndarray


def pretrained_model(*, n_classes: int, image_shape: tuple[int, int], level_range: float, checkpoint: str,
                     seed: int) -> keras.Model:
    """The musicnn classifier with the checkpoints' weights on every pretrained layer
    (``checkpoint``: one name, or several joined by ``+``: one tower each)."""
    model = build_model(preset="musicnn", n_classes=n_classes, input_shape=image_shape, seed=seed,
                        level_range=level_range, towers=len(parse_checkpoints(checkpoint)))
    load_pretrained(model, checkpoint=checkpoint)
    return model


def slice_features(extractor: keras.Model, table: SliceTable, *, split: str, labels: Sequence[str] | None,
                   batch_size: int, interval_s: float) -> SliceFeatures:
    """The pretrained features of a split's slices (its labelled slices, or every slice when
    ``labels`` is None)."""
    features, targets, songs, done = [], [], [], 0
    started = last = time.monotonic()
    batch_size = slices_per_call(extractor, batch_size)
    for batch in table.batches(split=split, labels=labels, batch_size=batch_size):
        features.append(np.asarray(extractor.predict_on_batch(batch.images), dtype=np.float32))  # compiled: 1.8x eager
        targets.append(batch.labels)
        songs.append(batch.song_ids)
        done += len(batch.images)
        if time.monotonic() - last >= interval_s:
            last = time.monotonic()
            logger.info("pretrained features of the %s split: %d slices (%.0f slices/s)", split, done,
                        done / (last - started))
    if not features:
        return SliceFeatures(np.zeros((0, 0), np.float32), np.zeros(0, np.int32), np.zeros(0, object))
    logger.info("pretrained features of the %s split: %d slices in %.1f s", split, done, time.monotonic() - started)
    return SliceFeatures(np.concatenate(features), np.concatenate(targets).astype(np.int32),
                         np.concatenate(songs))


def feature_extractor(model: keras.Model) -> keras.Model:
    """``model`` cut at its pretrained features (the input of the embedding layer)."""
    return keras.Model(model.input, model.get_layer(pretrained_layer(model)).output)


def fit_head(model: keras.Model, *, table: SliceTable, labels: Sequence[str], objective: str, batch_size: int,
             max_epochs: int, patience: int, learning_rate: float, class_weight: dict[int, float] | None,
             interval_s: float) -> tuple[dict[str, list[float]], int, bool]:
    """Train ``model``'s head on its frozen pretrained features (in place), for retrieval:
    the train and validation slices' features computed once, then :func:`train_head`.

    Returns
    -------
    history : dict
        Loss and accuracy per epoch, train and validation, and ``val_precision_at_10``
        (its first value: epoch 0, before any training).
    best_epoch : int
        The epoch whose weights the head keeps (0: the principal-component start).
    stopped_early : bool
    """
    extractor = feature_extractor(model)
    train, val = (slice_features(extractor, table, split=split, labels=labels, batch_size=batch_size,
                                 interval_s=interval_s) for split in ("train", "validation"))
    head = train_head(train, val, n_classes=len(labels), objective=objective, batch_size=batch_size,
                      max_epochs=max_epochs, patience=patience, learning_rate=learning_rate,
                      class_weight=class_weight)
    model.get_layer(EMBEDDING_LAYER).set_weights(head.embedding)
    model.get_layer("logits").set_weights(head.logits)
    return head.history, head.best_epoch, head.stopped_early


@dataclass
class TrainedHead:
    """The embedding layer's weights (on the raw features) and the genre layer's, with how they were found."""

    embedding: list[np.ndarray]
    logits: list[np.ndarray]
    history: dict[str, list[float]]
    best_epoch: int
    stopped_early: bool


def train_head(train: SliceFeatures, val: SliceFeatures, *, n_classes: int, objective: str, batch_size: int,
               max_epochs: int, patience: int, learning_rate: float,
               class_weight: dict[int, float] | None = None) -> TrainedHead:
    """The head (Dense 128 embedding -> ELU -> dropout -> genre softmax) on pretrained features.

    ``objective`` ``classify``: genre cross-entropy; ``supcon``: the cross-entropy plus the
    supervised contrastive loss on the embedding (weight 1 each; class weights apply to
    the cross-entropy only). The features are standardised (mean and deviation of the
    train and validation slices) and the embedding starts as their projection onto
    their 128 principal components. Before training and after every epoch the
    validation songs are ranked against the train and validation songs
    (:class:`RetrievalSelection`); the head of the best epoch is kept (epoch 0: the
    start, whose genre layer is then fitted on it), and training stops ``patience``
    epochs after the best. The standardisation is folded into the returned embedding
    weights, so they apply to the raw features.
    """
    both = np.concatenate([train.features, val.features]).astype(np.float64)
    mean, scale = both.mean(axis=0), both.std(axis=0) + 1e-6
    train_x, val_x = ((part.features - mean) / scale for part in (train, val))
    inputs = keras.Input(shape=(train_x.shape[1],), name="pretrained_features")
    embedding, probabilities = embedding_and_genres(inputs, n_classes=n_classes, seed=0)
    outputs = {OUTPUT_LAYER: probabilities}
    losses = {OUTPUT_LAYER: _weighted_crossentropy(class_weight, n_classes)}
    if objective == "supcon":
        outputs[EMBEDDING_LAYER], losses[EMBEDDING_LAYER] = embedding, supervised_contrastive_loss
    head = keras.Model(inputs, outputs, name="head")
    head.get_layer(EMBEDDING_LAYER).set_weights(principal_projection((both - mean) / scale))
    head.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss=losses,
                 metrics={OUTPUT_LAYER: ["accuracy"]})
    selection = RetrievalSelection(train_x, train, val_x, val, patience=patience)
    started = time.monotonic()
    fitted = head.fit(train_x, {name: train.labels for name in outputs},
                      validation_data=(val_x, {name: val.labels for name in outputs}),
                      batch_size=batch_size, epochs=max_epochs, shuffle=True, verbose=0, callbacks=[selection])
    history = {key.replace(f"{OUTPUT_LAYER}_", ""): [float(v) for v in values]
               for key, values in fitted.history.items()}
    history["val_precision_at_10"] = selection.scores
    best = selection.best_epoch
    head.get_layer(EMBEDDING_LAYER).set_weights(selection.best_weights[EMBEDDING_LAYER])
    if best == 0:  # the start kept: its genre layer has not learnt from this embedding
        _fit_genre_layer(head, train_x, train.labels, val_x, val.labels, batch_size=batch_size,
                         learning_rate=learning_rate, class_weight=class_weight, patience=patience)
    else:
        head.get_layer("logits").set_weights(selection.best_weights["logits"])
    logger.info("head trained on %d slices' pretrained features (%s): %d epochs in %.1f s; validation P@%d "
                "%.3f at the start, %.3f at epoch %d (kept)", len(train_x), objective, len(history["loss"]),
                time.monotonic() - started, SELECTION_K, selection.scores[0], selection.scores[best], best)
    weights, bias = head.get_layer(EMBEDDING_LAYER).get_weights()
    folded = [(weights / scale[:, None]).astype(np.float32),  # standardise(x) @ W + b == x @ W' + b'
              (bias - (mean / scale) @ weights).astype(np.float32)]
    return TrainedHead(folded, head.get_layer("logits").get_weights(), history, best, selection.stopped_early)


class RetrievalSelection(keras.callbacks.Callback):
    """Keeps the head whose embedding ranks the validation songs best, as the evaluation ranks.

    Song vectors are the mean of their slices' embeddings; the embedding layer is linear,
    so that is the songs' mean features through it. Each validation song is a query
    against every train and validation song (itself left out); the score is P@k by
    genre, ties broken by MAP@k, then by the earlier epoch. Scored before training
    (epoch 0) and after every epoch; stops ``patience`` epochs after the best.
    """

    def __init__(self, train_x: np.ndarray, train: SliceFeatures, val_x: np.ndarray, val: SliceFeatures, *,
                 patience: int) -> None:
        super().__init__()
        features = np.concatenate([train_x, val_x])
        song_ids = np.concatenate([train.song_ids, val.song_ids])
        labels = np.concatenate([train.labels, val.labels])
        songs, position = np.unique(song_ids, return_inverse=True)
        counts = np.bincount(position, minlength=len(songs))
        self.song_means = np.zeros((len(songs), features.shape[1]))
        np.add.at(self.song_means, position, features)
        self.song_means /= counts[:, None]
        self.genres = np.zeros(len(songs), np.int64)
        self.genres[position] = labels
        self.queries = np.unique(position[len(train_x):])
        self.k = min(SELECTION_K, len(songs) - 1)
        self.patience = patience
        self.scores: list[float] = []
        self.best_epoch, self.best_key, self.best_weights = 0, None, {}
        self.stopped_early = False

    def score(self) -> tuple[float, float]:
        weights, bias = self.model.get_layer(EMBEDDING_LAYER).get_weights()
        vectors = self.song_means @ weights + bias
        found = nearest_songs(vectors, self.queries, k=self.k)
        scores = retrieval_scores(self.genres, self.queries, found, ks=(self.k,))
        return float(scores[f"precision_at_{self.k}"].mean()), float(scores[f"map_at_{self.k}"].mean())

    def on_train_begin(self, logs=None) -> None:
        self._record(0)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._record(epoch + 1)
        if epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = self.stopped_early = True

    def _record(self, epoch: int) -> None:
        key = self.score()
        self.scores.append(key[0])
        if self.best_key is None or key > self.best_key:
            self.best_epoch, self.best_key = epoch, key
            self.best_weights = {name: self.model.get_layer(name).get_weights() for name in HEAD_LAYERS}


def principal_projection(features: np.ndarray) -> list[np.ndarray]:
    """Dense weights (d, 128) and bias (128,) projecting ``features`` onto their principal
    components (fewer rows or dimensions than 128: the remaining columns stay zero)."""
    mean = features.mean(axis=0)
    _, _, components = np.linalg.svd(features - mean, full_matrices=False)
    basis = np.zeros((features.shape[1], EMBEDDING_SIZE))
    kept = components[:EMBEDDING_SIZE].T
    basis[:, :kept.shape[1]] = kept
    return [basis.astype(np.float32), (-mean @ basis).astype(np.float32)]


def _fit_genre_layer(head: keras.Model, train_x, train_y, val_x, val_y, *, batch_size: int, learning_rate: float,
                     class_weight: dict[int, float] | None, patience: int) -> None:
    """The genre layer alone, on the frozen embedding (lowest validation loss kept)."""
    classifier = keras.Model(head.input, head.output[OUTPUT_LAYER] if isinstance(head.output, dict)
                             else head.output)
    head.get_layer(EMBEDDING_LAYER).trainable = False
    classifier.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                       loss=_weighted_crossentropy(class_weight, int(head.get_layer("logits").units)))
    classifier.fit(train_x, train_y, validation_data=(val_x, val_y), batch_size=batch_size, epochs=200, verbose=0,
                   callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                            restore_best_weights=True)])
    head.get_layer(EMBEDDING_LAYER).trainable = True


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
    extractor = feature_extractor(model)
    parts = [slice_features(extractor, table, split=split, labels=None, batch_size=batch_size,
                            interval_s=interval_s).features for split in ("train", "validation")]
    features = np.concatenate([p for p in parts if len(p)]).astype(np.float64)
    model.get_layer(EMBEDDING_LAYER).set_weights(principal_projection(features))
    logger.info("no genres to learn: the embedding is the pretrained features' %d principal components "
                "(%d slices)", min(EMBEDDING_SIZE, *features.shape), len(features))
    return embedding_model(model)
