"""The head's training in numpy against TensorFlow: the same loss, the same gradients, Keras' Adam."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from deepcrate.models.architectures import SUPCON_TEMPERATURE, supervised_contrastive_loss
from deepcrate.models.head_training import (
    Adam,
    Batch,
    HeadWeights,
    activations,
    dropout_mask,
    evaluate,
    fit_genre_layer,
    genre_layer_loss,
    head_loss,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def problem():
    """Random weights and a batch of 48 slices of 4 genres (two genres with one slice: no positive)."""
    rng = np.random.default_rng(3)
    weights = HeadWeights(rng.normal(0, 0.2, (20, 16)).astype(np.float32), rng.normal(0, 0.1, 16).astype(np.float32),
                          rng.normal(0, 0.3, (16, 6)).astype(np.float32), rng.normal(0, 0.1, 6).astype(np.float32))
    labels = np.concatenate([rng.integers(0, 4, 46), [4, 5]])
    batch = Batch(rng.normal(0, 1, (48, 20)).astype(np.float32), labels,
                  np.array([1.0, 0.5, 2.0, 1.0, 3.0, 1.0], np.float32)[labels])
    return weights, batch, dropout_mask((48, 16), rng)


def keras_loss(weights: list[tf.Variable], batch: Batch, kept: np.ndarray | None, *, objective: str):
    """The Keras head's loss on the batch, as model.py and transfer.py defined it: Keras' own ops."""
    kernel, bias, logits_kernel, logits_bias = weights
    embedded = keras.ops.matmul(batch.features, kernel) + bias
    activated = keras.activations.elu(embedded)
    if kept is not None:
        activated = activated * kept
    probabilities = keras.activations.softmax(keras.ops.matmul(activated, logits_kernel) + logits_bias)
    genre = keras.losses.sparse_categorical_crossentropy(batch.labels, probabilities) * batch.genre_weights
    loss = keras.ops.mean(genre)
    if objective == "supcon":
        loss += keras.ops.mean(supervised_contrastive_loss(batch.labels, embedded))
    return loss


@pytest.mark.parametrize("objective", ["classify", "supcon"])
@pytest.mark.parametrize("dropout", [True, False])
def test_the_loss_and_its_gradients_are_tensorflows(problem, objective, dropout):
    weights, batch, kept = problem
    kept = kept if dropout else None
    variables = [tf.Variable(w) for w in weights.arrays]
    with tf.GradientTape() as tape:
        expected = keras_loss(variables, batch, kept, objective=objective)
    expected_gradients = tape.gradient(expected, variables)
    got = head_loss(weights, batch, objective=objective, kept=kept)
    assert got.loss == pytest.approx(float(expected), rel=1e-5)
    for mine, theirs in zip(got.gradients, expected_gradients):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-3, atol=1e-6)


def test_the_contrastive_term_uses_the_models_temperature():
    from deepcrate.models import head_training

    assert head_training.SUPCON_TEMPERATURE == SUPCON_TEMPERATURE


def test_adam_steps_are_keras_adams(problem):
    weights, batch, kept = problem
    mine, theirs = weights.copy(), [keras.Variable(w) for w in weights.arrays]
    optimizer, keras_optimizer = Adam(0.01), keras.optimizers.Adam(learning_rate=0.01)
    for _ in range(5):
        gradients = head_loss(mine, batch, objective="supcon", kept=kept).gradients
        optimizer.step(mine.arrays, gradients)
        keras_optimizer.apply_gradients(zip([tf.constant(g) for g in gradients], theirs))
    for got, expected in zip(mine.arrays, theirs):
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_frozen_embedding_stays_and_the_genre_layer_learns(problem):
    weights, batch, _ = problem
    train, val = (Batch(batch.features[part], batch.labels[part], batch.genre_weights[part])
                  for part in (slice(0, 36), slice(36, 48)))
    before = evaluate(weights, val, objective="classify", batch_size=16).loss
    fitted = fit_genre_layer(weights, train, val, batch_size=16, learning_rate=0.01, patience=5,
                             rng=np.random.default_rng(0))
    np.testing.assert_array_equal(fitted.kernel, weights.kernel)
    np.testing.assert_array_equal(fitted.bias, weights.bias)
    assert evaluate(fitted, val, objective="classify", batch_size=16).loss < before


def test_the_genre_layers_validation_loss_is_keras_cross_entropy_whatever_the_block_size(problem, monkeypatch):
    from deepcrate.models import head_training

    weights, batch, _ = problem
    expected = float(keras_loss([tf.Variable(w) for w in weights.arrays], batch, None, objective="classify"))
    activated = activations(weights, batch.features)
    assert genre_layer_loss(weights, activated, batch) == pytest.approx(expected, rel=1e-5)
    train, val = (Batch(batch.features[part], batch.labels[part], batch.genre_weights[part])
                  for part in (slice(0, 30), slice(30, 48)))
    whole = fit_genre_layer(weights, train, val, batch_size=8, learning_rate=0.01, patience=5,
                            rng=np.random.default_rng(1))
    monkeypatch.setattr(head_training, "EVALUATION_BLOCK_ROWS", 5)  # 4 blocks of the 18 validation slices
    assert genre_layer_loss(weights, activated, batch) == pytest.approx(expected, rel=1e-5)
    blocks = fit_genre_layer(weights, train, val, batch_size=8, learning_rate=0.01, patience=5,
                             rng=np.random.default_rng(1))
    for got, want in zip(blocks.logits, whole.logits):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(whole.logits_kernel, weights.logits_kernel)  # it did learn


@pytest.mark.parametrize("objective", ["classify", "supcon"])
def test_the_validation_scores_do_not_depend_on_the_block_size(problem, objective, monkeypatch):
    from deepcrate.models import head_training

    weights, batch, _ = problem
    expected = keras_loss([tf.Variable(w) for w in weights.arrays], batch, None, objective="classify")
    whole = evaluate(weights, batch, objective=objective, batch_size=8)
    monkeypatch.setattr(head_training, "EVALUATION_BLOCK_ROWS", 16)  # 3 blocks of 2 batches
    blocks = evaluate(weights, batch, objective=objective, batch_size=8)
    assert blocks.loss == pytest.approx(whole.loss, rel=1e-6)
    assert blocks.contrastive == pytest.approx(whole.contrastive, rel=1e-6)
    assert blocks.accuracy == whole.accuracy
    assert whole.loss - whole.contrastive == pytest.approx(float(expected), rel=1e-5)  # the cross-entropy is Keras'
