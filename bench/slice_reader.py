"""Training's slice reader: peak memory with one row group per file against 16 MB groups.

pyarrow decodes a whole row group at once, and the reader interleaves
``train.interleave`` (8) row groups, so its memory follows the row-group size. Spark's
default wrote one group per file, and the files grow with the catalogue; the warehouse
now writes the slices in groups of :data:`deepcrate.storage.warehouse.ROW_GROUP_BYTES`.

Given the Parquet files of a ``slices`` table, this rewrites them (pyarrow, same rows,
same files) both ways into a scratch folder, then reads the train split in each, as
training does (the default shuffle buffer and interleave, no TensorFlow), in a fresh
process that samples its resident memory:

    python bench/slice_reader.py ~/.cache/deepcrate-bench/scale/cat-2000/wh/slices/<run>
    python bench/slice_reader.py ~/.cache/deepcrate-bench/scale/cat-10000/wh/slices/<run>

Prints both peaks and their ratio; adds a row to bench/results/slice_reader.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from deepcrate.storage.warehouse import ROW_GROUP_BYTES

RESULTS = Path(__file__).parent / "results"

READ = """
import json, sys, threading, time
import pyarrow as pa, pyarrow.dataset as ds
from deepcrate.models.slice_reader import SliceTable
peak = [0.0]
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def poll():
    while True:
        peak[0] = max(peak[0], rss())
        time.sleep(0.02)
threading.Thread(target=poll, daemon=True).start()
table = SliceTable(ds.dataset({folder!r}), image_shape=(1, {image_bytes}), uri={folder!r})
labels = sorted(g for g in table.genre_counts()["train"] if g)
started, slices = time.perf_counter(), 0
for batch in table.shuffled_batches(split="train", labels=labels, batch_size=128, buffer_size=2048, interleave=8,
                                    seed=0):
    slices += len(batch.labels)
print(json.dumps({{"groups": len(table.row_groups(split="train")), "slices": slices,
                  "seconds": time.perf_counter() - started, "peak_mb": max(peak[0], rss()),
                  "arrow_pool_peak_mb": pa.default_memory_pool().max_memory() / 2**20}}))
"""


def rewrite(source: Path, target: Path, *, group_bytes: int | None) -> None:
    """The same files again, one row group each (None) or groups of about ``group_bytes``."""
    target.mkdir(parents=True)
    for index, path in enumerate(sorted(source.glob("*.parquet"))):
        table = pq.read_table(path)
        rows = table.num_rows if group_bytes is None else max(1, group_bytes * table.num_rows // table.nbytes)
        pq.write_table(table, target / f"part-{index:05d}.parquet", row_group_size=rows,
                       use_dictionary=["song_id", "genre", "split"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slices", help="a folder holding the Parquet files of a slices table")
    args = parser.parse_args()
    source = Path(args.slices).expanduser()
    first = min(source.glob("*.parquet"))
    image_bytes = len(pq.read_table(first, columns=["spectrogram"]).column(0)[0].as_py())
    row = {"slices_folder": str(source), "files": len(list(source.glob("*.parquet"))),
           "group_bytes": ROW_GROUP_BYTES}
    with tempfile.TemporaryDirectory() as scratch:
        for name, group_bytes in (("one_group_per_file", None), ("groups_of_16_mb", ROW_GROUP_BYTES)):
            folder = Path(scratch) / name
            rewrite(source, folder, group_bytes=group_bytes)
            done = subprocess.run([sys.executable, "-c", READ.format(folder=str(folder), image_bytes=image_bytes)],
                                  check=True, capture_output=True, text=True)
            row[name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name:20s} {row[name]['groups']:4d} row groups: {row[name]['slices']} train slices in "
                  f"{row[name]['seconds']:.1f} s, peak {row[name]['peak_mb']:.0f} MiB "
                  f"(Arrow's pool {row[name]['arrow_pool_peak_mb']:.0f} MiB)", flush=True)
            shutil.rmtree(folder)
    row["peak_ratio"] = row["one_group_per_file"]["peak_mb"] / row["groups_of_16_mb"]["peak_mb"]
    print(f"one group per file needs {row['peak_ratio']:.1f}x the memory of 16 MB groups")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "slice_reader.json"
    rows = json.loads(out.read_text()) if out.exists() else []
    rows = [r for r in rows if r["slices_folder"] != row["slices_folder"]] + [row]
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
