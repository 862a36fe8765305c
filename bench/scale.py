"""The whole rebuild at catalogue scale: 2,000 and 10,000 songs of 30 s on this machine's cores.

For each size: ``deepcrate rebuild`` from scratch in ``local[N]``, then incrementally with 5 %
new songs and ``--model`` (the model the first run trained). Per stage it reports the
seconds, songs per second, times realtime per core, the peak resident memory of the
driver (the Python process and its JVM) and of any one Spark Python worker while that
stage ran, and the files and bytes of every table afterwards; then the growth from the
smaller size to the larger (time should grow linearly, memory stay flat).

The catalogue: ``--pool`` distinct demo songs (synthesized and MP3-encoded once, cached),
each copied under several names with a distinct ID3 tag, so that every file has its own
bytes (its own ``song_id``) while synthesis and encoding, which would take longer than
the rebuild, are paid for the pool only. Copies decode to the same samples: the index's
duplicate filter keeps them out of each other's recommendations, and the evaluation's
numbers are not the product's quality (docs/quality.md is): this measures speed.

    python bench/scale.py [--songs 2000 10000] [--pool 700] [--preset seed]

``--preset seed`` (the default here) trains and embeds the original CNN on 256x256 slices;
``musicnn`` (the product's default) runs both pretrained networks on every slice, about
10x slower per slice on a CPU. Writes bench/results/scale.json; logs under
~/.cache/deepcrate-bench/scale/.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from deepcrate.audio.demo import write_demo_catalogue

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WORK = Path.home() / ".cache" / "deepcrate-bench" / "scale"
PRESETS = {
    "seed": ["spectrogram.preset=seed", "train.model=seed", "train.objective=classify", "train.max_epochs=1"],
    "musicnn": ["train.max_epochs=1"],
}
STAGE_LINE = re.compile(r"^  (\w+)\s+(ran|skipped|given)\s+([\d.]+) s\s*(.*)$")
STAGE_START = re.compile(r"deepcrate\.stages\.rebuild: rebuild: (\w+)")


def id3_tag(text: str) -> bytes:
    """An ID3v2.3 tag with one TIT3 (subtitle) frame: new bytes, the same audio."""
    payload = b"\x03" + text.encode("utf-8")
    frame = b"TIT3" + struct.pack(">I", len(payload)) + b"\x00\x00" + payload
    size = len(frame)
    return b"ID3\x03\x00\x00" + bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F]) + frame


def pool(songs: int, seconds: float) -> tuple[Path, list[dict[str, str]]]:
    """The distinct songs, synthesized once per (songs, seconds) and cached."""
    folder = WORK / f"pool-{songs}x{seconds:g}s"
    manifest = folder / "manifest.csv"
    if not manifest.exists():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.monotonic()
        write_demo_catalogue(folder, songs_per_genre=max(1, songs // 7), seconds=seconds, seed=0)
        print(f"pool of {songs} songs synthesized in {time.monotonic() - started:.0f} s", flush=True)
    with manifest.open(encoding="utf-8") as stream:
        return folder, list(csv.DictReader(stream))


def catalogue(target: Path, *, songs: int, start: int, source: Path, rows: list[dict[str, str]]) -> None:
    """Songs ``start .. songs-1`` of the catalogue under ``target`` (copy i of pool song i % pool)."""
    written = []
    for i in range(start, songs):
        row = rows[i % len(rows)]
        relative = f"{row['genre']}/{i:06d}.mp3"
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(id3_tag(f"copy {i}") + (source / row["path"]).read_bytes())
        written.append({**row, "path": relative, "title": f"{row['title']} #{i}"})
    manifest = target / "manifest.csv"
    old = list(csv.DictReader(manifest.open(encoding="utf-8"))) if start and manifest.exists() else []
    with manifest.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(written[0]))
        writer.writeheader()
        writer.writerows(old + written)


class Peaks:
    """Peak RSS per stage of the driver (its Python and JVM) and of any one Spark Python worker."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.root = psutil.Process(process.pid)
        self.stage = "start"
        self.driver: dict[str, float] = {}
        self.jvm: dict[str, float] = {}
        self.worker: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            try:
                family = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in family:
                try:
                    name, rss = " ".join(proc.cmdline()), proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                kind = (self.worker if "pyspark.daemon" in name or "pyspark.worker" in name
                        else self.jvm if "java" in name else self.driver if proc.pid == self.root.pid else None)
                if kind is not None:
                    kind[self.stage] = max(kind.get(self.stage, 0.0), rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def rebuild(audio: Path, warehouse: Path, *, overrides: list[str], cores: int, log: Path,
            model: str | None = None) -> tuple[dict[str, dict], float]:
    command = [sys.executable, "-m", "deepcrate.cli", "rebuild", "--audio", str(audio), "--manifest",
               str(audio / "manifest.csv"), "--warehouse", str(warehouse), "--set", f"spark.master=local[{cores}]",
               *[arg for o in overrides for arg in ("--set", o)], *(["--model", model] if model else [])]
    stages: dict[str, dict] = {}
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        peaks = Peaks(process)
        for line in process.stdout:
            out.write(line)
            if found := STAGE_START.search(line):
                peaks.stage = found.group(1)
            if found := STAGE_LINE.match(line.rstrip("\n")):
                stages[found.group(1)] = {"status": found.group(2), "seconds": float(found.group(3)),
                                          "detail": found.group(4)}
        process.wait()
        peaks.stop()
    if process.returncode:
        raise SystemExit(f"rebuild failed ({process.returncode}); see {log}")
    for stage, row in stages.items():
        row.update(driver_mb=round(peaks.driver.get(stage, 0.0)), jvm_mb=round(peaks.jvm.get(stage, 0.0)),
                   worker_mb=round(peaks.worker.get(stage, 0.0)))
    return stages, time.monotonic() - started


def table_files(warehouse: Path) -> dict[str, dict[str, int]]:
    from deltalake import DeltaTable

    files = {}
    for folder in sorted(p for p in warehouse.iterdir() if (p / "_delta_log").is_dir()):
        uris = DeltaTable(str(folder)).file_uris()
        paths = [u.removeprefix("file://") for u in uris]
        files[folder.name] = {"files": len(paths), "bytes": sum(os.path.getsize(p) for p in paths)}
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pool", type=int, default=700)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="seed")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    source, rows = pool(args.pool, args.seconds)
    results = {"seconds_per_song": args.seconds, "pool": len(rows), "preset": args.preset, "cores": args.cores,
               "sizes": {}}
    for songs in args.songs:
        base = WORK / f"cat-{songs}"
        shutil.rmtree(base, ignore_errors=True)
        audio, warehouse = base / "audio", base / "wh"
        catalogue(audio, songs=songs, start=0, source=source, rows=rows)
        print(f"{songs} songs: rebuild from scratch", flush=True)
        first, first_s = rebuild(audio, warehouse, overrides=PRESETS[args.preset], cores=args.cores,
                                 log=base / "first.log")
        model = max(p.name for p in (warehouse / "models").iterdir())
        added = songs + songs // 20
        catalogue(audio, songs=added, start=songs, source=source, rows=rows)
        print(f"{songs} songs: incremental rebuild with {added - songs} new songs and --model", flush=True)
        second, second_s = rebuild(audio, warehouse, overrides=PRESETS[args.preset], cores=args.cores,
                                   log=base / "incremental.log", model=model)
        for stages, n in ((first, songs), (second, added - songs)):
            for row in stages.values():
                if row["status"] == "ran" and row["seconds"] > 0:
                    row["songs_per_s"] = round(n / row["seconds"], 2)
                    row["x_realtime_per_core"] = round(n * args.seconds / row["seconds"] / args.cores, 1)
        results["sizes"][songs] = {"first": first, "first_seconds": round(first_s, 1), "incremental": second,
                                   "incremental_seconds": round(second_s, 1), "tables": table_files(warehouse)}
        print(json.dumps(results["sizes"][songs], indent=1), flush=True)
    sizes = sorted(results["sizes"])
    if len(sizes) > 1:
        small, large = results["sizes"][sizes[0]]["first"], results["sizes"][sizes[-1]]["first"]
        results["growth"] = {stage: {"songs": round(sizes[-1] / sizes[0], 2),
                                     "time": round(large[stage]["seconds"] / max(small[stage]["seconds"], 1e-9), 2),
                                     "driver_mb": round(large[stage]["driver_mb"] / max(small[stage]["driver_mb"], 1), 2),
                                     "jvm_mb": round(large[stage]["jvm_mb"] / max(small[stage]["jvm_mb"], 1), 2),
                                     "worker_mb": round(large[stage]["worker_mb"] / max(small[stage]["worker_mb"], 1), 2)}
                             for stage in large if stage in small}
        print("growth from", sizes[0], "to", sizes[-1], json.dumps(results["growth"], indent=1))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "scale.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
