"""Helpers the tests share: real audio written on the fly, reference numerics computed independently."""
from __future__ import annotations

import mmap
import shutil
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf


def make_signal(seconds: float, *, sample_rate: int = 44100, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A chirp plus a little noise: energy across the spectrogram, different per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 100.0 + 50.0 * seed
    chirp = np.sin(2 * np.pi * (f0 * t + 40.0 * t**2))
    beat = (np.sin(2 * np.pi * 2.0 * t) > 0.95) * rng.standard_normal(len(t)) * 0.3
    mono = 0.3 * chirp + beat + 0.01 * rng.standard_normal(len(t))
    mono *= 0.6 / np.abs(mono).max()  # headroom: no clipping in the encoders
    if channels == 1:
        return mono.astype(np.float32)
    left, right = mono, 0.5 * mono + 0.1 * np.sin(2 * np.pi * 880 * t)
    return np.stack([left, right][:channels], axis=1).astype(np.float32)


def write_audio(path: Path, samples: np.ndarray, *, sample_rate: int = 44100, fmt: str = "MP3") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "VORBIS" if fmt == "OGG" else None
    sf.write(str(path), samples, sample_rate, format=fmt, subtype=subtype)
    return path


def reference_grey(db: np.ndarray, db_range: float) -> np.ndarray:
    """dBFS to grey levels, written out plainly."""
    return np.rint((np.clip(db, -db_range, 0) + db_range) / db_range * 255).astype(int)


def reference_seed_slice(samples: np.ndarray, k: int) -> np.ndarray:
    """Slice ``k`` of the seed recipe, computed independently of deepcrate.

    float64 numpy STFT: periodic Hann, 512 points, one column per 882 samples,
    power relative to a full-scale sine, 120 dB, bins 256..1 (highest first).
    """
    window = scipy.signal.get_window("hann", 512)
    full_scale = (window.sum() / 2) ** 2
    starts = (k * 256 + np.arange(256)) * 882
    frames = np.stack([samples[s : s + 512] for s in starts]).astype(np.float64) * window
    db = 10 * np.log10(np.maximum(np.abs(np.fft.rfft(frames, axis=1)) ** 2 / full_scale, 1e-12))
    return reference_grey(db, 120.0)[:, 1:][:, ::-1].T


def copy_warehouse(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def delta_table(path: Path):
    """Table folder ``path`` as delta-rs reads its current Delta version: an independent reader."""
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table()


def delta_frame(spark, path: Path):
    """The files of the table's current Delta version (delta-rs's list), read by Spark."""
    from deltalake import DeltaTable

    return spark.read.parquet(*("file:" + uri for uri in DeltaTable(str(path)).file_uris()))


def published_folder(warehouse: Path, name: str) -> Path:
    """Where the current run keeps folder ``name`` (``index``, ``models/<version>``)."""
    import json

    runs = sorted((warehouse / "_runs").glob("[0-9]*.json"))
    return warehouse / json.loads(runs[-1].read_text())["folders"][name]


def table_metadata(warehouse: Path, name: str) -> dict:
    """The ``_deepcrate.json`` of table ``name`` as the current run published it."""
    import json

    runs = sorted((warehouse / "_runs").glob("[0-9]*.json"))
    entry = json.loads(runs[-1].read_text())["tables"][name]
    return json.loads((warehouse / name / entry["folder"] / "_deepcrate.json").read_text())


def file_backed(array: np.ndarray) -> bool:
    """Whether ``array``'s memory is a mapped file's (:func:`deepcrate.vectors.scratch.scratch_array`),
    not the process's own."""
    while array is not None and not isinstance(array, mmap.mmap):
        array = array.base if isinstance(array, np.ndarray) else getattr(array, "obj", None)
    return isinstance(array, mmap.mmap)
