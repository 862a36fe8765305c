"""The frozen pretrained networks as a feature extractor, on a fast CPU runtime.

With ``train.model=musicnn`` and ``train.fine_tune=head`` the musicnn towers never
change, so what they make of a slice is computed once (the ``features`` stage) and
kept in the ``pretrained_features`` table. This module builds that extractor: the
Keras towers with the checkpoints' weights, cut at their penultimate features, then
handed to OpenVINO, which runs the same graph (its front-end's convolutions rewritten:
:mod:`deepcrate.models.openvino_graph`) ~3x faster per core than Keras'
``predict_on_batch`` on these CPUs, with features equal to within 1e-6 (bench/
pretrained_runtime.py; docs/benchmarks.md). The converted network travels to the
executors as bytes (an OpenVINO IR, ~6 MB), so executors need OpenVINO, not TensorFlow.

:class:`Network` names what a stored feature means; its :meth:`Network.identity`
changes with the checkpoints' files, the slices' pixels (spectrogram settings) or
the layout of a stored row (:data:`FEATURE_FORMAT`), and a model trained on features
of one identity refuses a table of another.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from deepcrate.config.sections import FEATURE_RUNTIMES, parse_checkpoints
from deepcrate.errors import ConfigError, WarehouseError
from deepcrate.models.openvino_graph import unfold_time_into_channels

FEATURE_FORMAT = "float32-le-v1"  # a row's features: little-endian float32, the towers side by side
FEATURE_DTYPE = np.dtype("<f4")  # float16 halves the table but moves a head's embeddings measurably (docs/benchmarks.md)
WIDTH_PER_TOWER = 200

# Per Python worker: identity -> a loaded extractor (Spark reuses its Python workers).
_WORKER_EXTRACTORS: dict[str, Any] = {}


@dataclass(frozen=True)
class Network:
    """The pretrained towers of ``train.pretrained`` on slices of ``image_shape`` (bands, frames)."""

    checkpoints: str  # one checkpoint name, or several joined by '+'
    image_shape: tuple[int, int]
    level_range: float  # the slices' db_range: the level drawn as grey 255

    @classmethod
    def on_slices(cls, checkpoints: str, spectrogram) -> Network:
        """The networks of ``checkpoints`` on slices drawn with ``spectrogram`` (SpectrogramSettings)."""
        return cls(checkpoints=checkpoints, image_shape=(spectrogram.n_rows, spectrogram.slice_frames),
                   level_range=float(spectrogram.db_range))

    @property
    def width(self) -> int:
        return WIDTH_PER_TOWER * len(parse_checkpoints(self.checkpoints))

    def identity(self) -> str:
        """A digest of everything a stored feature depends on: the checkpoints' weight files,
        the slices' shape and levels, and the row layout."""
        from deepcrate.models.musicnn import checkpoint_prefix

        digest = hashlib.sha256()
        digest.update(repr((FEATURE_FORMAT, self.checkpoints, tuple(self.image_shape),
                            float(self.level_range))).encode())
        for name in parse_checkpoints(self.checkpoints):
            prefix = checkpoint_prefix(name)
            for suffix in (".index", ".data-00000-of-00001"):
                with open(prefix + suffix, "rb") as stream:
                    for block in iter(lambda: stream.read(1 << 20), b""):
                        digest.update(block)
        return f"{self.checkpoints}:{digest.hexdigest()[:16]}"


def keras_extractor(network: Network):
    """The Keras towers with the checkpoints' weights, from uint8 slices to their features."""
    from deepcrate.models.transfer import feature_extractor, pretrained_model

    return feature_extractor(pretrained_model(n_classes=2, image_shape=tuple(network.image_shape),
                                              level_range=network.level_range, checkpoint=network.checkpoints,
                                              seed=0))


def export(network: Network, *, runtime: str = "openvino", unfold_time: bool = True) -> bytes:
    """The extractor as bytes a worker loads with :func:`worker_extractor` (``runtime``: one of :data:`~deepcrate.config.sections.FEATURE_RUNTIMES`).

    With OpenVINO the single-channel convolutions are rewritten to run faster
    (:func:`~deepcrate.models.openvino_graph.unfold_time_into_channels`); ``unfold_time=False``
    keeps the graph as converted (the benchmark's comparison).

    Raises
    ------
    ConfigError
        An unknown runtime, or the checkpoints are not installed.
    """
    if runtime not in FEATURE_RUNTIMES:
        raise ConfigError(f"features.runtime must be one of {FEATURE_RUNTIMES}, got {runtime!r}")
    extractor = keras_extractor(network)
    with tempfile.TemporaryDirectory(prefix="deepcrate-extractor-") as tmp:
        if runtime == "keras":
            extractor.save(os.path.join(tmp, "extractor.keras"))
        else:
            import openvino as ov

            with warnings.catch_warnings():  # Keras: "the structure of inputs doesn't match" (a list of one)
                warnings.simplefilter("ignore", UserWarning)
                converted = ov.convert_model(extractor, input=[("slice", [-1, *network.image_shape], ov.Type.u8)])
            if unfold_time:
                unfold_time_into_channels(converted)
            ov.save_model(converted, os.path.join(tmp, "extractor.xml"), compress_to_fp16=False)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name in sorted(os.listdir(tmp)):
                archive.add(os.path.join(tmp, name), arcname=name)
    return buffer.getvalue()


class Extractor:
    """A loaded extractor: ``extractor(images)`` gives float32 features (n, width) for uint8 slices."""

    def __init__(self, payload: bytes, *, threads: int | None = None) -> None:
        with tempfile.TemporaryDirectory(prefix="deepcrate-extractor-") as tmp:
            with tarfile.open(fileobj=io.BytesIO(payload)) as archive:
                archive.extractall(tmp, filter="data")
            if os.path.exists(os.path.join(tmp, "extractor.xml")):
                import openvino as ov

                # No pinning: OpenVINO pins a 1-thread network to the first core, so every Python worker
                # of a machine ran on core 0 (two workers on 2 cores: one core busy, measured).
                config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                          "ENABLE_CPU_PINNING": "NO"}
                if threads:
                    config["INFERENCE_NUM_THREADS"] = str(threads)
                self._compiled = ov.Core().compile_model(os.path.join(tmp, "extractor.xml"), "CPU", config)
                self._keras = None
            else:
                import keras
                import tensorflow as tf

                import deepcrate.models.architectures  # noqa: F401  registers musicnn's input layer for loading
                if threads:
                    try:
                        tf.config.threading.set_intra_op_parallelism_threads(threads)
                        tf.config.threading.set_inter_op_parallelism_threads(1)
                    except RuntimeError:  # TensorFlow already started in this process: keep its pools
                        pass
                self._keras = keras.models.load_model(os.path.join(tmp, "extractor.keras"), compile=False)
                self._compiled = None

    def __call__(self, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        parts = []
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start:start + batch_size])
            if self._compiled is not None:
                parts.append(np.asarray(self._compiled(batch)[0], dtype=np.float32))
            else:
                parts.append(np.asarray(self._keras.predict_on_batch(batch), dtype=np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def worker_extractor(identity: str, payload: Any, *, threads: int | None = None, loads: Any = None) -> Extractor:
    """The extractor of ``identity`` for this Python process (``payload``: bytes or a broadcast of them),
    loaded on first use and kept."""
    extractor = _WORKER_EXTRACTORS.get(identity)
    if extractor is None:
        extractor = Extractor(payload if isinstance(payload, bytes) else payload.value, threads=threads)
        _WORKER_EXTRACTORS.clear()  # one network per worker at a time
        _WORKER_EXTRACTORS[identity] = extractor
        if loads is not None:
            loads.add(1)
    return extractor


def to_bytes(features: np.ndarray) -> list[bytes]:
    """Each row of ``features`` as the bytes a ``pretrained_features`` row stores."""
    rows = np.ascontiguousarray(features, dtype=FEATURE_DTYPE)
    return [row.tobytes() for row in rows]


def from_bytes(values, *, width: int, where: str) -> np.ndarray:
    """Stored rows back to float32 features (n, width).

    Raises
    ------
    WarehouseError
        A row of another width (a table written for other networks).
    """
    joined = b"".join(values)
    if len(joined) != len(values) * width * FEATURE_DTYPE.itemsize:
        raise WarehouseError(f"{where}: stored features are not {width} {FEATURE_DTYPE.name} values a row")
    return np.frombuffer(joined, dtype=FEATURE_DTYPE).reshape(len(values), width).astype(np.float32)


def from_arrow(values: pa.Array | pa.ChunkedArray, *, width: int, where: str) -> np.ndarray:
    """:func:`from_bytes` for the column as Arrow reads it, without a Python object per row: cast to
    fixed-width binary, the values are one buffer of floats.

    Raises
    ------
    WarehouseError
        A row of another width (a table written for other networks).
    """
    row_bytes = width * FEATURE_DTYPE.itemsize
    parts = []
    for chunk in values.chunks if isinstance(values, pa.ChunkedArray) else [values]:
        try:
            fixed = chunk.cast(pa.binary(row_bytes))
        except pa.ArrowInvalid:
            raise WarehouseError(f"{where}: stored features are not {width} {FEATURE_DTYPE.name} values a row") from None
        parts.append(np.frombuffer(fixed.buffers()[1], dtype=FEATURE_DTYPE, count=len(fixed) * width,
                                   offset=fixed.offset * row_bytes).reshape(len(fixed), width))
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, width), np.float32)
