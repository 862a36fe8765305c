"""A trained head applied to stored pretrained features, in numpy: no TensorFlow on the executors.

The head of a musicnn model (``train.fine_tune=head``) is Dense 128 (the embedding),
ELU, dropout (inactive when embedding) and Dense n + softmax (the genres). Given the
frozen towers' features of a slice, that is two matrix products: embed runs them on
the ``pretrained_features`` table instead of the whole network on the slices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMBEDDING_LAYER = "embedding"  # deepcrate.models.architectures.EMBEDDING_LAYER, without importing Keras
LOGITS_LAYER = "logits"


@dataclass(frozen=True)
class FeatureHead:
    """The embedding layer's kernel and bias, and the genre layer's (None: a model without genres)."""

    embedding_kernel: np.ndarray
    embedding_bias: np.ndarray
    logits_kernel: np.ndarray | None = None
    logits_bias: np.ndarray | None = None

    @classmethod
    def from_model(cls, model) -> FeatureHead:
        """The head of a Keras model whose embedding layer reads the pretrained features."""
        kernel, bias = (np.asarray(w, np.float32) for w in model.get_layer(EMBEDDING_LAYER).get_weights())
        names = {layer.name for layer in model.layers}
        if LOGITS_LAYER in names and model.output_names != [EMBEDDING_LAYER]:
            logits_kernel, logits_bias = (np.asarray(w, np.float32) for w in model.get_layer(LOGITS_LAYER).get_weights())
            return cls(kernel, bias, logits_kernel, logits_bias)
        return cls(kernel, bias)

    @classmethod
    def load(cls, path: str) -> FeatureHead:
        """A head saved by :meth:`save` (an ``.npz`` of its arrays)."""
        with np.load(path) as stored:
            arrays = {name: np.asarray(stored[name], np.float32) for name in stored.files}
        return cls(arrays["embedding_kernel"], arrays["embedding_bias"], arrays.get("logits_kernel"),
                   arrays.get("logits_bias"))

    def save(self, path: str) -> None:
        arrays = {"embedding_kernel": self.embedding_kernel, "embedding_bias": self.embedding_bias}
        if self.logits_kernel is not None:
            arrays.update(logits_kernel=self.logits_kernel, logits_bias=self.logits_bias)
        with open(path, "wb") as out:
            np.savez(out, **arrays)

    @property
    def width(self) -> int:
        """The features it reads."""
        return self.embedding_kernel.shape[0]

    def __call__(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (n, 128), genre probabilities (n, genres; width 0 without genres)), float32."""
        embeddings = features.astype(np.float32, copy=False) @ self.embedding_kernel + self.embedding_bias
        if self.logits_kernel is None:
            return embeddings, np.zeros((len(features), 0), np.float32)
        activated = np.where(embeddings > 0, embeddings, np.expm1(np.minimum(embeddings, 0)))  # ELU
        logits = activated @ self.logits_kernel + self.logits_bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return embeddings, probabilities.astype(np.float32)
