"""The classic baselines' features: a whole song's MFCCs, summarised.

20 MFCCs per frame (librosa's defaults: 2048-point FFT, hop 512, 128 mel bands, at
22,050 Hz), summarised two ways from one decoding:

- statistics: the MFCCs and their deltas, mean and standard deviation over the song
  (80 numbers). Before cosine similarity each dimension is standardised over the
  catalogue, otherwise the loudness coefficient (MFCC 0) would decide alone;
- the timbre Gaussian: the MFCCs' mean and full covariance over the song's frames
  (20 + 400 numbers), compared by :mod:`deepcrate.audio.timbre`.
"""
from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np

from deepcrate.audio.decode import decode_audio
from deepcrate.config.sections import DecodeLimits

SAMPLE_RATE = 22050
N_MFCC = 20
DIMENSIONS = 4 * N_MFCC
GAUSSIAN_DIMENSIONS = N_MFCC + N_MFCC * N_MFCC


N_FFT, HOP = 2048, 512  # librosa's defaults


@dataclass(frozen=True)
class Spectrum:
    """One STFT of a song, shared by the analyses that need one (MFCCs, tempo, key)."""

    power: np.ndarray  # |STFT|^2, (1 + N_FFT / 2, frames)
    mel_db: np.ndarray  # 128 mel bands, dB: what librosa's MFCC and onset strength start from
    sample_rate: int
    hop: int = HOP


def song_spectrum(samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> Spectrum:
    """The power and mel spectrograms librosa's ``mfcc(y=...)`` would compute, kept for reuse."""
    power = np.abs(librosa.stft(np.asarray(samples, dtype=np.float32), n_fft=N_FFT, hop_length=HOP)) ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=sample_rate)
    return Spectrum(power=power, mel_db=librosa.power_to_db(mel), sample_rate=sample_rate)


def mfcc_frames(samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """20 MFCCs per frame, shape (20, frames)."""
    return frames_of_spectrum(song_spectrum(samples, sample_rate=sample_rate))


def frames_of_spectrum(spectrum: Spectrum) -> np.ndarray:
    """:func:`mfcc_frames` from a :class:`Spectrum` already computed."""
    return librosa.feature.mfcc(S=spectrum.mel_db, n_mfcc=N_MFCC)


def mfcc_statistics(samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mean and standard deviation over time of 20 MFCCs and their deltas.

    Returns
    -------
    ndarray, shape (80,), float32
        ``[mean(mfcc), mean(delta), std(mfcc), std(delta)]``, 20 values each.
    """
    return statistics_of_frames(mfcc_frames(samples, sample_rate=sample_rate))


def statistics_of_frames(mfcc: np.ndarray) -> np.ndarray:
    """:func:`mfcc_statistics` of MFCC frames, shape (20, frames)."""
    delta = librosa.feature.delta(mfcc, mode="nearest") if mfcc.shape[1] > 1 else np.zeros_like(mfcc)
    frames = np.concatenate([mfcc, delta])
    return np.concatenate([frames.mean(axis=1), frames.std(axis=1)]).astype(np.float32)


def gaussian_of_frames(mfcc: np.ndarray) -> np.ndarray:
    """The mean and covariance (unbiased; zero for a single frame) of MFCC frames, shape (20, frames).

    Returns
    -------
    ndarray, shape (420,), float64
        The 20 means, then the 20 x 20 covariance matrix row by row.
    """
    frames = np.asarray(mfcc, dtype=np.float64)
    mean = frames.mean(axis=1)
    centred = frames - mean[:, None]
    covariance = centred @ centred.T / max(frames.shape[1] - 1, 1)
    return np.concatenate([mean, covariance.ravel()])


def song_mfcc_features(content: bytes, *, name: str, limits: DecodeLimits) -> tuple[np.ndarray, np.ndarray]:
    """The statistics (80,) and the timbre Gaussian (420,) of an audio file held in memory,
    decoded as ingest does."""
    audio = decode_audio(content, name=name, target_rate=SAMPLE_RATE, limits=limits)
    frames = mfcc_frames(audio.samples)
    return statistics_of_frames(frames), gaussian_of_frames(frames)

