"""Tempo and key of a song, from the samples ingest already decoded; and what a DJ can mix.

Both look at the song's middle minute. Tempo comes from the STFT the MFCC baselines use
(2048 points, hop 512, at ingest's 22,050 Hz: computed once for both): of librosa's onset
strength, the tempo between 50 and 220 BPM that both its autocorrelation and its spectrum
favour (their product, as Peeters (2007): the autocorrelation alone also peaks at two
beats, which halved drum and bass and fast reels, and at bar-long patterns, which put
breakbeats at two thirds; the spectrum alone peaks at half a beat), weighed by a
log-normal prior around 120 BPM (as librosa's own estimator); its confidence is the
autocorrelation at the beat or at two beats, whichever is stronger (0: no periodicity,
1: a metronome). Key, from its own 4096-point STFT:
the mean chroma correlated with the Krumhansl-Kessler profiles of the 24 major and minor
keys; the confidence is the best correlation. Either is null, with the reason, when the
evidence is too weak (silence, noise, no beat, no tonal centre): a wrong key is worse for
a DJ than none.

Camelot codes put the keys on a wheel where neighbours mix well: the same number (the
relative major/minor), or one step round the wheel in the same letter.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from deepcrate.audio.mfcc import Spectrum, song_spectrum

logger = logging.getLogger(__name__)

PITCHES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")
MUSICAL_FACTS_VERSION = 2  # recorded with songs: a new estimator re-decodes the catalogue once
KEY_CHOICES = ("compatible", "same", "any")
# Krumhansl & Kessler (1982): how well each pitch class fits a major or minor key on C
_PROFILES = {"major": np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
             "minor": np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])}
MIN_TEMPO_CONFIDENCE = 0.2  # measured: the demo's songs 0.69-0.96, a bowed melody alone 0.31-0.66, white noise 0.02-0.06
MIN_KEY_CONFIDENCE = 0.4  # measured: synthesized harmony 0.45-0.85, white noise 0.26
# Between these and the minimums an estimate is kept but shown as weak. Measured on the notated set
# (bench/musical.py): keys under 0.6 were exact for 5 of 9 files, over 0.7 for 101 of 115; tempi under
# 0.5 are melodies alone (a bowed one: 0.31-0.66) or sparse onsets, where the beat is barely marked.
WEAK_TEMPO_CONFIDENCE = 0.5
WEAK_KEY_CONFIDENCE = 0.6
SILENT_RMS = 1e-4
ANALYSED_SECONDS = 60
MIN_BPM, MAX_BPM = 50.0, 220.0
TEMPO_STEP_BPM = 0.25  # the candidate tempi


@dataclass(frozen=True)
class MusicalFacts:
    """A song's tempo and key (the ``songs`` columns of the same names); a null field's reason is in
    ``musical_note``."""

    tempo_bpm: float | None = None
    tempo_confidence: float | None = None
    key: str | None = None  # "A minor"
    camelot: str | None = None  # "8A"
    key_confidence: float | None = None
    musical_note: str | None = None  # why tempo or key is null


def musical_facts(samples: np.ndarray, *, sample_rate: int, spectrum: Spectrum | None = None) -> MusicalFacts:
    """Estimate the tempo and key of mono ``samples``.

    Parameters
    ----------
    samples : np.ndarray
        Mono float samples (what ingest decoded, at its target rate); the middle
        :data:`ANALYSED_SECONDS` are analysed.
    sample_rate : int
    spectrum : Spectrum, optional
        The song's spectrum, when the caller computed it already (ingest shares it with the
        MFCCs); else it is computed here from the middle minute.

    Returns
    -------
    MusicalFacts
        Null fields where the evidence is too weak, with the reason in ``musical_note``.
    """
    samples = np.asarray(samples, dtype=np.float32)
    excess = len(samples) - ANALYSED_SECONDS * sample_rate
    if excess > 0:  # the middle minute: enough for both, and the cost stays flat for long songs
        samples = samples[excess // 2:excess // 2 + ANALYSED_SECONDS * sample_rate]
    if len(samples) < sample_rate * 4:
        return MusicalFacts(musical_note="too short for tempo and key (under 4 s)")
    if float(np.sqrt(np.mean(samples ** 2))) < SILENT_RMS:
        return MusicalFacts(musical_note="silent: no tempo or key")
    if spectrum is None:
        spectrum = song_spectrum(samples, sample_rate=sample_rate)
    else:  # the same middle minute, in frames
        frames = ANALYSED_SECONDS * sample_rate // spectrum.hop
        start = max(spectrum.power.shape[1] - frames, 0) // 2
        spectrum = replace(spectrum, power=spectrum.power[:, start:start + frames],
                           mel_db=spectrum.mel_db[:, start:start + frames])
    notes = []
    tempo, tempo_confidence = _tempo(spectrum)
    if tempo_confidence < MIN_TEMPO_CONFIDENCE:
        notes.append(f"no clear beat (periodicity {tempo_confidence:.2f})")
        tempo = tempo_confidence = None
    tonic, mode, key_confidence = _key(samples, sample_rate)
    if key_confidence < MIN_KEY_CONFIDENCE:
        notes.append(f"no clear key (best profile correlation {key_confidence:.2f})")
        return MusicalFacts(tempo_bpm=tempo, tempo_confidence=tempo_confidence, musical_note="; ".join(notes))
    return MusicalFacts(tempo_bpm=tempo, tempo_confidence=tempo_confidence, key=f"{PITCHES[tonic]} {mode}",
                        camelot=camelot(tonic, mode), key_confidence=key_confidence,
                        musical_note="; ".join(notes) or None)


def _tempo(spectrum: Spectrum) -> tuple[float, float]:
    """The tempo the onsets' autocorrelation and spectrum both favour, weighed by a log-normal prior
    around 120 BPM (one octave wide, as librosa's estimator); and how periodic the onsets are there."""
    import librosa

    envelope = librosa.onset.onset_strength(S=spectrum.mel_db, sr=spectrum.sample_rate, hop_length=spectrum.hop)
    centred = envelope - envelope.mean()
    correlation = librosa.autocorrelate(centred)
    if correlation[0] <= 0:
        return 0.0, 0.0
    correlation = correlation / correlation[0]
    frames_per_minute = 60.0 * spectrum.sample_rate / spectrum.hop
    tempi = np.arange(MIN_BPM, MAX_BPM + TEMPO_STEP_BPM / 2, TEMPO_STEP_BPM)
    tempi = tempi[frames_per_minute / tempi < len(correlation) - 1]
    if len(tempi) < 3:
        return 0.0, 0.0
    lags = np.arange(len(correlation))
    periodicity = np.clip(np.interp(frames_per_minute / tempi, lags, correlation), 0, None)
    # zero-padded: bins of ~0.08 BPM, where the minute's own resolution is 1 BPM
    size = max(1 << 15, 1 << int(np.ceil(np.log2(len(centred)))))
    magnitude = np.abs(np.fft.rfft(centred * np.hanning(len(centred)), n=size))
    pulse = np.interp(tempi / frames_per_minute * size, np.arange(len(magnitude)), magnitude)
    prior = np.exp(-0.5 * np.log2(tempi / 120.0) ** 2)
    score = periodicity * pulse * prior
    best = int(np.argmax(score))
    tempo = float(tempi[best])
    if 0 < best < len(tempi) - 1:  # the parabola's vertex, between candidates
        left, centre, right = score[best - 1:best + 2]
        bend = left - 2 * centre + right
        tempo += TEMPO_STEP_BPM * (0.5 * (left - right) / bend if bend < 0 else 0.0)
    # A beat may be marked by onsets every other beat only (a backbeat, a melody of half notes)
    beat = frames_per_minute / tempo
    confidence = max(max(correlation[int(np.floor(k * beat))], correlation[int(np.ceil(k * beat))])
                     for k in (1, 2) if k * beat < len(correlation) - 1)
    return round(float(tempo), 1), round(float(max(confidence, 0.0)), 3)


def _key(samples: np.ndarray, sample_rate: int) -> tuple[int, str, float]:
    """Its own STFT, twice as long as the shared one: semitones apart at the bass end need the
    finer bins (with the shared 2048 points, exact keys fell from 71 % to 54 % on the demo)."""
    import librosa

    chroma = librosa.feature.chroma_stft(y=samples, sr=sample_rate, n_fft=4096, hop_length=2048, tuning=0.0)
    profile = chroma.mean(axis=1)
    if not np.isfinite(profile).all() or profile.std() == 0:
        return 0, "major", 0.0
    best = max((float(np.corrcoef(profile, np.roll(_PROFILES[mode], tonic))[0, 1]), tonic, mode)
                for mode in MODES for tonic in range(12))
    return best[1], best[2], round(best[0], 3)


def weak_tempo(confidence: float | None) -> bool:
    """Whether a tempo of this confidence is shown as weak (a null or NaN confidence is not)."""
    return isinstance(confidence, float) and confidence < WEAK_TEMPO_CONFIDENCE


def weak_key(confidence: float | None) -> bool:
    """Whether a key of this confidence is shown as weak (a null or NaN confidence is not)."""
    return isinstance(confidence, float) and confidence < WEAK_KEY_CONFIDENCE


# -- keys and tempi a DJ can mix -----------------------------------------------------------
def camelot(tonic: int, mode: str) -> str:
    """The Camelot code of a key: C major 8B, A minor 8A, G major 9B, ..."""
    major = tonic if mode == "major" else (tonic + 3) % 12  # a minor key shares its relative major's number
    return f"{(7 * major + 7) % 12 + 1}{'B' if mode == 'major' else 'A'}"


def compatible_camelot(code: str, *, rule: str = "compatible") -> set[str]:
    """The Camelot codes that mix with ``code``: ``same`` key only, or ``compatible`` (the same
    number in either letter, or one step round the wheel in the same letter)."""
    number, letter = int(code[:-1]), code[-1]
    if rule == "same":
        return {code}
    other = "A" if letter == "B" else "B"
    return {code, f"{number}{other}", f"{number % 12 + 1}{letter}", f"{(number - 2) % 12 + 1}{letter}"}


def close_key(found: str, truth: str) -> bool:
    """Whether key ``found`` ("A minor") is ``truth`` or a key estimators commonly mistake it for
    (as MIREX counts them): its relative, its dominant or subdominant, or its parallel key."""
    (tonic, mode), (true_tonic, true_mode) = found.split(), truth.split()
    a, b = PITCHES.index(tonic), PITCHES.index(true_tonic)
    if mode == true_mode:
        return (a - b) % 12 in (0, 5, 7)
    relative = (b + 3) % 12 if true_mode == "minor" else (b - 3) % 12
    return a in (b, relative)


def tempo_mixes(tempo: float, reference: float, *, percent: float) -> bool:
    """Whether ``tempo`` is within ``percent`` % of ``reference``, or of its double or half."""
    return any(abs(tempo * factor - reference) <= reference * percent / 100 for factor in (1.0, 2.0, 0.5))
