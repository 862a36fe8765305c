"""Shared fixtures: one real local Spark session, real audio files written on the fly."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepcrate.config import resolve_config
from deepcrate.session import ensure_utf8_locale

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
ensure_utf8_locale()


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2,2]")  # 2 cores; a failed task is retried once
        .appName("deepcrate-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def config():
    """The packaged defaults, with progress lines often enough to be seen in a test."""
    return resolve_config(overrides=["ingest.progress_interval_s=1"])


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
