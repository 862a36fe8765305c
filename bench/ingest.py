"""Ingest speed: decode floor, plain single-process loop, Spark with 1 and 2 cores.

Run: .venv/bin/python bench/ingest.py [--songs 40] [--seconds 120] [--preset seed] [--repeat 2]
All measured in one run on the same MP3s, each the best of --repeat tries (timings on a
shared 2-core machine vary by ~15%); prints ratios and writes bench/results/ingest-<preset>.json.
Also samples the resident memory of Spark's Python workers, for half and all of the
songs, to show that it stays flat as the catalogue grows.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
from process_cpu import ProcessCpu

from deepcrate.audio.demo import GENRES, SAMPLE_RATE, render_song
from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.config import DecodeLimits, Settings, resolve_settings
from deepcrate.stages.ingest.decoding import decode_file

RESULTS = Path(__file__).parent / "results"


def make_songs(folder: Path, *, songs: int, seconds: float) -> list[Path]:
    """Stereo 44.1 kHz MP3s like store previews, cached between runs."""
    paths = []
    for n in range(songs):
        genre = GENRES[n % len(GENRES)]
        path = folder / genre / f"{n:03d}.mp3"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        mono = render_song(genre, rng=np.random.default_rng([7, n]), seconds=seconds)
        stereo = np.stack([mono, np.roll(mono, 200) * 0.9], axis=1)
        sf.write(str(path), stereo, SAMPLE_RATE, format="MP3")
    return paths


def audio_seconds(paths: list[Path]) -> float:
    return sum(sf.info(str(p)).duration for p in paths)


def best_of(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def decode_only(paths: list[Path]) -> None:
    for path in paths:
        sf.read(path, dtype="float32")


def plain_loop(paths: list[Path], settings: SpectrogramSettings, limits: DecodeLimits) -> None:
    """What an executor does per file (:func:`deepcrate.stages.ingest.job.decode_file`), in one process:
    decode, slice, tempo and key, the MFCC baselines' features."""
    for path in paths:
        decode_file(str(path), path.read_bytes(), settings=settings, limits=limits)


class WorkerMemory:
    """Peak resident memory of any one Spark Python worker while running."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if b"pyspark.daemon" not in cmdline and b"pyspark.worker" not in cmdline:
                        continue
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)


def time_spark(folder: Path, *, cores: int, settings: Settings, warehouse: Path,
               repeat: int) -> tuple[float, float, dict[str, float]]:
    """Best wall time of an ingest (session already warm), peak worker memory, and the CPU
    seconds of one more ingest by kind of process."""
    from deepcrate.spark.session import spark_session
    from deepcrate.stages.ingest.job import ingest

    settings = replace(settings, spark=replace(settings.spark, master=f"local[{cores}]"))
    spark = spark_session(settings.spark)
    try:
        warm = folder.parent / "warm"  # start the Python workers before timing
        if not warm.exists():
            make_songs(warm, songs=2, seconds=12)
        ingest(spark, audio=str(warm), warehouse=str(warehouse / "warm"), settings=settings)
        with WorkerMemory() as memory:
            elapsed = best_of(repeat, lambda: ingest(
                spark, audio=str(folder), warehouse=str(warehouse / f"cores{cores}"), settings=settings))
        with ProcessCpu() as cpu:
            ingest(spark, audio=str(folder), warehouse=str(warehouse / f"cores{cores}-cpu"), settings=settings)
        return elapsed, memory.peak_mb, cpu.seconds
    finally:
        spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--preset", default="seed", choices=("seed", "mel"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/deepcrate-bench"))
    args = parser.parse_args()

    settings = resolve_settings(overrides=[f"spectrogram.preset={args.preset}", "ingest.progress_interval_s=60"])
    spectrogram = SpectrogramSettings.of(settings.spectrogram)
    limits = DecodeLimits(max_duration_s=600, truncated_ratio=0.9, silence_dbfs=-60)
    folder = Path(args.cache) / f"songs-{args.seconds:g}s"
    paths = make_songs(folder / "all", songs=args.songs, seconds=args.seconds)
    half = folder / "half"
    if not half.exists():
        for path in paths[: args.songs // 2]:
            (half / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, half / path.parent.name / path.name)
    total_s = audio_seconds(paths)
    print(f"{len(paths)} songs, {total_s:.0f} s of audio, preset {args.preset}, {os.cpu_count()} cores")

    decode_s = best_of(args.repeat, lambda: decode_only(paths))
    loop_s = best_of(args.repeat, lambda: plain_loop(paths, spectrogram, limits))
    with tempfile.TemporaryDirectory() as tmp:
        spark1_s, memory1, cpu1 = time_spark(folder / "all", cores=1, settings=settings, warehouse=Path(tmp),
                                             repeat=args.repeat)
        spark2_s, memory2, cpu2 = time_spark(folder / "all", cores=2, settings=settings, warehouse=Path(tmp),
                                             repeat=args.repeat)
        _, memory_half, _ = time_spark(half, cores=2, settings=settings, warehouse=Path(tmp) / "half", repeat=1)

    realtime = {
        "decode_only": total_s / decode_s,
        "plain_loop": total_s / loop_s,
        "spark_1_core": total_s / spark1_s,
        "spark_2_cores_per_core": total_s / spark2_s / 2,
    }
    ratios = {
        "spark_1_core_vs_plain_loop": loop_s / spark1_s,
        "spark_2_cores_vs_1_core": spark1_s / spark2_s,
        "spark_2_cores_vs_plain_loop": loop_s / spark2_s,
        "plain_loop_vs_decode_floor": decode_s / loop_s,
    }
    result = {
        "songs": len(paths), "audio_seconds": total_s, "preset": args.preset, "repeat": args.repeat,
        "seconds": {"decode_only": decode_s, "plain_loop": loop_s, "spark_1_core": spark1_s, "spark_2_cores": spark2_s},
        "x_realtime_per_core": realtime, "ratios": ratios,
        "cpu_seconds": {"plain_loop": loop_s, "spark_1_core": cpu1, "spark_2_cores": cpu2},
        "peak_worker_rss_mb": {"half_catalogue_2_cores": memory_half, "all_1_core": memory1, "all_2_cores": memory2},
        "goals": {"spark_1_core_vs_plain_loop": 0.8, "spark_2_cores_vs_plain_loop": 1.75},
    }
    for name, value in realtime.items():
        print(f"  {name:28s} {value:8.0f}x realtime per core")
    for name, value in ratios.items():
        print(f"  {name:28s} {value:8.2f}")
    for name, cpu in (("1 core", cpu1), ("2 cores", cpu2)):
        print(f"  CPU seconds, Spark {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
              + f" (the plain loop: {loop_s:.1f})")
    print(f"  peak Python worker RSS: {memory_half:.0f} MiB (half), {memory2:.0f} MiB (all, 2 cores)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ingest-{args.preset}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
