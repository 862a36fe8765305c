"""Transfer from a pretrained network: its features computed once per slice, a small head learnt on them.

With ``train.model=musicnn`` and ``train.fine_tune=head`` (the default) the pretrained
layers stay as they are, so their features of every slice are computed once (the
features stage, :mod:`deepcrate.features`), and only the head (Dense 128 = the
embedding, ELU, dropout, genre softmax) is trained, on those arrays: an epoch takes well under a second instead of
a pass of the whole network over the slices, so a CPU trains it in minutes. The head's
weights are then put back on the full network, which is what the model folder holds
(``recommend --file`` runs it on a new file); the embed stage applies the head alone to
the stored features (:mod:`deepcrate.feature_head`).

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

Three such heads (``train.heads_averaged``), trained from the same start with different
seeds, are averaged into one (a model soup): near their common start the average of
their weights is a head too, and it ranks better than one head on average.

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

from deepcrate.feature_reader import SliceFeatures
from deepcrate.model import (
    EMBEDDING_LAYER,
    EMBEDDING_SIZE,
    OUTPUT_LAYER,
    build_model,
    embedding_and_genres,
    embedding_model,
    supervised_contrastive_loss,
)
from deepcrate.musicnn import load_pretrained, parse_checkpoints, pretrained_layer
from deepcrate.retrieval import nearest_songs, retrieval_scores

logger = logging.getLogger(__name__)

HEAD_LAYERS = (EMBEDDING_LAYER, "logits")  # the layers with weights that the head learns
SELECTION_K = 10  # the head is kept by the validation songs' precision at this many neighbours
MIN_FEATURE_SCALE = 1e-3  # the smallest spread a feature is standardised by (the features are ~unit scale)


def pretrained_model(*, n_classes: int, image_shape: tuple[int, int], level_range: float, checkpoint: str,
                     seed: int) -> keras.Model:
    """The musicnn classifier with the checkpoints' weights on every pretrained layer
    (``checkpoint``: one name, or several joined by ``+``: one tower each)."""
    model = build_model(preset="musicnn", n_classes=n_classes, input_shape=image_shape, seed=seed,
                        level_range=level_range, towers=len(parse_checkpoints(checkpoint)))
    load_pretrained(model, checkpoint=checkpoint)
    return model


def feature_extractor(model: keras.Model) -> keras.Model:
    """``model`` cut at its pretrained features (the input of the embedding layer)."""
    return keras.Model(model.input, model.get_layer(pretrained_layer(model)).output)


def fit_head(model: keras.Model, *, train: SliceFeatures, val: SliceFeatures, n_classes: int, objective: str,
             batch_size: int, max_epochs: int, patience: int, learning_rate: float,
             class_weight: dict[int, float] | None, heads: int = 1, seed: int = 0) -> TrainedHead:
    """Train ``model``'s head on the frozen pretrained features of the train and validation
    slices (:func:`train_head`) and set it on ``model`` (in place), for retrieval.

    Returns
    -------
    TrainedHead
        Its ``history``: loss and accuracy per epoch, train and validation, and
        ``val_precision_at_10`` (its first value: epoch 0, before any training), of the
        head that ranked the validation songs best.
    """
    head = train_head(train, val, n_classes=n_classes, objective=objective, batch_size=batch_size,
                      max_epochs=max_epochs, patience=patience, learning_rate=learning_rate,
                      class_weight=class_weight, heads=heads, seed=seed)
    model.get_layer(EMBEDDING_LAYER).set_weights(head.embedding)
    model.get_layer("logits").set_weights(head.logits)
    return head


@dataclass
class TrainedHead:
    """The embedding layer's weights (on the raw features) and the genre layer's, with how they were found.

    ``history``, ``best_epoch`` and ``stopped_early`` are those of the head that ranked the
    validation songs best; ``averaged`` lists the seeds of the heads whose embedding weights
    were averaged (empty: the principal-component start was kept), ``validation_precision``
    is what the kept embedding scores on the validation songs, ``trained`` each head's seed,
    kept epoch and validation P@10.
    """

    embedding: list[np.ndarray]
    logits: list[np.ndarray]
    history: dict[str, list[float]]
    best_epoch: int
    stopped_early: bool
    averaged: list[int]
    validation_precision: float
    trained: list[dict]

    def summary(self) -> dict:
        """What train.json records: each head's seed, kept epoch and validation P@10, the
        seeds averaged, and the kept embedding's validation P@10."""
        return {"trained": self.trained, "averaged": self.averaged,
                "validation_precision_at_10": self.validation_precision}


@dataclass
class HeadRun:
    """One trained head, in the standardised feature space."""

    seed: int
    weights: dict[str, list[np.ndarray]]
    history: dict[str, list[float]]
    best_epoch: int
    stopped_early: bool
    score: tuple[float, float]


def train_head(train: SliceFeatures, val: SliceFeatures, *, n_classes: int, objective: str, batch_size: int,
               max_epochs: int, patience: int, learning_rate: float,
               class_weight: dict[int, float] | None = None, heads: int = 1, seed: int = 0) -> TrainedHead:
    """The head (Dense 128 embedding -> ELU -> dropout -> genre softmax) on pretrained features.

    ``objective`` ``classify``: genre cross-entropy; ``supcon``: the cross-entropy plus the
    supervised contrastive loss on the embedding (weight 1 each; class weights apply to
    the cross-entropy only). The features are standardised (mean and deviation of the
    train and validation slices) and the embedding starts as their projection onto
    their 128 principal components. Before training and after every epoch the
    validation songs are ranked against the train and validation songs
    (:class:`ValidationRanking`); the head of the best epoch is kept (epoch 0: the
    start), and training stops ``patience`` epochs after the best.

    ``heads`` heads are trained so, from the same start with seeds ``seed``, ``seed + 1``,
    ... (shuffle order, dropout, genre layer), and their embedding weights are averaged
    (a uniform model soup): they stay near their common start, so the average is a head
    too, and on the development corpus it ranked the test songs better than one head on
    average (docs/quality.md). All of them, not those that score best on
    the validation songs: between heads of one start those scores differ by noise (the
    head that ranked the validation songs best ranked the test songs worst in one seed).
    Should the average rank the validation songs worse than the start, the start is
    kept. The genre layer is then fitted on the kept embedding, unless one head, kept
    with the genre layer it learnt, is the result. The standardisation is folded into the
    returned embedding weights, so they apply to the raw features.
    """
    both = np.concatenate([train.features, val.features]).astype(np.float64)
    # A feature (nearly) constant over these slices (a unit that never fires) is not blown up: divided by
    # its spread alone, the last digits of its value (another runtime's rounding) would move every embedding.
    mean, scale = both.mean(axis=0), np.maximum(both.std(axis=0), MIN_FEATURE_SCALE)
    train_x, val_x = ((part.features - mean) / scale for part in (train, val))
    start = principal_projection((both - mean) / scale)
    ranking = ValidationRanking(train_x, train, val_x, val)
    started = time.monotonic()
    trained, model = [], None
    for head_seed in range(seed, seed + heads):
        keras.utils.set_random_seed(head_seed)
        model = _head_model(train_x.shape[1], n_classes=n_classes, objective=objective, class_weight=class_weight,
                            learning_rate=learning_rate, seed=head_seed)
        model.get_layer(EMBEDDING_LAYER).set_weights(start)
        trained.append(_fit_one(model, train_x, train, val_x, val, ranking, seed=head_seed, batch_size=batch_size,
                                max_epochs=max_epochs, patience=patience))
    best = max(trained, key=lambda head: (head.score, -head.seed))
    averaged = _mean_weights([head.weights[EMBEDDING_LAYER] for head in trained])
    if ranking.score(*averaged) < ranking.score(*start):
        kept, averaged = [], start
    else:
        kept = trained
    model.get_layer(EMBEDDING_LAYER).set_weights(averaged)
    if len(kept) == 1 and kept[0].best_epoch > 0:  # one head, kept with the genre layer it learnt
        model.get_layer("logits").set_weights(kept[0].weights["logits"])
    else:  # the start, or an average: its genre layer has not learnt from this embedding
        if kept:
            model.get_layer("logits").set_weights(_mean_weights([head.weights["logits"] for head in kept]))
        _fit_genre_layer(model, train_x, train.labels, val_x, val.labels, batch_size=batch_size,
                         learning_rate=learning_rate, class_weight=class_weight, patience=patience)
    score = ranking.score(*model.get_layer(EMBEDDING_LAYER).get_weights())
    logger.info("%d head(s) trained on %d slices' pretrained features (%s) in %.1f s; validation P@%d %.3f at the "
                "start, %s; kept: %s, %.3f", heads, len(train_x), objective, time.monotonic() - started,
                SELECTION_K, best.history["val_precision_at_10"][0],
                ", ".join(f"seed {h.seed} {h.score[0]:.3f} at epoch {h.best_epoch}" for h in trained),
                "their average" if len(kept) > 1 else f"seed {kept[0].seed}" if kept else "the start", score[0])
    weights, bias = model.get_layer(EMBEDDING_LAYER).get_weights()
    folded = [(weights / scale[:, None]).astype(np.float32),  # standardise(x) @ W + b == x @ W' + b'
              (bias - (mean / scale) @ weights).astype(np.float32)]
    return TrainedHead(folded, model.get_layer("logits").get_weights(), best.history, best.best_epoch,
                       best.stopped_early, [head.seed for head in kept], score[0],
                       [{"seed": h.seed, "best_epoch": h.best_epoch, "validation_precision_at_10": h.score[0]}
                        for h in trained])


def _mean_weights(weights: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.mean(arrays, axis=0) for arrays in zip(*weights)]


def _head_model(n_features: int, *, n_classes: int, objective: str, class_weight: dict[int, float] | None,
                learning_rate: float, seed: int) -> keras.Model:
    inputs = keras.Input(shape=(n_features,), name="pretrained_features")
    embedding, probabilities = embedding_and_genres(inputs, n_classes=n_classes, seed=seed)
    outputs = {OUTPUT_LAYER: probabilities}
    losses = {OUTPUT_LAYER: _weighted_crossentropy(class_weight, n_classes)}
    if objective == "supcon":
        outputs[EMBEDDING_LAYER], losses[EMBEDDING_LAYER] = embedding, supervised_contrastive_loss
    head = keras.Model(inputs, outputs, name="head")
    head.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss=losses,
                 metrics={OUTPUT_LAYER: ["accuracy"]})
    return head


def _fit_one(head: keras.Model, train_x: np.ndarray, train: SliceFeatures, val_x: np.ndarray, val: SliceFeatures,
             ranking: ValidationRanking, *, seed: int, batch_size: int, max_epochs: int, patience: int) -> HeadRun:
    selection = RetrievalSelection(ranking, patience=patience)
    names = list(head.output) if isinstance(head.output, dict) else [OUTPUT_LAYER]
    fitted = head.fit(train_x, {name: train.labels for name in names},
                      validation_data=(val_x, {name: val.labels for name in names}),
                      batch_size=batch_size, epochs=max_epochs, shuffle=True, verbose=0, callbacks=[selection])
    history = {key.replace(f"{OUTPUT_LAYER}_", ""): [float(v) for v in values]
               for key, values in fitted.history.items()}
    history["val_precision_at_10"] = selection.scores
    return HeadRun(seed, selection.best_weights, history, selection.best_epoch, selection.stopped_early,
                   selection.best_key)


class ValidationRanking:
    """Scores an embedding layer by how it ranks the validation songs, as the evaluation ranks.

    Song vectors are the mean of their slices' embeddings; the embedding layer is linear,
    so that is the songs' mean features through it. Each validation song is a query
    against every train and validation song (itself left out); the score is (P@k, MAP@k)
    by genre.
    """

    def __init__(self, train_x: np.ndarray, train: SliceFeatures, val_x: np.ndarray, val: SliceFeatures) -> None:
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

    def score(self, weights: np.ndarray, bias: np.ndarray) -> tuple[float, float]:
        found = nearest_songs(self.song_means @ weights + bias, self.queries, k=self.k)
        scores = retrieval_scores(self.genres, self.queries, found, ks=(self.k,))
        return float(scores[f"precision_at_{self.k}"].mean()), float(scores[f"map_at_{self.k}"].mean())


class RetrievalSelection(keras.callbacks.Callback):
    """Keeps the head whose embedding ranks the validation songs best (:class:`ValidationRanking`).

    Scored before training (epoch 0) and after every epoch; ties broken by MAP, then by
    the earlier epoch; stops ``patience`` epochs after the best.
    """

    def __init__(self, ranking: ValidationRanking, *, patience: int) -> None:
        super().__init__()
        self.ranking = ranking
        self.patience = patience
        self.scores: list[float] = []
        self.best_epoch, self.best_key, self.best_weights = 0, None, {}
        self.stopped_early = False

    def on_train_begin(self, logs=None) -> None:
        self._record(0)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self._record(epoch + 1)
        if epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = self.stopped_early = True

    def _record(self, epoch: int) -> None:
        key = self.ranking.score(*self.model.get_layer(EMBEDDING_LAYER).get_weights())
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


def principal_embedding(model: keras.Model, *, features: np.ndarray) -> keras.Model:
    """The encoder (slice -> 128-d embedding) whose embedding layer projects the pretrained
    ``features`` (of the train and validation slices) onto their principal components: no labels needed."""
    features = features.astype(np.float64)
    model.get_layer(EMBEDDING_LAYER).set_weights(principal_projection(features))
    logger.info("no genres to learn: the embedding is the pretrained features' %d principal components "
                "(%d slices)", min(EMBEDDING_SIZE, *features.shape), len(features))
    return embedding_model(model)
