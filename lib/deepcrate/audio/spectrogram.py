"""Spectrogram front-ends and slicing: mono samples in, uint8 slice images out.

Both presets share one time grid: column ``j`` is the window that starts at sample
``j * hop_length`` (no centring, no padding), so slice ``k`` covers columns
``[k * slice_hop_frames, k * slice_hop_frames + slice_frames)`` and starts at
``k * slice_hop_frames * hop_length / sample_rate`` seconds. By default slices lie end
to end (``slice_hop_frames == slice_frames``, the original method); a smaller hop
makes overlapping slices, more of them per song. Rows are ordered like an image:
row 0 is the highest frequency.

Levels (``SpectrogramSettings.levels``):

- ``db`` (presets ``seed`` and ``mel``): dB relative to full scale (a full-scale sine
  at a bin centre reads 0 dB), clipped to ``[-db_range, 0]`` and drawn as grey 0..255;
- ``musicnn`` (preset ``musicnn``): the front-end the pretrained musicnn networks were
  trained on (Pons & Serra, 2019): the power of the unnormalised STFT through
  Slaney-normalised mel filters (librosa's ``melspectrogram`` defaults), compressed as
  ``log10(1 + 10000 x)`` and drawn as grey 0..255 over ``[0, db_range]`` in those log10
  units, so the model undoes the drawing exactly (to within one grey step).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np

from deepcrate.config.sections import SpectrogramSection
from deepcrate.errors import ConfigError

LEVELS = ("db", "musicnn")


@dataclass(frozen=True)
class SpectrogramSettings:
    """Everything that decides what a slice's pixels mean.

    A model trained on one set of settings must only ever see slices made with the
    same settings, so the settings are stored with every slice table and model.
    ``slice_hop_frames`` (0: ``slice_frames``) only decides where slices start, not
    what their pixels mean, so a model may embed slices cut with another hop.
    """

    preset: str
    sample_rate: int
    n_fft: int
    hop_length: int
    n_rows: int
    db_range: float
    slice_frames: int
    slice_hop_frames: int = 0  # 0, or absent from settings stored before it existed: slice_frames
    levels: str = "db"  # how power becomes grey levels (module doc); absent before musicnn existed: db

    def __post_init__(self) -> None:
        if self.slice_hop_frames == 0:
            object.__setattr__(self, "slice_hop_frames", self.slice_frames)
        if self.levels not in LEVELS:
            raise ConfigError(f"spectrogram levels must be one of {LEVELS}, got {self.levels!r}")

    @property
    def slice_seconds(self) -> float:
        return self.slice_frames * self.hop_length / self.sample_rate

    @property
    def slice_hop_seconds(self) -> float:
        """Seconds between the starts of consecutive slices."""
        return self.slice_hop_frames * self.hop_length / self.sample_rate

    @property
    def min_samples(self) -> int:
        """Samples needed for one whole slice."""
        return (self.slice_frames - 1) * self.hop_length + self.n_fft

    def to_dict(self) -> dict[str, Any]:
        """The settings as stored with tables and models; the hop only where slices overlap,
        so what was written before the option existed reads (and fingerprints) the same."""
        settings = asdict(self)
        if self.slice_hop_frames == self.slice_frames:
            del settings["slice_hop_frames"]
        if self.levels == "db":
            del settings["levels"]
        return settings

    def differences(self, other: SpectrogramSettings, *, pixels_only: bool = False) -> dict[str, tuple]:
        """``{name: (mine, other's)}`` for each setting that differs; ``pixels_only``
        leaves out the hop between slices, which does not change what a slice shows."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)
                and not (pixels_only and f.name == "slice_hop_frames")}

    @classmethod
    def of(cls, section: SpectrogramSection) -> SpectrogramSettings:
        """What the ``spectrogram`` settings' preset makes of a slice."""
        front_end = section.front_end
        return cls(preset=section.preset, sample_rate=front_end.sample_rate, n_fft=front_end.n_fft,
                   hop_length=section.hop_length, n_rows=section.n_rows, db_range=float(front_end.db_range),
                   slice_frames=section.frames, slice_hop_frames=section.hop_frames,
                   levels="musicnn" if section.preset == "musicnn" else "db")


def count_slices(n_samples: int, *, settings: SpectrogramSettings) -> int:
    """How many whole slices ``n_samples`` mono samples make (the remainder is dropped)."""
    if n_samples < settings.n_fft:
        return 0
    n_frames = 1 + (n_samples - settings.n_fft) // settings.hop_length
    if n_frames < settings.slice_frames:
        return 0
    return 1 + (n_frames - settings.slice_frames) // settings.slice_hop_frames


def iter_slices(samples: np.ndarray, *, settings: SpectrogramSettings) -> Iterator[np.ndarray]:
    """Yield the uint8 ``(n_rows, slice_frames)`` image of each whole slice in turn.

    Works one slice at a time, so memory stays flat however long the song is.
    """
    import scipy.fft  # here: the readers import this module for its settings only, and scipy.fft takes ~0.3 s

    samples = np.asarray(samples, dtype=np.float32)
    window = _hann(settings.n_fft)
    ref_power = (float(window.sum()) / 2.0) ** 2
    floor = 10.0 ** (-settings.db_range / 10.0)
    mel_basis = _mel_basis(settings) if settings.preset != "seed" else None
    for k in range(count_slices(len(samples), settings=settings)):
        start = k * settings.slice_hop_frames * settings.hop_length
        stop = start + settings.min_samples
        frames = np.lib.stride_tricks.sliding_window_view(samples[start:stop], settings.n_fft)
        frames = frames[:: settings.hop_length] * window  # (slice_frames, n_fft)
        spectrum = scipy.fft.rfft(frames, axis=1)  # ~1.5x faster than numpy.fft here
        power = spectrum.real**2 + spectrum.imag**2  # (slice_frames, n_fft/2 + 1)
        if mel_basis is None:
            power = power[:, 1:]  # drop DC: the top 256 of 257 rows
        else:
            power = power @ mel_basis.T
        if settings.levels == "musicnn":
            levels = np.log10(1.0 + 10000.0 * power, dtype=np.float32)
            yield levels_to_grey(levels.T[::-1], top=settings.db_range)
            continue
        relative = np.maximum(power / ref_power, floor)
        db = 10.0 * np.log10(relative, dtype=np.float32)
        yield db_to_grey(db.T[::-1], db_range=settings.db_range)


def db_to_grey(db: np.ndarray, *, db_range: float) -> np.ndarray:
    """Map dBFS values to grey levels: ``-db_range`` (or less) -> 0, 0 dB (or more) -> 255."""
    grey = (np.clip(db, -db_range, 0.0) + db_range) * (255.0 / db_range)
    return np.rint(grey).astype(np.uint8)


def levels_to_grey(levels: np.ndarray, *, top: float) -> np.ndarray:
    """Map musicnn's log10 levels to grey: 0 -> 0, ``top`` (or more) -> 255."""
    return np.rint(np.clip(levels, 0.0, top) * (255.0 / top)).astype(np.uint8)


def grey_to_db(grey: np.ndarray, *, db_range: float) -> np.ndarray:
    """The inverse of :func:`db_to_grey`, to within one grey step."""
    return grey.astype(np.float32) * (db_range / 255.0) - db_range


def slice_from_bytes(data: bytes, *, settings: SpectrogramSettings) -> np.ndarray:
    """The uint8 image stored in a ``slices.spectrogram`` cell, as an array."""
    return np.frombuffer(data, dtype=np.uint8).reshape(settings.n_rows, settings.slice_frames)


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    # Periodic Hann (as scipy's and librosa's default), so overlapping frames sum flat.
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


@lru_cache(maxsize=8)
def _mel_basis(settings: SpectrogramSettings) -> np.ndarray:
    import librosa  # imported here: the seed preset does not need it

    # norm=None keeps triangle peaks at 1, so a full-scale sine still reads 0 dBFS;
    # musicnn's networks learnt on librosa's default, Slaney's area normalisation.
    basis = librosa.filters.mel(
        sr=settings.sample_rate,
        n_fft=settings.n_fft,
        n_mels=settings.n_rows,
        fmin=0.0,
        fmax=settings.sample_rate / 2.0,
        norm="slaney" if settings.levels == "musicnn" else None,
    )
    return basis.astype(np.float32)
