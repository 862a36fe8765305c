"""The embedded demo catalogue: synthesized songs in distinct styles, written as MP3.

Each genre has its own tempo range, drum pattern (four-on-the-floor, breakbeat,
half-time, none), bass line, timbre and harmony. Every song draws its own key,
tempo, brightness, mix and swing, and now and then borrows one element from
another genre, so genres overlap a little, as real ones do. Output is
deterministic for a given seed.
"""
from __future__ import annotations

import csv
import datetime as dt
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

logger = logging.getLogger(__name__)

SAMPLE_RATE = 44100
_PITCHES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")  # as deepcrate.audio.musical names them
STEPS = 16  # sixteenth notes per bar


@dataclass(frozen=True)
class Style:
    """What makes a genre sound like itself."""

    tempo: tuple[float, float]
    kicks: tuple[int, ...]  # steps of a bar with a kick
    snares: tuple[int, ...]
    hats: tuple[int, ...]
    bass: str  # offbeat | rolling | acid | reese | follow | drone | eighths
    lead: str  # organ | supersaw | stab | pad | keys | bells | power
    harmony: tuple[tuple[int, ...], ...]  # chords (semitones above the key), one per bar
    brightness: float  # lowpass cutoff of the harmony, Hz
    swing: float = 0.0
    noise: float = 0.0  # vinyl-like hiss
    mode: str = "minor"  # of the key: what the harmony's first chord says (rock's power chords: its bIII)


STYLES: dict[str, Style] = {
    "funky_house": Style((121, 127), (0, 4, 8, 12), (4, 12), (2, 6, 10, 14), "offbeat", "organ",
                         ((0, 4, 7, 11), (5, 9, 12, 16), (2, 5, 9, 12), (7, 11, 14, 17)), 3500, 0.08,
                         mode="major"),
    "trance": Style((134, 142), (0, 4, 8, 12), (), (2, 6, 10, 14), "rolling", "supersaw",
                    ((0, 3, 7), (8, 12, 15), (3, 7, 10), (10, 14, 17)), 9000),
    "breakbeat": Style((126, 134), (0, 10), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14), "acid", "stab",
                       ((0, 3, 7), (0, 3, 7), (5, 8, 12), (3, 7, 10)), 5000, 0.0, 0.004),
    "drum_and_bass": Style((170, 178), (0, 10), (4, 12), tuple(range(16)), "reese", "pad",
                           ((0, 3, 7, 10), (8, 12, 15), (5, 8, 12), (7, 10, 14)), 2500),
    "hip_hop": Style((84, 96), (0, 7, 10), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14), "follow", "keys",
                     ((0, 3, 7, 10), (5, 8, 12, 15), (0, 3, 7, 10), (7, 10, 14, 17)), 1800, 0.2, 0.02),
    "downtempo": Style((66, 76), (), (), (), "drone", "bells",
                       ((0, 4, 7, 14), (9, 12, 16), (5, 9, 12, 16), (7, 11, 14)), 1200, mode="major"),
    "rock_indie": Style((112, 132), (0, 8, 10), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14), "eighths", "power",
                        ((0, 7, 12), (5, 12, 17), (7, 14, 19), (3, 10, 15)), 6000),
}
GENRES = tuple(STYLES)

_SYLLABLES = ("ka", "lo", "mi", "ra", "ve", "zu", "no", "ta", "shi", "de", "ox", "la", "bri", "yo")
_WORDS = ("night", "echo", "river", "signal", "velvet", "orbit", "dust", "neon", "tide", "ember",
          "glass", "motion", "horizon", "static", "bloom", "shadow", "pulse", "drift")


def write_demo_catalogue(
    out_dir: str | os.PathLike, *, songs_per_genre: int = 20, seconds: float = 30.0,
    seed: int = 0, genres: tuple[str, ...] = GENRES, workers: int | None = None,
) -> Path:
    """Synthesize ``songs_per_genre`` songs per genre as MP3 plus ``manifest.csv``.

    Parameters
    ----------
    out_dir : path
        Created if missing; songs go to ``out_dir/<genre>/<file>.mp3``.
    songs_per_genre : int
    seconds : float
        Length of every song.
    seed : int
        Same seed, same files.
    genres : tuple of str
        A subset of :data:`GENRES`.
    workers : int, optional
        Processes used (default: every core).

    Returns
    -------
    Path
        The manifest (``path,genre,artist,title,release_date``; paths relative to ``out_dir``).
    """
    unknown = sorted(set(genres) - set(STYLES))
    if unknown:
        raise ValueError(f"unknown genres {unknown}; known: {', '.join(GENRES)}")
    out = Path(out_dir)
    jobs = []
    for g, genre in enumerate(genres):
        (out / genre).mkdir(parents=True, exist_ok=True)
        for n in range(songs_per_genre):
            rng = np.random.default_rng([seed, GENRES.index(genre), n])
            artist, title = _name(rng), _title(rng)
            days = int(rng.integers(0, 30 * 365))
            release = dt.date(1995, 1, 1) + dt.timedelta(days=days)
            relative = f"{genre}/{n + 1:03d} - {artist} - {title}.mp3"
            jobs.append((genre, n, seed, seconds, str(out / relative), relative, artist, title, release))
    workers = workers or os.cpu_count() or 1
    done = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(_render_job, jobs, chunksize=2):
            done += 1
            if done % 20 == 0 or done == len(jobs):
                logger.info("demo catalogue: %d/%d songs written", done, len(jobs))
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "genre", "artist", "title", "release_date"])
        for genre, _, _, _, _, relative, artist, title, release in jobs:
            writer.writerow([relative, genre, artist, title, release.isoformat()])
    return manifest


def _render_job(job: tuple) -> None:
    genre, n, seed, seconds, path, *_ = job
    audio = render_song(genre, rng=np.random.default_rng([seed, GENRES.index(genre), n, 1]), seconds=seconds)
    sf.write(path, audio, SAMPLE_RATE, format="MP3")


def song_tempo_and_key(genre: str, *, n: int, seed: int = 0) -> tuple[float, str]:
    """The tempo (BPM) and key ("A minor") that :func:`write_demo_catalogue` gives song ``n``
    (0-based) of ``genre``: what tempo and key estimators are measured against."""
    style, tempo, key = _plan(genre, np.random.default_rng([seed, GENRES.index(genre), n, 1]))
    return tempo, f"{_PITCHES[key % 12]} {style.mode}"


def render_song(genre: str, *, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """One mono song in ``genre`` as float32 samples at 44.1 kHz."""
    style, tempo, key = _plan(genre, rng)
    step = 60.0 / tempo / 4.0
    bars = 4
    length = round(bars * STEPS * step * SAMPLE_RATE)
    loop = np.zeros(length, dtype=np.float32)
    swing = style.swing * rng.uniform(0.5, 1.5)
    brightness = style.brightness * rng.uniform(0.6, 1.6)

    def at(bar: int, s: int) -> int:
        delay = swing * step if s % 2 else 0.0
        return round(((bar * STEPS + s) * step + delay) * SAMPLE_RATE)

    gains = rng.uniform(0.6, 1.2, size=4)
    for bar in range(bars):
        chord = style.harmony[bar % len(style.harmony)]
        for s in style.kicks:
            _add(loop, at(bar, s), _kick(rng) * gains[0])
        for s in style.snares:
            _add(loop, at(bar, s), _snare(rng) * gains[0] * 0.8)
        for s in style.hats:
            _add(loop, at(bar, s), _hat(rng) * gains[1] * 0.35)
        for s, note, dur in _bass_line(style.bass, chord, step):
            _add(loop, at(bar, s), _bass_tone(style.bass, _hz(key + note), dur) * gains[2] * 0.5)
        for s, notes, dur in _lead_line(style.lead, chord, step, rng):
            tone = sum(_lead_tone(style.lead, _hz(key + 24 + n), dur) for n in notes) / len(notes)
            _add(loop, at(bar, s), _lowpass(tone, brightness) * gains[3] * 0.45)
    repeats = int(np.ceil(seconds * SAMPLE_RATE / length))
    song = np.tile(loop, repeats)[: int(seconds * SAMPLE_RATE)]
    t = np.arange(len(song)) / SAMPLE_RATE
    # A slow swell and a little hiss, so no two slices of a song are identical.
    song *= 0.8 + 0.2 * np.sin(2 * np.pi * t / rng.uniform(8, 20) + rng.uniform(0, 6.3))
    song += (style.noise + 0.002) * rng.standard_normal(len(song))
    peak = float(np.max(np.abs(song))) or 1.0
    return (song / peak * rng.uniform(0.5, 0.9)).astype(np.float32)


def _plan(genre: str, rng: np.random.Generator) -> tuple[Style, float, int]:
    """The song's style (now and then with one element of another genre: genres overlap a
    little), tempo and key (the MIDI note of the bass root): the first draws of ``rng``."""
    style = STYLES[genre]
    if rng.random() < 0.2:
        other = STYLES[GENRES[rng.integers(len(GENRES))]]
        part = rng.choice(["drums", "bass", "lead"])
        if part == "drums":
            style = _replace(style, kicks=other.kicks, snares=other.snares, hats=other.hats)
        elif part == "bass":
            style = _replace(style, bass=other.bass)
        else:
            style = _replace(style, lead=other.lead, brightness=other.brightness)
    tempo = rng.uniform(*style.tempo)
    key = 36 + int(rng.integers(0, 12))
    return style, tempo, key


def _replace(style: Style, **changes: object) -> Style:
    return Style(**{**style.__dict__, **changes})


def _bass_line(kind: str, chord: tuple[int, ...], step: float) -> list[tuple[int, int, float]]:
    root, fifth = chord[0], chord[min(2, len(chord) - 1)]
    if kind == "offbeat":
        return [(s, root, 2 * step) for s in (2, 6, 10, 14)]
    if kind == "rolling":
        return [(s, root, step * 0.9) for s in range(16) if s % 4]
    if kind == "acid":
        return [(s, (root, root + 12, fifth, root + 3)[i % 4], step * 0.8) for i, s in enumerate((0, 3, 6, 8, 11, 14))]
    if kind == "reese":
        return [(0, root, 8 * step), (8, fifth - 12 if fifth >= 12 else fifth, 8 * step)]
    if kind == "follow":
        return [(0, root, 3 * step), (7, root, 2 * step), (10, fifth, 3 * step)]
    if kind == "drone":
        return [(0, root, 16 * step)]
    return [(s, root, step * 1.8) for s in range(0, 16, 2)]  # eighths


def _lead_line(kind: str, chord: tuple[int, ...], step: float, rng: np.random.Generator):
    if kind == "organ":
        return [(s, chord, 1.5 * step) for s in (3, 6, 11, 14)]
    if kind == "supersaw":
        return [(s, (chord[s % len(chord)],), step * 0.9) for s in range(16)]
    if kind == "stab":
        return [(s, chord, step) for s in (0, 6, 10)]
    if kind == "pad" or kind == "drone":
        return [(0, chord, 16 * step)]
    if kind == "keys":
        return [(0, chord, 6 * step), (8, chord, 6 * step)]
    if kind == "bells":
        order = rng.permutation(len(chord))
        return [(s, (chord[order[i % len(chord)]] + 12,), 6 * step) for i, s in enumerate((0, 4, 8, 12))]
    return [(s, chord[:2], step * 1.9) for s in range(0, 16, 2)]  # power chords, eighths


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def _time(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE


def _env(n: int, *, attack: float, release: float) -> np.ndarray:
    env = np.ones(n, dtype=np.float32)
    a, r = min(int(attack * SAMPLE_RATE), n), min(int(release * SAMPLE_RATE), n)
    if a:
        env[:a] = np.linspace(0, 1, a, dtype=np.float32)
    if r:
        env[n - r :] *= np.linspace(1, 0, r, dtype=np.float32)
    return env


def _saw(freq: float, t: np.ndarray) -> np.ndarray:
    return 2.0 * ((t * freq) % 1.0) - 1.0


def _bass_tone(kind: str, freq: float, dur: float) -> np.ndarray:
    t = _time(dur)
    if kind == "reese":
        wave = 0.5 * (_saw(freq, t) + _saw(freq * 1.01, t))
        wave = _lowpass(wave, 400.0)
    elif kind == "acid":
        wave = _lowpass(_saw(freq, t), 300.0 + 2500.0 * np.exp(-t[0] - 0.0))
    elif kind in ("follow", "drone"):
        wave = np.sin(2 * np.pi * freq * t)
    else:
        wave = _lowpass(np.sign(np.sin(2 * np.pi * freq * t)), 700.0)
    return wave * _env(len(t), attack=0.005, release=min(0.05, dur / 3))


def _lead_tone(kind: str, freq: float, dur: float) -> np.ndarray:
    t = _time(dur)
    if kind == "supersaw":
        wave = sum(_saw(freq * d, t) for d in (0.99, 1.0, 1.011)) / 3
    elif kind == "organ":
        wave = sum(np.sin(2 * np.pi * freq * h * t) / h for h in (1, 2, 3, 4))
    elif kind == "pad":
        wave = 0.5 * (_saw(freq, t) + _saw(freq * 1.006, t))
        return wave * _env(len(t), attack=dur / 3, release=dur / 3)
    elif kind == "keys":
        wave = np.sin(2 * np.pi * freq * t) * np.exp(-3 * t) + 0.3 * np.sin(4 * np.pi * freq * t) * np.exp(-6 * t)
    elif kind == "bells":
        wave = np.sin(2 * np.pi * freq * t + 2 * np.sin(2 * np.pi * freq * 3.5 * t) * np.exp(-2 * t)) * np.exp(-1.5 * t)
    elif kind == "power":
        wave = np.tanh(4 * _saw(freq, t))
    else:  # stab
        wave = _saw(freq, t) * np.exp(-8 * t)
    return wave * _env(len(t), attack=0.004, release=min(0.03, dur / 3))


def _kick(rng: np.random.Generator) -> np.ndarray:
    t = _time(0.3)
    sweep = 45.0 + rng.uniform(80, 140) * np.exp(-t * 30)
    return np.sin(2 * np.pi * np.cumsum(sweep) / SAMPLE_RATE) * np.exp(-t * rng.uniform(8, 14))


def _snare(rng: np.random.Generator) -> np.ndarray:
    t = _time(0.2)
    body = np.sin(2 * np.pi * rng.uniform(170, 220) * t) * np.exp(-t * 30)
    return 0.5 * body + 0.6 * rng.standard_normal(len(t)) * np.exp(-t * rng.uniform(15, 25))


def _hat(rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(int(0.06 * SAMPLE_RATE))
    return np.diff(noise, prepend=0.0) * np.exp(-np.arange(len(noise)) / (0.012 * SAMPLE_RATE))


def _lowpass(signal: np.ndarray, cutoff: float) -> np.ndarray:
    alpha = 1.0 - np.exp(-2 * np.pi * min(cutoff, SAMPLE_RATE / 2.5) / SAMPLE_RATE)
    return lfilter([alpha], [1.0, alpha - 1.0], signal)


def _add(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    end = min(len(out), start + len(sound))
    if start < end:
        out[start:end] += sound[: end - start]


def _name(rng: np.random.Generator) -> str:
    word = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
    return word.capitalize() + (" " + rng.choice(_WORDS).capitalize() if rng.random() < 0.4 else "")


def _title(rng: np.random.Generator) -> str:
    return " ".join(w.capitalize() for w in rng.choice(_WORDS, size=int(rng.integers(1, 4)), replace=False))
