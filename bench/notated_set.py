"""A development set for tempo and key with notated truth: MIDI rendered to audio, plus the demo songs.

Sources (built here, never committed; the recordings of an independent check are not used):

- ``pianobooster``: the MIDI courses Debian's ``pianobooster`` ships
  (``/usr/share/doc/pianobooster/courses``): tempo only: their key signatures are absent or
  placeholders (Greensleeves' says G major);
- ``abcmidi``: the ABC tunes Debian's ``abcmidi`` ships as examples (not those that
  demonstrate its tunings or drum channel), and
- ``tunes``: ``bench/notated/tunes.abc``, tunes written for this set (melody and guitar
  chords in their key), each turned into MIDI by ``abc2midi``; the key from the tune's
  ``K:`` header when it is a plain major or minor key (a mode, explicit accidentals or a
  key change in the body: tempo only); ``tunes-melody``: the same tunes without their
  chords, the melody alone on a violin (soft onsets, no accompaniment to mark the beat);
- ``demo``: the demo catalogue's synthesized songs, whose tempo and key are known.

A MIDI file is kept only with one tempo over the part rendered. Its tempo (``set_tempo``,
quarter notes) is counted in the beats its time signature notates: dotted quarters in
6/8, 9/8, 12/8; halves in 2/2; quarters otherwise (``truth.json`` keeps the meter and the
quarter-note tempo beside it: ``meter``, ``quarter_bpm``). Each is rendered by ``fluidsynth``
with the FluidR3 General MIDI soundfont (Debian's ``fluid-soundfont-gm``) at 22,050 Hz
mono, cut to whole repeats of the piece until it lasts at least 30 s (at most 60 s).

    apt-get install fluidsynth abcmidi pianobooster fluid-soundfont-gm
    PYTHONPATH=$T python bench/notated_set.py   # T: mido's folder (bench/musical.py); writes
                                                # ~/.cache/deepcrate-bench/notated/{audio,truth.json}

A second rendering checks that what an estimator gained on the set is not the set's own
sounds: the same notes through another soundfont and demo songs of another seed (other
tempi, keys and patterns)::

    PYTHONPATH=$T python bench/notated_set.py --out ~/.cache/deepcrate-bench/notated-timgm \
        --soundfont /usr/share/sounds/sf2/TimGM6mb.sf2 --demo-seed 1
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from deepcrate.audio.musical import PITCHES

ROOT = Path(__file__).resolve().parent
OUT = Path.home() / ".cache" / "deepcrate-bench" / "notated"
PIANOBOOSTER = Path("/usr/share/doc/pianobooster/courses")
ABC_EXAMPLES = Path("/usr/share/doc/abcmidi/examples")
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
RATE = 22_050
MIN_SECONDS, MAX_SECONDS = 30.0, 60.0
PITCH = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
PLAIN_KEY = re.compile(r"^([A-G])([#b]?)(m|min|minor|maj|major)?$", re.IGNORECASE)


def key_name(header: str) -> str | None:
    """An ABC ``K:`` value as "A minor" (None: a mode, accidentals, or no key)."""
    value = header.split("%")[0].strip().replace(" ", "")
    match = PLAIN_KEY.match(value)
    if not match:
        return None
    letter, accidental, mode = match.groups()
    pitch = (PITCH[letter.upper()] + {"#": 1, "b": -1, "": 0}[accidental]) % 12
    return f"{PITCHES[pitch]} {'minor' if (mode or '').lower() in ('m', 'min', 'minor') else 'major'}"


def split_tunes(text: str) -> list[str]:
    """Each ``X:`` tune of an ABC file, with the file's header lines before the first tune."""
    parts = re.split(r"(?m)^(?=X:)", text)
    return [part for part in parts[1:] if part.strip()]


def midi_tempo(data: bytes) -> tuple[float | None, float, str, float]:
    """(the notated beat's tempo, or None for several tempi or meters; the piece's seconds; its
    meter; its tempo in quarter notes, as the file states it)."""
    import mido

    midi = mido.MidiFile(file=io.BytesIO(data))
    tempi = {message.tempo for track in midi.tracks for message in track if message.type == "set_tempo"}
    meters = {(m.numerator, m.denominator) for track in midi.tracks for m in track if m.type == "time_signature"}
    quarter = mido.tempo2bpm(min(tempi) if tempi else 500_000)
    numerator, denominator = min(meters) if meters else (4, 4)
    meter = f"{numerator}/{denominator}"
    if len(tempi) > 1 or len(meters) > 1:
        return None, midi.length, meter, quarter
    if denominator == 8 and numerator % 3 == 0:
        return quarter / 1.5, midi.length, meter, quarter
    return (quarter / 2 if denominator == 2 else quarter), midi.length, meter, quarter


def render(data: bytes, length: float, target: Path, *, soundfont: Path) -> float:
    """The MIDI ``data`` through fluidsynth, repeated to at least 30 s; returns its seconds."""
    with tempfile.TemporaryDirectory() as folder:
        midi, wav = Path(folder) / "in.mid", Path(folder) / "out.wav"
        midi.write_bytes(data)
        subprocess.run(["fluidsynth", "-ni", "-g", "0.6", "-r", str(RATE), "-F", str(wav), str(soundfont), str(midi)],
                       check=True, capture_output=True)
        samples, rate = sf.read(wav, dtype="float32", always_2d=True)
    samples = samples.mean(axis=1)
    piece = samples[:round(length * rate)]  # whole repeats keep the beat going across the seam
    repeats = max(1, int(np.ceil(MIN_SECONDS / max(length, 1e-3))))
    audio = np.tile(piece, repeats)[:int(MAX_SECONDS * rate)]
    sf.write(target, audio, rate)
    return len(audio) / rate


def abc_tunes(path: Path, source: str, work: Path) -> list[tuple[str, str, bytes, str | None]]:
    """(source, name, MIDI bytes, key) of each tune of an ABC file."""
    found = []
    for n, tune in enumerate(split_tunes(path.read_text(errors="replace"))):
        keys = re.findall(r"(?m)^K:(.*)$", tune)
        key = key_name(keys[0]) if len(keys) == 1 else None
        title = (re.findall(r"(?m)^T:(.*)$", tune) or [f"tune {n}"])[0].strip()
        if re.search(r"%%MIDI\s+(temperament|drumon)", tune) or "temperament" in title.lower():
            continue  # a demonstration of abc2midi's tunings or drum channel, not a piece
        file = work / f"{path.stem}-{n}.abc"
        file.write_text(tune)
        midi = work / f"{path.stem}-{n}.mid"
        subprocess.run(["abc2midi", str(file), "-o", str(midi)], capture_output=True, cwd=work)
        if midi.exists():
            found.append((source, f"{path.stem}-{n} {title}", midi.read_bytes(), key))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--demo-per-genre", type=int, default=4, help="demo songs per genre (7 genres)")
    parser.add_argument("--demo-seed", type=int, default=0, help="the demo catalogue's seed")
    parser.add_argument("--soundfont", type=Path, default=SOUNDFONT, help="the General MIDI soundfont")
    args = parser.parse_args()
    missing = [tool for tool in ("fluidsynth", "abc2midi") if shutil.which(tool) is None]
    if missing or not args.soundfont.exists() or not PIANOBOOSTER.exists():
        raise SystemExit("needs Debian's fluidsynth, abcmidi, pianobooster and fluid-soundfont-gm "
                         f"(missing: {', '.join(missing) or 'the soundfont or the courses'})")
    shutil.rmtree(args.out, ignore_errors=True)
    audio = args.out / "audio"
    audio.mkdir(parents=True)
    pieces = []
    for path in sorted(PIANOBOOSTER.glob("*/*.mid*")):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        pieces.append(("pianobooster", f"{path.parent.name}-{path.name.split('.')[0]}", data, None))
    with tempfile.TemporaryDirectory() as folder:
        for path in sorted(ABC_EXAMPLES.glob("*.abc")):
            pieces += abc_tunes(path, "abcmidi", Path(folder))
        tunes = ROOT / "notated" / "tunes.abc"
        pieces += abc_tunes(tunes, "tunes", Path(folder))
        melody = Path(folder) / "tunes-melody.abc"  # the same tunes: melody alone, bowed (soft onsets)
        melody.write_text(re.sub(r"(?m)^(K:.*)$", "\\1\n%%MIDI gchordoff\n%%MIDI program 40", tunes.read_text()))
        pieces += abc_tunes(melody, "tunes-melody", Path(folder))
    rows, skipped, titles = [], [], set()
    for source, name, data, key in pieces:
        if (source, name.split(" ", 1)[-1]) in titles:
            continue  # the same tune in two example files
        titles.add((source, name.split(" ", 1)[-1]))
        tempo, length, meter, quarter = midi_tempo(data)
        if tempo is None or length < 4:
            skipped.append(f"{source} {name}: {'several tempi or meters' if tempo is None else 'under 4 s'}")
            continue
        file = f"{source}-{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}.wav"
        seconds = render(data, length, audio / file, soundfont=args.soundfont)
        rows.append({"file": file, "source": source, "tempo_bpm": round(tempo, 3), "key": key, "meter": meter,
                     "quarter_bpm": round(quarter, 3),
                     "seconds": round(seconds, 1)})
    rows += demo_songs(audio, per_genre=args.demo_per_genre, seed=args.demo_seed)
    (args.out / "truth.json").write_text(json.dumps({"songs": rows, "skipped": skipped}, indent=2) + "\n")
    for source in sorted({row["source"] for row in rows}):
        group = [row for row in rows if row["source"] == source]
        print(f"{source:<13} {len(group):>3} files, {sum(r['key'] is not None for r in group):>3} with a key, "
              f"{sum(r['seconds'] for r in group) / 60:.1f} min")
    print(f"skipped {len(skipped)}: " + "; ".join(skipped))
    print(f"wrote {args.out / 'truth.json'}")
    return 0


def demo_songs(audio: Path, *, per_genre: int, seed: int) -> list[dict]:
    """The demo catalogue's songs (30 s MP3s), with the tempo and key they were synthesized at."""
    from deepcrate.audio.demo import GENRES, song_tempo_and_key, write_demo_catalogue

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_demo_catalogue(folder, songs_per_genre=per_genre, seconds=30.0, seed=seed)
        for genre in GENRES:
            for n, path in enumerate(sorted((Path(folder) / genre).glob("*.mp3"))):
                bpm, key = song_tempo_and_key(genre, n=n, seed=seed)
                file = f"demo-{genre}-{n}.mp3"
                shutil.copy(path, audio / file)
                rows.append({"file": file, "source": "demo", "tempo_bpm": round(bpm, 3), "key": key, "seconds": 30.0})
    return rows


if __name__ == "__main__":
    sys.exit(main())
