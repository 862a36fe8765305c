"""The head's training on pretrained features, in numpy: its loss, its gradients, Adam.

The head (Dense 128 = the embedding, ELU, dropout 0.5, Dense = the genre logits,
softmax) is a few hundred thousand weights. Trained by Keras, each step of 128 slices
dispatched a few hundred small graph ops (~3 ms on 2 cores, ~0.5 s an epoch of the
corpus), and a default rebuild trains three heads for ~60 epochs each: most of a
rebuild that only changed a training setting. Here a step is a few matrix products.

The training is the one Keras ran: the loss is the genre cross-entropy (per-genre
weights, averaged over the batch) plus, for ``supcon``, the supervised contrastive loss
(Khosla et al. 2020, :func:`deepcrate.models.architectures.supervised_contrastive_loss`) on the
embedding, weight 1 each; shuffled batches, dropout active in training only; Adam with
Keras' defaults. tests/test_head_training.py checks the gradients against TensorFlow's
differentiation of the Keras losses, and an Adam step against Keras' optimizer.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from deepcrate.vectors.scratch import scratch_array

DROPOUT = 0.5  # deepcrate.models.architectures.embedding_and_genres' rate
SUPCON_TEMPERATURE = 0.1  # deepcrate.models.architectures.SUPCON_TEMPERATURE, without importing Keras
ADAM_BETAS, ADAM_EPSILON = (0.9, 0.999), 1e-7  # Keras' defaults
GENRE_LAYER_EPOCHS = 200  # the genre layer alone: at most this many epochs (its early stopping ends it sooner)
EVALUATION_BLOCK_ROWS = 2048  # slices embedded at once outside a training step (their temporaries ~1 MB each)


@dataclass
class HeadWeights:
    """The embedding layer's kernel (d, 128) and bias, and the genre layer's (128, genres) and bias."""

    kernel: np.ndarray
    bias: np.ndarray
    logits_kernel: np.ndarray
    logits_bias: np.ndarray

    @classmethod
    def starting(cls, embedding: list[np.ndarray], *, n_classes: int, rng: np.random.Generator) -> HeadWeights:
        """The embedding layer as given; the genre layer as Keras draws a Dense layer (Glorot uniform, zero bias)."""
        width = embedding[0].shape[1]
        limit = np.sqrt(6.0 / (width + n_classes))
        return cls(*(np.array(w, np.float32) for w in embedding),
                   rng.uniform(-limit, limit, (width, n_classes)).astype(np.float32), np.zeros(n_classes, np.float32))

    @property
    def arrays(self) -> list[np.ndarray]:
        return [self.kernel, self.bias, self.logits_kernel, self.logits_bias]

    @property
    def embedding(self) -> list[np.ndarray]:
        return [self.kernel, self.bias]

    @property
    def logits(self) -> list[np.ndarray]:
        return [self.logits_kernel, self.logits_bias]

    def copy(self) -> HeadWeights:
        return HeadWeights(*(w.copy() for w in self.arrays))


@dataclass
class Batch:
    """Slices' (standardised) features, genre indices, and the weight of each slice's genre."""

    features: np.ndarray
    labels: np.ndarray
    genre_weights: np.ndarray


@dataclass
class HeadLoss:
    """A batch's loss (its genre cross-entropy + contrastive terms), correct genre guesses, and the gradients."""

    loss: float
    contrastive: float  # the supervised contrastive term of ``loss`` (0 for ``classify``)
    correct: int
    gradients: list[np.ndarray]  # as HeadWeights.arrays


def elu(x: np.ndarray) -> np.ndarray:
    # exp - 1, not expm1: numpy vectorises exp (~10x faster here); the difference is < 1e-7 absolute
    return np.where(x > 0, x, np.exp(np.minimum(x, 0)) - 1)


def head_loss(weights: HeadWeights, batch: Batch, *, objective: str, kept: np.ndarray | None = None) -> HeadLoss:
    """The loss of ``batch`` and its gradients.

    Parameters
    ----------
    objective : {"classify", "supcon"}
        ``supcon`` adds the supervised contrastive loss on the embedding.
    kept : ndarray, optional
        Dropout: 0 for a dropped unit, ``1 / (1 - rate)`` for a kept one (the batch's shape
        by the embedding's width); None for no dropout (evaluation).
    """
    embedded = batch.features @ weights.kernel + weights.bias
    activated = elu(embedded)
    loss, correct, d_activated, logits_gradients = genre_loss(weights, activated, labels=batch.labels,
                                                              genre_weights=batch.genre_weights, kept=kept)
    d_embedded = d_activated * np.where(embedded > 0, 1.0, activated + 1.0)  # ELU' = ELU + 1 below 0
    contrastive = 0.0
    if objective == "supcon":
        contrastive, d_contrastive = supervised_contrastive(embedded, batch.labels)
        d_embedded += d_contrastive
    gradients = [batch.features.T @ d_embedded, d_embedded.sum(axis=0), *logits_gradients]
    return HeadLoss(loss + contrastive, contrastive, correct, gradients)


def genre_loss(weights: HeadWeights, activated: np.ndarray, *, labels: np.ndarray, genre_weights: np.ndarray,
               kept: np.ndarray | None) -> tuple[float, int, np.ndarray, list[np.ndarray]]:
    """The genre layer's part, on slices' activated embeddings: (the weighted cross-entropy, correct
    guesses, its gradient by the activated embeddings, its gradients by the genre layer's kernel and bias)."""
    n = len(labels)
    dropped = activated if kept is None else activated * kept
    logits = dropped @ weights.logits_kernel + weights.logits_bias
    logits -= logits.max(axis=1, keepdims=True)
    log_probabilities = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    rows = np.arange(n)
    loss = float((-log_probabilities[rows, labels] * genre_weights).mean())
    correct = int((logits.argmax(axis=1) == labels).sum())
    d_logits = np.exp(log_probabilities)
    d_logits[rows, labels] -= 1.0
    d_logits *= (genre_weights / n)[:, None]
    d_activated = d_logits @ weights.logits_kernel.T
    if kept is not None:
        d_activated *= kept
    return loss, correct, d_activated, [dropped.T @ d_logits, d_logits.sum(axis=0)]


def supervised_contrastive(embedded: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """The batch mean of the supervised contrastive loss and its gradient by the embeddings.

    Each row's L2-normalised embedding against the rest of the batch at temperature
    :data:`SUPCON_TEMPERATURE`, its positives those of its genre; a row without a
    positive adds nothing (and counts in the mean, as in the Keras loss).
    """
    n = len(labels)
    norms = np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), 1e-6)
    unit = embedded / norms
    similarity = unit @ unit.T / SUPCON_TEMPERATURE
    np.fill_diagonal(similarity, -np.inf)  # a row is not its own candidate
    similarity -= similarity.max(axis=1, keepdims=True)
    log_probabilities = similarity - np.log(np.exp(similarity).sum(axis=1, keepdims=True))
    positive = (labels[:, None] == labels[None, :]).astype(embedded.dtype)
    np.fill_diagonal(positive, 0.0)
    count = positive.sum(axis=1)
    share = positive / np.maximum(count, 1.0)[:, None]
    np.fill_diagonal(log_probabilities, 0.0)
    loss = float(-(share * log_probabilities).sum(axis=1).mean())
    # d loss / d similarity: (softmax of the row, times the row's share of positives) - share, over n
    d_similarity = (np.exp(log_probabilities) * share.sum(axis=1, keepdims=True) - share) / n
    np.fill_diagonal(d_similarity, 0.0)
    d_unit = (d_similarity + d_similarity.T) @ unit / SUPCON_TEMPERATURE
    d_embedded = (d_unit - unit * (unit * d_unit).sum(axis=1, keepdims=True)) / norms
    return loss, d_embedded.astype(embedded.dtype)


@dataclass
class Adam:
    """Keras' Adam (``keras.optimizers.Adam`` with its default betas and epsilon) over a list of arrays."""

    learning_rate: float
    steps: int = 0
    moments: list[tuple[np.ndarray, np.ndarray] | None] = field(default_factory=list)

    def step(self, arrays: list[np.ndarray], gradients: list[np.ndarray | None]) -> None:
        """Updates ``arrays`` in place; an array whose gradient is None is left as it is."""
        if not self.moments:
            self.moments = [None] * len(arrays)
        self.steps += 1
        (beta_1, beta_2), t = ADAM_BETAS, self.steps
        rate = self.learning_rate * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        for position, (array, gradient) in enumerate(zip(arrays, gradients)):
            if gradient is None:
                continue
            if self.moments[position] is None:
                self.moments[position] = (np.zeros_like(array), np.zeros_like(array))
            first, second = self.moments[position]
            first += (gradient - first) * (1 - beta_1)
            second += (gradient * gradient - second) * (1 - beta_2)
            array -= (rate * first / (np.sqrt(second) + ADAM_EPSILON)).astype(array.dtype)


@dataclass
class Scores:
    """Over an epoch or a split: the mean loss, its contrastive part, and the share of genres guessed right."""

    loss: float
    contrastive: float
    accuracy: float

    def history(self, prefix: str = "") -> dict[str, float]:
        """Keras' names in a history (``val_`` for the validation split)."""
        return {f"{prefix}loss": self.loss, f"{prefix}accuracy": self.accuracy,
                f"{prefix}embedding_loss": self.contrastive}


def run_epoch(weights: HeadWeights, optimizer: Adam, train: Batch, *, objective: str, batch_size: int,
              rng: np.random.Generator) -> Scores:
    """One pass over ``train`` in shuffled batches, with the scores seen while training (dropout on)."""
    order = rng.permutation(len(train.labels))
    width = weights.kernel.shape[1]
    total, contrastive, correct = 0.0, 0.0, 0
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        kept = dropout_mask((len(rows), width), rng)
        result = head_loss(weights, Batch(train.features[rows], train.labels[rows], train.genre_weights[rows]),
                           objective=objective, kept=kept)
        optimizer.step(weights.arrays, result.gradients)
        total += result.loss * len(rows)
        contrastive += result.contrastive * len(rows)
        correct += result.correct
    return Scores(total / len(order), contrastive / len(order), correct / len(order))


def activations(weights: HeadWeights, features: np.ndarray) -> np.ndarray:
    """The activated embeddings of ``features`` (n, 128), block by block: ELU's temporaries for a block of
    slices at a time, not for all of them; in a scratch file (:func:`deepcrate.vectors.scratch.scratch_array`),
    not in the process's memory."""
    out = scratch_array((len(features), weights.kernel.shape[1]), np.float32)
    for start in range(0, len(features), EVALUATION_BLOCK_ROWS):
        block = slice(start, start + EVALUATION_BLOCK_ROWS)
        out[block] = elu(features[block] @ weights.kernel + weights.bias)
    return out


def dropout_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    return (rng.random(shape, np.float32) >= DROPOUT) * np.float32(1 / (1 - DROPOUT))


def evaluate(weights: HeadWeights, data: Batch, *, objective: str, batch_size: int) -> Scores:
    """The scores without dropout; the contrastive term over batches of ``batch_size`` in order (as
    Keras validates). Computed over blocks of those batches, so that the heads trained side by side
    each hold a block's embeddings, not the whole split's."""
    n = len(data.labels)
    step = batch_size * max(1, EVALUATION_BLOCK_ROWS // batch_size)  # whole batches: the same contrastive terms
    loss, contrastive, correct = 0.0, 0.0, 0
    for start in range(0, n, step):
        block = slice(start, start + step)
        embedded = data.features[block] @ weights.kernel + weights.bias
        labels = data.labels[block]
        block_loss, block_correct, _, _ = genre_loss(weights, elu(embedded), labels=labels,
                                                     genre_weights=data.genre_weights[block], kept=None)
        loss += block_loss * len(labels)
        correct += block_correct
        if objective == "supcon":
            contrastive += sum(supervised_contrastive(embedded[part:part + batch_size], labels[part:part + batch_size])[0]
                               * len(labels[part:part + batch_size]) for part in range(0, len(labels), batch_size))
    return Scores((loss + contrastive) / n, contrastive / n, correct / n)


def genre_layer_loss(weights: HeadWeights, activated: np.ndarray, data: Batch) -> float:
    """The genre layer's weighted cross-entropy (no dropout) on ``data``'s activated embeddings, a block
    of slices at a time: no gradient, and no temporaries the size of the split."""
    total = 0.0
    for start in range(0, len(data.labels), EVALUATION_BLOCK_ROWS):
        block = slice(start, start + EVALUATION_BLOCK_ROWS)
        labels = data.labels[block]
        total += genre_loss(weights, activated[block], labels=labels, genre_weights=data.genre_weights[block],
                            kept=None)[0] * len(labels)
    return total / max(1, len(data.labels))


@dataclass
class FittedHead:
    """A head kept at its best epoch (0: the start) by ``score``, with its history."""

    weights: HeadWeights
    history: dict[str, list[float]]
    best_epoch: int
    stopped_early: bool
    score: tuple[float, ...]


def fit_head_weights(start: HeadWeights, train: Batch, val: Batch, *, objective: str, batch_size: int,
                     max_epochs: int, patience: int, learning_rate: float, rng: np.random.Generator,
                     score: Callable[[np.ndarray, np.ndarray], tuple[float, ...]]) -> FittedHead:
    """Trains both layers from ``start``; keeps the epoch whose embedding ``score`` ranks highest
    (scored before training and after every epoch, ties to the earlier), stopping ``patience``
    epochs after it. The history gains ``val_precision_at_10``: each epoch's first score."""
    weights, optimizer, history = start.copy(), Adam(learning_rate), {}
    best = FittedHead(start.copy(), {}, 0, False, score(*start.embedding))
    scores = [best.score[0]]
    for epoch in range(1, max_epochs + 1):
        seen = run_epoch(weights, optimizer, train, objective=objective, batch_size=batch_size, rng=rng).history()
        validated = evaluate(weights, val, objective=objective, batch_size=batch_size).history("val_")
        for name, value in {**seen, **validated}.items():
            if objective == "supcon" or "embedding_loss" not in name:
                history.setdefault(name, []).append(float(value))
        key = score(*weights.embedding)
        scores.append(key[0])
        if key > best.score:
            best.weights, best.best_epoch, best.score = weights.copy(), epoch, key
        if epoch - best.best_epoch >= patience:
            best.stopped_early = True
            break
    best.history = {**history, "val_precision_at_10": scores}
    return best


def fit_genre_layer(weights: HeadWeights, train: Batch, val: Batch, *, batch_size: int, learning_rate: float,
                    patience: int, rng: np.random.Generator) -> HeadWeights:
    """The genre layer alone on the frozen embedding (cross-entropy, dropout as in training); the
    epoch of the lowest validation loss is kept, stopping ``patience`` epochs after it."""
    train_activated, val_activated = (activations(weights, part.features) for part in (train, val))
    weights, optimizer = weights.copy(), Adam(learning_rate)
    best, best_loss, best_epoch = weights.copy(), np.inf, 0
    for epoch in range(1, GENRE_LAYER_EPOCHS + 1):
        order = rng.permutation(len(train.labels))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            _, _, _, gradients = genre_loss(weights, train_activated[rows], labels=train.labels[rows],
                                            genre_weights=train.genre_weights[rows],
                                            kept=dropout_mask((len(rows), weights.kernel.shape[1]), rng))
            optimizer.step(weights.arrays, [None, None, *gradients])
        val_loss = genre_layer_loss(weights, val_activated, val)
        if val_loss < best_loss:
            best, best_loss, best_epoch = weights.copy(), val_loss, epoch
        elif epoch - best_epoch >= patience:
            break
    return best
