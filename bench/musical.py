"""Tempo and key accuracy on the demo catalogue, which knows the tempo and key it synthesized.

Writes the demo catalogue (7 genres x N songs), decodes each MP3 as ingest does (mono,
22,050 Hz, one STFT shared with the MFCCs), estimates tempo and key with
:func:`deepcrate.musical.musical_facts` and compares with
:func:`deepcrate.demo.song_tempo_and_key`:

- tempo: within 4 % of the truth; and within 4 % allowing double or half (what a DJ's
  pitch fader can match);
- key: exact; and "close" (the relative, dominant/subdominant or parallel key), as
  key-detection evaluations (MIREX) count them.

    python bench/musical.py [--songs-per-genre 10] [--seconds 30]

Prints the figures per genre and overall, with the estimation time per song; writes
bench/results/musical.json.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from deepcrate.audio import DecodeLimits, decode_audio
from deepcrate.config import resolve_config
from deepcrate.demo import GENRES, song_tempo_and_key, write_demo_catalogue
from deepcrate.mfcc import SAMPLE_RATE as MFCC_RATE
from deepcrate.mfcc import song_spectrum
from deepcrate.musical import close_key, musical_facts, tempo_mixes

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs-per-genre", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    config = resolve_config()
    rate = MFCC_RATE  # ingest's: the analyses share the MFCCs' spectrum
    limits = DecodeLimits.from_config(config)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_demo_catalogue(folder, songs_per_genre=args.songs_per_genre, seconds=args.seconds, seed=0)
        for genre in GENRES:
            for n, path in enumerate(sorted((Path(folder) / genre).glob("*.mp3"))):
                audio = decode_audio(path.read_bytes(), name=path.name, target_rate=rate, limits=limits)
                spectrum = song_spectrum(audio.samples, sample_rate=rate)  # ingest computes it for the MFCCs
                started = time.perf_counter()
                facts = musical_facts(audio.samples, sample_rate=rate, spectrum=spectrum)
                seconds = time.perf_counter() - started
                bpm, key = song_tempo_and_key(genre, n=n, seed=0)
                rows.append({"genre": genre, "song": path.name, "true_bpm": round(bpm, 2), "true_key": key,
                             "bpm": facts.tempo_bpm, "key": facts.key, "note": facts.musical_note,
                             "tempo_exact": facts.tempo_bpm is not None and abs(facts.tempo_bpm - bpm) <= 0.04 * bpm,
                             "tempo_octave": facts.tempo_bpm is not None and tempo_mixes(facts.tempo_bpm, bpm, percent=4),
                             "key_exact": facts.key == key,
                             "key_close": facts.key is not None and close_key(facts.key, key),
                             "seconds": seconds})
    groups = defaultdict(list)
    for row in rows:
        groups[row["genre"]].append(row)
    groups["all"] = rows
    summary = {}
    print(f"{'genre':<14} {'songs':>5} {'tempo 4%':>9} {'±octave':>8} {'key exact':>10} {'close':>6}")
    for genre, group in groups.items():
        share = {m: sum(r[m] for r in group) / len(group)
                 for m in ("tempo_exact", "tempo_octave", "key_exact", "key_close")}
        summary[genre] = {"songs": len(group), **{m: round(v, 3) for m, v in share.items()}}
        print(f"{genre:<14} {len(group):>5} {share['tempo_exact']:>9.2f} {share['tempo_octave']:>8.2f} "
              f"{share['key_exact']:>10.2f} {share['key_close']:>6.2f}")
    per_song = sum(r["seconds"] for r in rows) / len(rows)
    print(f"estimation: {per_song * 1000:.0f} ms per {args.seconds:.0f} s song on one core "
          f"({args.seconds / per_song:.0f}x realtime)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "musical.json"
    out.write_text(json.dumps({"songs_per_genre": args.songs_per_genre, "seconds": args.seconds,
                               "sample_rate": rate, "ms_per_song": round(per_song * 1000, 1),
                               "summary": summary, "songs": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
