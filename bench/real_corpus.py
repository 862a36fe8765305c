"""A labelled development corpus of real recordings: Debian's game soundtracks.

Downloads six Debian packages (``apt-get download``, no root needed), unpacks them
(``dpkg-deb -x``), takes the music tracks (audio files in a folder named ``music``
or ``Music.ocg``), keeps those of at least 30 s, cuts them to 120 s and writes
them as MP3 under ``OUT/audio/<soundtrack>/``, with ``OUT/audio/manifest.csv``
(``path, genre, artist, title, source``). The label (``genre``) is the soundtrack.

Leaks are removed before anything is split: a track's faster or shortened variant
(``celtic_fast.ogg`` next to ``celtic.ogg``) is dropped, and so is any track whose
MFCC statistics are near-identical (cosine >= 0.995) to a track already kept.

A development tool: cached outside the repository (default
``~/.cache/deepcrate-bench/real-corpus``), never committed, never used by the tests.
Other recordings are kept aside for an independent check, so only these packages
are used here.

    python bench/real_corpus.py [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from deepcrate.mfcc import SAMPLE_RATE, mfcc_statistics

PACKAGES = {  # package -> label
    "supertuxkart-data": "supertuxkart",
    "redeclipse-data": "redeclipse",
    "megaglest-data": "megaglest",
    "openclonk-data": "openclonk",
    "planetblupi-music-ogg": "planetblupi",
    "extremetuxracer-data": "extremetuxracer",
}
MIN_S, MAX_S = 30.0, 120.0
AUDIO = re.compile(r"\.(ogg|mp3|flac|wav)$", re.IGNORECASE)
MUSIC_FOLDER = re.compile(r"^(music|music\.ocg)$", re.IGNORECASE)
VARIANT = re.compile(r"^(?P<base>.+?)(_fast|_f)$")  # supertuxkart's sped-up copies of a track
NEAR_DUPLICATE = 0.995


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


def music_tracks(tree: Path) -> list[Path]:
    """Audio files in a music folder, without the variants of a track that is also there."""
    tracks = sorted(p for p in tree.rglob("*") if p.is_file() and AUDIO.search(p.name)
                    and any(MUSIC_FOLDER.match(part) for part in p.relative_to(tree).parts[:-1]))
    stems = {(p.parent, p.stem) for p in tracks}
    return [p for p in tracks if not ((m := VARIANT.match(p.stem)) and (p.parent, m["base"]) in stems)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path.home() / ".cache" / "deepcrate-bench" / "real-corpus"))
    args = parser.parse_args()
    out = Path(args.out)
    debs, unpacked, audio = out / "debs", out / "unpacked", out / "audio"
    debs.mkdir(parents=True, exist_ok=True)
    rows, features, skipped = [], [], Counter()
    for package, label in PACKAGES.items():
        tree = unpack(download(package, debs), unpacked)
        for source in music_tracks(tree):
            info = sf.info(str(source))
            if info.duration < MIN_S:
                skipped[f"{label}: shorter than {MIN_S:.0f} s"] += 1
                continue
            samples, rate = sf.read(str(source), dtype="float32", frames=int(MAX_S * info.samplerate), always_2d=True)
            mono = samples.mean(axis=1)
            stats = mfcc_statistics(soxr.resample(mono, rate, SAMPLE_RATE), sample_rate=SAMPLE_RATE)
            unit = stats / np.linalg.norm(stats)
            twin = next((r for r, f in zip(rows, features) if float(unit @ f) >= NEAR_DUPLICATE), None)
            if twin is not None:
                skipped[f"{label}: near-duplicate of {twin['path']}"] += 1
                continue
            target = audio / label / f"{source.stem}.mp3"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(target), samples, rate, format="MP3")
            rows.append({"path": f"{label}/{target.name}", "genre": label, "artist": label, "title": source.stem,
                         "source": f"{package}:/{source.relative_to(tree)}", "seconds": round(len(mono) / rate, 1)})
            features.append(unit)
        print(f"{label}: {sum(r['genre'] == label for r in rows)} tracks", flush=True)
    with open(audio / "manifest.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["path", "genre", "artist", "title", "source"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    counts = Counter(r["genre"] for r in rows)
    summary = {"tracks": len(rows), "labels": dict(sorted(counts.items())), "skipped": dict(skipped),
               "minutes": round(sum(r["seconds"] for r in rows) / 60, 1)}
    (out / "corpus.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"manifest: {audio / 'manifest.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
