"""Running a trained model: the copy a Python worker loads once, and embedding a batch of slices.

The model file reaches a worker as bytes (a Spark broadcast on executors); each Python
worker loads it once and keeps it for every later batch and task, because Spark reuses
its Python workers. TensorFlow is imported on first use only.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from deepcrate.errors import ModelError

# Per Python worker: model version -> a Keras model with named outputs (embedding, probabilities, pretrained).
_WORKER_MODELS: dict[str, Any] = {}


def worker_model(version: str, payload: bytes | Any, *, loads: Any = None, threads: int | None = None):
    """The two-output model of ``version`` for this Python process, loaded on first use.

    ``threads``: the CPUs TensorFlow may use (a Spark task's ``spark.task.cpus``: several Python
    workers share a machine, and each using every core would oversubscribe it); None keeps
    TensorFlow's default.
    """
    model = _WORKER_MODELS.get(version)
    if model is None:
        try:
            import keras
        except ImportError:  # an executor environment packed without it (docs/cluster.md)
            raise ModelError("this Python has no TensorFlow: the model embeds with Keras here; on a cluster, ship "
                             "the environment `make package-tensorflow` builds") from None
        if threads is not None:
            _limit_threads(threads)

        import deepcrate.models.architectures  # noqa: F401  registers the augmentation layers
        from deepcrate.models.architectures import EMBEDDING_LAYER
        from deepcrate.models.musicnn import pretrained_layer

        data = payload if isinstance(payload, bytes) else payload.value
        with tempfile.TemporaryDirectory(prefix="deepcrate-model-") as tmp:
            path = os.path.join(tmp, "model.keras")
            with open(path, "wb") as out:
                out.write(data)
            trained = keras.models.load_model(path, compile=False)
        outputs = {"embedding": trained.get_layer(EMBEDDING_LAYER).output}
        if trained.output_names != [EMBEDDING_LAYER]:  # an embedding-only model has no genre head
            outputs["probabilities"] = trained.output
        if pretrained_layer(trained):  # musicnn's untuned features too
            outputs["pretrained"] = trained.get_layer(pretrained_layer(trained)).output
        model = keras.Model(trained.input, outputs)
        _WORKER_MODELS.clear()  # one model per worker at a time
        _WORKER_MODELS[version] = model
        if loads is not None:
            loads.add(1)
    return model


def _limit_threads(threads: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process: keep its pools
        pass


def embed_images(model, images: np.ndarray, *, batch_size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(embeddings, probabilities, pretrained features) as float32 for uint8 images, ``batch_size`` at a time.

    ``model`` is a :func:`worker_model`. A model without a genre head gives probabilities
    of width 0; one without pretrained layers gives None for their features.
    """
    from deepcrate.models.architectures import EMBEDDING_SIZE, slices_per_call

    batch_size = slices_per_call(model, batch_size)
    widths = {name: model.output[name].shape[-1] for name in ("probabilities", "pretrained") if name in model.output}
    parts = {"embedding": [np.zeros((0, EMBEDDING_SIZE), np.float32)],
             **{name: [np.zeros((0, width), np.float32)] for name, width in widths.items()}}
    for start in range(0, len(images), batch_size):
        # Compiled, not eager: a model run op by op is ~1.8x slower (musicnn: 4.6 vs 8.3 slices/s on 2 cores).
        outputs = model.predict_on_batch(images[start:start + batch_size])
        for name, values in outputs.items():
            parts[name].append(np.asarray(values, dtype=np.float32))
    embeddings = np.concatenate(parts["embedding"])
    probabilities = (np.concatenate(parts["probabilities"]) if "probabilities" in parts
                     else np.zeros((len(embeddings), 0), np.float32))
    return embeddings, probabilities, np.concatenate(parts["pretrained"]) if "pretrained" in parts else None
