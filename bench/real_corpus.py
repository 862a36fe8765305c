"""A labelled development corpus of real recordings: Debian's game soundtracks.

Downloads the Debian packages of :data:`SOURCES` (``apt-get download``, no root
needed), unpacks them (``dpkg-deb -x``; 0 A.D.'s music sits inside a zip in its
package), takes each soundtrack's music tracks, keeps those of at least 30 s, cuts
them to 120 s and writes them under ``OUT/audio/<soundtrack>/``, with
``OUT/audio/manifest.csv`` (``path, genre, artist, title, source``). The label
(``genre``) is the soundtrack; one composer's several games share one label.

Every track is decoded the same way whatever its source format (Ogg or WAV, 44.1 or
48 kHz, mono or stereo): mixed to mono, resampled to 44.1 kHz and written as a
44.1 kHz mono MP3, so a label cannot be told from its files' format.

Leaks are removed before anything is split: named variants of a track that is also
kept (a sped-up, raw, quieter or second copy, listed per source in :data:`SOURCES`)
are dropped, and so is any track whose first minute is the same recording as a track
already kept: the cosine of the frame-to-frame changes of their log-mel spectrograms
(each band normalised), frame for frame, >= 0.8. The same recording louder, quieter or
re-encoded scores ~1 (warmux's Apnee2 0.994), unrelated music ~0 (at most 0.25 seen).
MFCC statistics, used for this before, also matched unrelated tracks of similar
loudness and brightness; spectrogram levels rather than their changes matched tracks
that merely share a fade-in. Labels with fewer than :data:`MIN_TRACKS` usable
tracks are left out. ``OUT/corpus.json`` reports the tracks kept per label and
everything skipped, with the reason.

A development tool: cached outside the repository (default
``~/.cache/deepcrate-bench/real-corpus``), never committed, never used by the tests.
Other recordings are kept aside for an independent check, so only these packages
are used here.

    python bench/real_corpus.py [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import soxr

MIN_S, MAX_S = 30.0, 120.0
MIN_TRACKS = 8
RATE = 44100
FORMAT = "mono-44100-mp3-v1"  # how the tracks under audio/ were written; another value rebuilds them
SAME_RECORDING = 0.8
FINGERPRINT_RATE, FINGERPRINT_HOP, FINGERPRINT_S = 11025, 1024, 60.0
MUSIC_FOLDER = r"/(music|Music\.ocg)/"


@dataclass(frozen=True)
class Source:
    """Where one package's tracks of a label are: a path pattern (searched in the path
    inside the package, or inside ``archive`` when the music is zipped) and the tracks
    left out on purpose (a pattern on the path) with the reason."""

    package: str
    label: str
    music: str
    archive: str = ""
    leave_out: str = ""
    why: str = ""


KENTACHO = "one composer (Kenta Cho) for all nine games: one label"
SOURCES = [
    # the six packages of the first corpus
    Source("supertuxkart-data", "supertuxkart", MUSIC_FOLDER, leave_out=r"_(fast|f)\.ogg$",
           why="a sped-up copy of a track that is also kept"),
    Source("redeclipse-data", "redeclipse", MUSIC_FOLDER),
    Source("megaglest-data", "megaglest", MUSIC_FOLDER),
    Source("openclonk-data", "openclonk", MUSIC_FOLDER),
    Source("planetblupi-music-ogg", "planetblupi", MUSIC_FOLDER),
    Source("extremetuxracer-data", "extremetuxracer", MUSIC_FOLDER),
    # issue 22's packages
    Source("0ad-data", "0ad", r"^audio/music/", archive=r"mods/public/public\.zip$"),
    Source("berusky2-data", "berusky2", r"/berusky2/music/"),
    # Two composers: the original game's numbered tracks and the later named ones; split in two labels.
    Source("colobot-common-sounds", "colobot", r"/colobot/music/music\d+\.ogg$"),
    Source("colobot-common-sounds", "colobot-named", r"/colobot/music/[A-Z][^/]*\.ogg$"),
    Source("blobwars-data", "blobwars", r"/blobwars/music/[^/.]+$"),  # Ogg without an extension
    Source("unknown-horizons", "unknownhorizons", r"/content/audio/music/", leave_out=r"Peer Gynt",
           why="Grieg's orchestral recording, not the soundtrack's composers"),
    Source("ardentryst", "ardentryst", r"/ardentryst/Music/",
           leave_out=r"/(castle2|theme1_raw|Sempridge2|World_Map2|battle2)\.ogg$",
           why="a second version of a track that is also kept"),
    Source("davegnukem-data", "davegnukem", r"/davegnukem/music/"),
    Source("warmux-data", "warmux", r"/warmux/music/", leave_out=r"Apnee2\.ogg$",
           why="a quieter copy of Apnee, which is kept"),
    Source("marsshooter-data", "marsshooter", r"/marsshooter/audio/(music/[^/]+|menu\.ogg|tutorial\.ogg)$"),
    Source("pushover-data", "pushover", r"/pushover/themes/"),
    Source("enigma-data", "enigma", r"/enigma/music/"),
    Source("trackballs-data", "trackballs", r"/trackballs/music/"),
    Source("wizznic-data", "wizznic", r"/wizznic/(packs/[^/]+/music/[^/]+|data/menu-music\.ogg)$"),
    Source("amoebax-data", "amoebax", r"/amoebax/music/"),
    Source("adonthell-data", "adonthell", r"/wastesedge/audio/"),
    *(Source(f"{game}-data", "kentacho", rf"/{game}/sounds/(musics/)?[^/]+\.ogg$", why=KENTACHO)
      for game in ("noiz2sa", "tumiki-fighters", "parsec47", "torus-trooper", "mu-cade", "gunroar", "titanion",
                   "rrootage", "a7xpg")),
]
AUDIO_SUFFIXES = {".ogg", ".mp3", ".flac", ".wav", ""}  # "": blobwars' Ogg files have no extension


def download(package: str, debs: Path) -> Path:
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        print(f"apt-get download {package}", flush=True)
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1]


def unpack(deb: Path, root: Path) -> Path:
    target = root / deb.stem
    if not (target / ".done").exists():
        print(f"dpkg-deb -x {deb.name}", flush=True)
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
        (target / ".done").touch()
    return target


def tracks(source: Source, tree: Path) -> Iterator[tuple[str, str, bytes]]:
    """``(name inside the package, stem, file bytes)`` of each candidate track, sorted by name."""
    if source.archive:
        for archive in sorted(p for p in tree.rglob("*.zip") if re.search(source.archive, p.as_posix())):
            with zipfile.ZipFile(archive) as zipped:
                for member in sorted(zipped.namelist()):
                    if re.search(source.music, member) and Path(member).suffix.lower() in AUDIO_SUFFIXES - {""}:
                        yield f"/{archive.relative_to(tree)}!{member}", Path(member).stem, zipped.read(member)
        return
    for path in sorted(tree.rglob("*")):
        name = "/" + path.relative_to(tree).as_posix()
        if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES and re.search(source.music, name):
            yield name, path.stem, path.read_bytes()


def decode(data: bytes) -> np.ndarray | None:
    """The first 120 s as mono float32 at 44.1 kHz, or None when it is not audio or shorter than 30 s."""
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    if info.duration < MIN_S:
        return np.zeros(0, np.float32)
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", frames=int(MAX_S * info.samplerate), always_2d=True)
    mono = samples.mean(axis=1)
    return soxr.resample(mono, rate, RATE).astype(np.float32) if rate != RATE else mono


def fingerprint(mono: np.ndarray) -> np.ndarray:
    """The frame-to-frame changes of the first minute's log-mel spectrogram (40 bands, ~10 frames/s),
    each band centred and scaled over time, flattened to a unit vector: gain and equalisation drop out."""
    head = soxr.resample(mono[: int(FINGERPRINT_S * RATE)], RATE, FINGERPRINT_RATE)
    frames = int(FINGERPRINT_S * FINGERPRINT_RATE) // FINGERPRINT_HOP
    mel = librosa.feature.melspectrogram(y=head, sr=FINGERPRINT_RATE, n_fft=2048, hop_length=FINGERPRINT_HOP,
                                         n_mels=40)[:, :frames]
    bands = np.diff(np.log(mel + 1e-10), axis=1)
    bands = (bands - bands.mean(axis=1, keepdims=True)) / (bands.std(axis=1, keepdims=True) + 1e-6)
    vector = np.zeros((40, frames - 1), np.float32)
    vector[:, : bands.shape[1]] = bands
    return (vector / (np.linalg.norm(vector) + 1e-9)).ravel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path.home() / ".cache" / "deepcrate-bench" / "real-corpus"))
    args = parser.parse_args()
    out = Path(args.out)
    debs, unpacked, audio = out / "debs", out / "unpacked", out / "audio"
    debs.mkdir(parents=True, exist_ok=True)
    marker = audio / ".format"
    if audio.exists() and (not marker.exists() or marker.read_text() != FORMAT):
        print(f"{audio}: written another way before; rebuilding it", flush=True)
        shutil.rmtree(audio)
    audio.mkdir(parents=True, exist_ok=True)
    marker.write_text(FORMAT)

    rows, features, skipped = [], [], Counter()
    for source in SOURCES:
        tree = unpack(download(source.package, debs), unpacked)
        game = source.package.removesuffix("-data")
        for name, stem, data in tracks(source, tree):
            if source.leave_out and re.search(source.leave_out, name):
                skipped[f"{source.label}: {source.why}"] += 1
                continue
            mono = decode(data)
            if mono is None:
                continue  # not audio (blobwars' .tags files)
            if not len(mono):
                skipped[f"{source.label}: shorter than {MIN_S:.0f} s"] += 1
                continue
            unit = fingerprint(mono)
            twin = next((r for r, f in zip(rows, features) if float(unit @ f) >= SAME_RECORDING), None)
            if twin is not None:
                skipped[f"{source.label}: the same recording as {twin['path']}"] += 1
                continue
            # a label spanning several packages names the game in the file, so names stay unique
            file_name = f"{game}-{stem}.mp3" if source.label == "kentacho" else f"{stem}.mp3"
            target = audio / source.label / file_name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(target), mono, RATE, format="MP3")
            rows.append({"path": f"{source.label}/{file_name}", "genre": source.label, "artist": source.label,
                         "title": stem, "source": f"{source.package}:{name}", "seconds": round(len(mono) / RATE, 1)})
            features.append(unit)
        print(f"{source.label} ({source.package}): {sum(r['genre'] == source.label for r in rows)} tracks", flush=True)

    counts = Counter(r["genre"] for r in rows)
    too_few = {label: n for label, n in counts.items() if n < MIN_TRACKS}
    for label in too_few:
        shutil.rmtree(audio / label)
    rows = [r for r in rows if r["genre"] not in too_few]
    kept_files = {audio / r["path"] for r in rows}
    for stale in sorted(audio.glob("*/*.mp3")):  # written by an earlier run with other rules
        if stale not in kept_files:
            print(f"removing {stale.relative_to(audio)}: no longer in the corpus", flush=True)
            stale.unlink()
    with open(audio / "manifest.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["path", "genre", "artist", "title", "source"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    kept = Counter(r["genre"] for r in rows)
    summary = {"tracks": len(rows), "labels": dict(sorted(kept.items())), "format": FORMAT,
               f"left out (fewer than {MIN_TRACKS} tracks)": dict(sorted(too_few.items())),
               "skipped": dict(skipped), "minutes": round(sum(r["seconds"] for r in rows) / 60, 1)}
    (out / "corpus.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"manifest: {audio / 'manifest.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
