"""Transfer from a pretrained network: its features computed once per slice, a small head learnt on them.

With ``train.model=musicnn`` and ``train.fine_tune=head`` (the default) the pretrained
layers stay as they are, so their features of every slice are computed once (the
features stage, :mod:`deepcrate.stages.features`), and only the head (Dense 128 = the
embedding, ELU, dropout, genre softmax) is trained, on those arrays: an epoch takes well under a second instead of
a pass of the whole network over the slices, so a CPU trains it in minutes. The head's
weights are then put back on the full network, which is what the model folder holds
(``recommend --file`` runs it on a new file); the embed stage applies the head alone to
the stored features (:mod:`deepcrate.models.feature_head`).

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
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import keras
import numpy as np
from threadpoolctl import threadpool_limits

from deepcrate.config.sections import parse_checkpoints
from deepcrate.models.architectures import EMBEDDING_LAYER, EMBEDDING_SIZE, build_model, embedding_model
from deepcrate.models.feature_reader import SliceFeatures
from deepcrate.models.head_training import Batch, FittedHead, HeadWeights, fit_genre_layer, fit_head_weights
from deepcrate.models.musicnn import load_pretrained, pretrained_layer
from deepcrate.vectors.moments import BLOCK_ROWS, column_moments, group_sums, principal_components, standardised
from deepcrate.vectors.retrieval import nearest_songs_of_blocks, retrieval_scores
from deepcrate.vectors.scratch import scratch_array

logger = logging.getLogger(__name__)

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
             class_weight: dict[int, float] | None, heads: int = 1, seed: int = 0,
             overwrite_features: bool = False) -> TrainedHead:
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
                      class_weight=class_weight, heads=heads, seed=seed, overwrite_features=overwrite_features)
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


def train_head(train: SliceFeatures, val: SliceFeatures, *, n_classes: int, objective: str, batch_size: int,
               max_epochs: int, patience: int, learning_rate: float,
               class_weight: dict[int, float] | None = None, heads: int = 1, seed: int = 0,
               overwrite_features: bool = False) -> TrainedHead:
    """The head (Dense 128 embedding -> ELU -> dropout -> genre softmax) on pretrained features.

    ``objective`` ``classify``: genre cross-entropy; ``supcon``: the cross-entropy plus the
    supervised contrastive loss on the embedding (weight 1 each; class weights apply to
    the cross-entropy only). The features are standardised (mean and deviation of the
    train and validation slices) and the embedding starts as their projection onto
    their 128 principal components. Before training and after every epoch the
    validation songs are ranked against the train and validation songs
    (:class:`ValidationRanking`); the head of the best epoch is kept (epoch 0: the
    start), and training stops ``patience`` epochs after the best. The training runs in
    numpy (:mod:`deepcrate.models.head_training`).

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
    returned embedding weights, so they apply to the raw features. With ``overwrite_features``
    the standardised features are written over ``train.features`` and ``val.features`` (float32),
    so the slices are held once instead of twice.
    """
    mean, spread = column_moments([train.features, val.features])  # by blocks: no float64 copy of every slice
    # A feature (nearly) constant over these slices (a unit that never fires) is not blown up: divided by
    # its spread alone, the last digits of its value (another runtime's rounding) would move every embedding.
    scale = np.maximum(spread, MIN_FEATURE_SCALE)
    weight_of = np.array([(class_weight or {}).get(genre, 1.0) for genre in range(n_classes)], np.float32)
    train_batch, val_batch = (Batch(standardised(part.features, mean=mean, scale=scale, overwrite=overwrite_features),
                                    part.labels.astype(np.int64), weight_of[part.labels]) for part in (train, val))
    start = principal_projection([train_batch.features, val_batch.features])
    ranking = ValidationRanking(train_batch.features, train, val_batch.features, val)
    started = time.monotonic()

    def one_head(head_seed: int) -> FittedHead:
        rng = np.random.default_rng(head_seed)
        return fit_head_weights(HeadWeights.starting(start, n_classes=n_classes, rng=rng), train_batch, val_batch,
                                objective=objective, batch_size=batch_size, max_epochs=max_epochs, patience=patience,
                                learning_rate=learning_rate, rng=rng, score=ranking.score)

    # The heads side by side, one core each: numpy lets go of the GIL in its loops, and a head's
    # matrices are too small for a BLAS thread per core to pay.
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(min(heads, os.cpu_count() or 1)) as pool:
        trained = list(zip(range(seed, seed + heads), pool.map(one_head, range(seed, seed + heads))))
    _, best = max(trained, key=lambda pair: (pair[1].score, -pair[0]))
    averaged = _mean_weights([head.weights.arrays for _, head in trained])
    if ranking.score(*averaged[:2]) < ranking.score(*start):
        kept, result = [], HeadWeights(*start, *averaged[2:])
    else:
        kept, result = [head_seed for head_seed, _ in trained], HeadWeights(*averaged)
    if len(kept) == 1 and best.best_epoch > 0:  # one head, kept with the genre layer it learnt
        result = best.weights
    else:  # the start, or an average: its genre layer has not learnt from this embedding
        result = fit_genre_layer(result, train_batch, val_batch, batch_size=batch_size, learning_rate=learning_rate,
                                 patience=patience, rng=np.random.default_rng(seed))
    score = ranking.score(*result.embedding)
    logger.info("%d head(s) trained on %d slices' pretrained features (%s) in %.1f s; validation P@%d %.3f at the "
                "start, %s; kept: %s, %.3f", heads, len(train.labels), objective, time.monotonic() - started,
                SELECTION_K, best.history["val_precision_at_10"][0],
                ", ".join(f"seed {s} {h.score[0]:.3f} at epoch {h.best_epoch}" for s, h in trained),
                "their average" if len(kept) > 1 else f"seed {kept[0]}" if kept else "the start", score[0])
    folded = [(result.kernel / scale[:, None]).astype(np.float32),  # standardise(x) @ W + b == x @ W' + b'
              (result.bias - (mean / scale) @ result.kernel).astype(np.float32)]
    return TrainedHead(folded, result.logits, best.history, best.best_epoch, best.stopped_early, kept, score[0],
                       [{"seed": s, "best_epoch": h.best_epoch, "validation_precision_at_10": h.score[0]}
                        for s, h in trained])


def _mean_weights(weights: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.mean(arrays, axis=0).astype(arrays[0].dtype) for arrays in zip(*weights)]


class ValidationRanking:
    """Scores an embedding layer by how it ranks the validation songs, as the evaluation ranks.

    Song vectors are the mean of their slices' embeddings; the embedding layer is linear,
    so that is the songs' mean features through it. Each validation song is a query
    against every train and validation song (itself left out); the score is (P@k, MAP@k)
    by genre.
    """

    def __init__(self, train_x: np.ndarray, train: SliceFeatures, val_x: np.ndarray, val: SliceFeatures) -> None:
        song_ids = np.concatenate([train.song_ids, val.song_ids])
        labels = np.concatenate([train.labels, val.labels])
        songs, position = np.unique(song_ids, return_inverse=True)
        # per song, in a scratch file as the slices are: at one slice a song it is as large as they are
        self.song_means = group_sums([train_x, val_x], position, count=len(songs),
                                     out=scratch_array((len(songs), train_x.shape[1]), np.float64))
        self.song_means /= np.bincount(position)[:, None]
        self.genres = np.zeros(len(songs), np.int64)
        self.genres[position] = labels
        self.queries = np.unique(position[len(train_x):])
        self.k = min(SELECTION_K, len(songs) - 1)

    def score(self, weights: np.ndarray, bias: np.ndarray) -> tuple[float, float]:
        n = len(self.song_means)
        catalogue = ((np.arange(start, min(start + BLOCK_ROWS, n)), self.song_vectors(weights, bias, start=start))
                     for start in range(0, n, BLOCK_ROWS))
        found = nearest_songs_of_blocks(catalogue, self.song_vectors(weights, bias, rows=self.queries), self.queries,
                                        k=self.k)
        scores = retrieval_scores(self.genres, self.queries, found, ks=(self.k,))
        return float(scores[f"precision_at_{self.k}"].mean()), float(scores[f"map_at_{self.k}"].mean())

    def song_vectors(self, weights: np.ndarray, bias: np.ndarray, *, start: int | None = None,
                     rows: np.ndarray | None = None) -> np.ndarray:
        """Songs' vectors through the embedding layer (float32, computed in float64): the block of
        :data:`BLOCK_ROWS` songs from ``start``, or the songs at ``rows`` a block at a time. The heads
        score side by side, and each held every song's vector twice in float64 (~70 MB at 33,000
        songs) and a float32 copy."""
        if start is not None:
            return (self.song_means[start:start + BLOCK_ROWS] @ weights + bias).astype(np.float32)
        out = np.empty((len(rows), weights.shape[1]), np.float32)
        for first in range(0, len(rows), BLOCK_ROWS):
            out[first:first + BLOCK_ROWS] = self.song_means[rows[first:first + BLOCK_ROWS]] @ weights + bias
        return out


def principal_projection(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Dense weights (d, 128) and bias (128,) projecting the rows of ``parts`` (stacked) onto their
    principal components (fewer rows or dimensions than 128: the remaining columns stay zero),
    computed block by block (:func:`deepcrate.vectors.moments.principal_components`)."""
    mean, components = principal_components(parts, count=EMBEDDING_SIZE)
    basis = np.zeros((components.shape[0], EMBEDDING_SIZE))
    basis[:, :components.shape[1]] = components
    return [basis.astype(np.float32), (-mean @ basis).astype(np.float32)]


def principal_embedding(model: keras.Model, *, parts: Sequence[np.ndarray]) -> keras.Model:
    """The encoder (slice -> 128-d embedding) whose embedding layer projects the pretrained
    features of ``parts`` (the train and validation slices) onto their principal components: no labels needed."""
    model.get_layer(EMBEDDING_LAYER).set_weights(principal_projection(parts))
    rows = sum(len(part) for part in parts)
    logger.info("no genres to learn: the embedding is the pretrained features' %d principal components "
                "(%d slices)", min(EMBEDDING_SIZE, rows, parts[0].shape[1]), rows)
    return embedding_model(model)
