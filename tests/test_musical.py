"""Tempo and key estimates on synthesized songs with clear beats and chords, and on tunes rendered
from their notation; Camelot codes against the published wheel; bad input gives nulls with a reason."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepcrate.audio.musical import PITCHES, camelot, close_key, compatible_camelot, musical_facts, tempo_mixes

pytestmark = pytest.mark.unit
RATE = 22050
# The Camelot wheel as DJ software prints it (Mixed In Key), written out by hand
WHEEL = {"C major": "8B", "G major": "9B", "D major": "10B", "A major": "11B", "E major": "12B",
         "B major": "1B", "F# major": "2B", "C# major": "3B", "Ab major": "4B", "Eb major": "5B",
         "Bb major": "6B", "F major": "7B", "A minor": "8A", "E minor": "9A", "B minor": "10A",
         "F# minor": "11A", "C# minor": "12A", "Ab minor": "1A", "Eb minor": "2A", "Bb minor": "3A",
         "F minor": "4A", "C minor": "5A", "G minor": "6A", "D minor": "7A"}


def _tone(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return sum(np.sin(2 * np.pi * hz * h * t) / h for h in (1, 2, 3)) * np.exp(-t / (seconds * 2))


def _song(bpm: float, tonic: int, mode: str, *, seconds: float = 30.0, seed: int = 0) -> np.ndarray:
    """A kick on every beat and the chords i-iv-V-i (minor) or I-IV-V-I (major), a bar each."""
    rng = np.random.default_rng(seed)
    song = np.zeros(int(seconds * RATE))
    beat = 60.0 / bpm
    kick = np.sin(2 * np.pi * 60 * np.arange(int(0.12 * RATE)) / RATE) * np.exp(-np.arange(int(0.12 * RATE)) / 600)
    for start in np.arange(0, seconds - 0.2, beat):
        at = int(start * RATE)
        song[at:at + len(kick)] += kick
    third = 3 if mode == "minor" else 4
    chords = [(0, third, 7), (5, 5 + third, 12), (7, 11, 14), (0, third, 7)]
    bar = 4 * beat
    for n, start in enumerate(np.arange(0, seconds - bar, bar)):
        at = int(start * RATE)
        for semitone in chords[n % 4]:
            tone = _tone(220 * 2 ** ((tonic - 9 + semitone) / 12), bar)  # from A3 = 220 Hz
            song[at:at + len(tone)] += 0.3 * tone
    song += 0.01 * rng.standard_normal(len(song))
    return (song / np.abs(song).max() * 0.8).astype(np.float32)


def test_camelot_codes_are_the_wheels():
    for name, code in WHEEL.items():
        tonic, mode = name.split()
        assert camelot(PITCHES.index(tonic), mode) == code, name
    assert compatible_camelot("8A") == {"8A", "8B", "7A", "9A"}
    assert compatible_camelot("12B") == {"12B", "12A", "11B", "1B"}
    assert compatible_camelot("1A") == {"1A", "1B", "12A", "2A"}
    assert compatible_camelot("5A", rule="same") == {"5A"}


def test_close_keys_are_the_relative_fifth_and_parallel_ones():
    assert close_key("A minor", "A minor") and close_key("C major", "A minor") and close_key("A major", "A minor")
    assert close_key("E minor", "A minor") and close_key("D minor", "A minor")  # dominant, subdominant
    assert close_key("A minor", "C major") and close_key("G major", "C major") and close_key("C minor", "C major")
    assert not close_key("Bb minor", "A minor") and not close_key("E major", "A minor")
    assert not close_key("Eb major", "C major") and not close_key("F# major", "C major")


def test_tempos_mix_at_the_same_double_or_half_speed():
    assert tempo_mixes(126, 128, percent=6) and tempo_mixes(64, 128, percent=6) and tempo_mixes(250, 128, percent=6)
    assert not tempo_mixes(140, 128, percent=6) and not tempo_mixes(96, 128, percent=6)


@pytest.mark.parametrize(("bpm", "key"), [(92, "A minor"), (120, "C major"), (128, "F# minor"), (140, "Eb major"),
                                          (76, "D minor"), (174, "G major")])
def test_tempo_and_key_of_clear_beats_and_chords(bpm, key):
    tonic, mode = key.split()
    facts = musical_facts(_song(bpm, PITCHES.index(tonic), mode), sample_rate=RATE)
    assert facts.tempo_bpm is not None and facts.key is not None, facts.musical_note
    assert tempo_mixes(facts.tempo_bpm, bpm, percent=4), facts
    assert facts.tempo_confidence > 0.3
    assert close_key(facts.key, key), facts
    assert facts.camelot == WHEEL[facts.key]


def test_most_keys_are_exact():
    truth = [(bpm, tonic, mode) for bpm, tonic in zip(range(80, 170, 8), range(12)) for mode in ("major", "minor")]
    exact = sum(musical_facts(_song(bpm, tonic, mode, seconds=20, seed=tonic), sample_rate=RATE).key
                == f"{PITCHES[tonic]} {mode}" for bpm, tonic, mode in truth)
    assert exact >= 0.75 * len(truth)


@pytest.mark.parametrize(("samples", "reason"), [
    (np.zeros(RATE * 20, np.float32), "silent"),
    (np.random.default_rng(0).standard_normal(RATE * 20).astype(np.float32) * 0.2, "no clear beat"),
    (np.zeros(RATE * 2, np.float32), "too short"),
])
def test_no_beat_or_key_gives_nulls_with_a_reason(samples, reason):
    facts = musical_facts(samples, sample_rate=RATE)
    assert facts.tempo_bpm is None and facts.key is None and facts.camelot is None
    assert reason in facts.musical_note


def test_a_held_chord_has_a_key():
    drone = sum(_tone(220 * 2 ** (s / 12), 20.0) for s in (0, 3, 7)).astype(np.float32) * 0.2  # A minor, held
    facts = musical_facts(drone, sample_rate=RATE)
    assert facts.key is not None and close_key(facts.key, "A minor")


TUNES = Path(__file__).resolve().parent.parent / "bench" / "notated" / "tunes.abc"
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
# X: -> (tempo of the notated beat, key), as tunes.abc's Q: and K: headers give them
NOTATED = {1: (96.0, "G major"), 2: (72.0, "A minor"), 7: (100.0, "A minor"), 10: (76.0, "D minor"),
           14: (58.0, "F minor")}


@pytest.mark.skipif(not (shutil.which("abc2midi") and shutil.which("fluidsynth") and SOUNDFONT.exists()),
                    reason="needs Debian's abcmidi, fluidsynth and timgm6mb-soundfont (make test installs them)")
def test_tunes_rendered_from_their_notation_get_the_notated_tempo_and_key(tmp_path):
    """A waltz, a jig in 6/8 (its dotted-quarter beat), slow airs: real instruments, not synthesized tones."""
    shutil.copy(TUNES, tmp_path / "tunes.abc")
    subprocess.run(["abc2midi", "tunes.abc"], cwd=tmp_path, check=True, capture_output=True)
    for number, (bpm, key) in NOTATED.items():
        wav = tmp_path / f"tune{number}.wav"
        subprocess.run(["fluidsynth", "-ni", "-g", "0.6", "-r", str(RATE), "-F", str(wav), str(SOUNDFONT),
                        str(tmp_path / f"tunes{number}.mid")], check=True, capture_output=True)
        samples, rate = sf.read(wav, dtype="float32", always_2d=True)
        facts = musical_facts(np.tile(samples.mean(axis=1), 2), sample_rate=rate)  # twice through: >= 30 s
        assert facts.tempo_bpm == pytest.approx(bpm, rel=0.04), f"tune {number}"
        assert facts.key == key, f"tune {number}"


def test_breakbeats_are_found_at_their_tempo_not_two_thirds_of_it():
    """The demo's breakbeats: a kick on 1 and the and of 3 makes the onsets repeat every bar and a
    half-beat, which the autocorrelation alone took for a beat (at two thirds of the tempo)."""
    import librosa

    from deepcrate.audio.demo import GENRES, SAMPLE_RATE, render_song, song_tempo_and_key

    for n in range(4):
        song = render_song("breakbeat", rng=np.random.default_rng([0, GENRES.index("breakbeat"), n, 1]), seconds=30.0)
        bpm, _ = song_tempo_and_key("breakbeat", n=n, seed=0)
        facts = musical_facts(librosa.resample(song, orig_sr=SAMPLE_RATE, target_sr=RATE), sample_rate=RATE)
        assert facts.tempo_bpm == pytest.approx(bpm, rel=0.04), f"breakbeat {n}: {facts}"


REELS = Path("/usr/share/doc/abcmidi/examples/demo.abc")


@pytest.mark.skipif(not (shutil.which("abc2midi") and shutil.which("fluidsynth") and SOUNDFONT.exists()
                         and REELS.exists()),
                    reason="needs Debian's abcmidi (its examples), fluidsynth and timgm6mb-soundfont")
def test_reels_notated_at_200_are_not_halved(tmp_path):
    """abcmidi's own example reels, 200 quarter notes a minute (Q:1/4=200, Q:1/8=400), running eighth
    notes: the onsets repeat as strongly every two beats, and the autocorrelation alone halved them."""
    shutil.copy(REELS, tmp_path / "demo.abc")
    subprocess.run(["abc2midi", "demo.abc"], cwd=tmp_path, check=True, capture_output=True)
    for number in (4, 5, 6):  # Candlemas Eve, Oh You New York Girls, The Friendly Visit
        wav = tmp_path / f"reel{number}.wav"
        subprocess.run(["fluidsynth", "-ni", "-g", "0.6", "-r", str(RATE), "-F", str(wav), str(SOUNDFONT),
                        str(tmp_path / f"demo{number}.mid")], check=True, capture_output=True)
        samples, rate = sf.read(wav, dtype="float32", always_2d=True)
        facts = musical_facts(np.tile(samples.mean(axis=1), 2), sample_rate=rate)
        assert facts.tempo_bpm == pytest.approx(200.0, rel=0.04), f"reel {number}: {facts}"
