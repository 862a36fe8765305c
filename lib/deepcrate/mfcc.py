"""The classic baseline: MFCC statistics of a whole song.

20 MFCCs and their deltas per frame (librosa's defaults: 2048-point FFT, hop 512,
128 mel bands, at 22,050 Hz), summarised by their mean and standard deviation over
the song: 80 numbers. Before cosine similarity each dimension is standardised over
the catalogue, otherwise the loudness coefficient (MFCC 0) would decide alone.
"""
from __future__ import annotations

import librosa
import numpy as np

from deepcrate.audio import DecodeLimits, decode_audio

SAMPLE_RATE = 22050
N_MFCC = 20
DIMENSIONS = 4 * N_MFCC


def mfcc_statistics(samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mean and standard deviation over time of 20 MFCCs and their deltas.

    Returns
    -------
    ndarray, shape (80,), float32
        ``[mean(mfcc), mean(delta), std(mfcc), std(delta)]``, 20 values each.
    """
    mfcc = librosa.feature.mfcc(y=np.asarray(samples, dtype=np.float32), sr=sample_rate, n_mfcc=N_MFCC)
    delta = librosa.feature.delta(mfcc, mode="nearest") if mfcc.shape[1] > 1 else np.zeros_like(mfcc)
    frames = np.concatenate([mfcc, delta])
    return np.concatenate([frames.mean(axis=1), frames.std(axis=1)]).astype(np.float32)


def song_mfcc_statistics(content: bytes, *, name: str, limits: DecodeLimits) -> np.ndarray:
    """:func:`mfcc_statistics` of an audio file held in memory (decoded as ingest does)."""
    audio = decode_audio(content, name=name, target_rate=SAMPLE_RATE, limits=limits)
    return mfcc_statistics(audio.samples)


def standardise(features: np.ndarray) -> np.ndarray:
    """Each column to mean 0 and standard deviation 1 (constant columns to 0)."""
    features = np.asarray(features, dtype=np.float64)
    std = features.std(axis=0)
    centred = features - features.mean(axis=0)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0).astype(np.float32)
