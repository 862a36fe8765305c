"""Peak memory of the musicnn head's training per slice (``models.transfer.train_head``), without Spark.

Synthetic features (400 floats a slice, 5 genres, 10 slices a song), ``--slices`` train slices
plus half as many validation ones, 3 heads side by side, 2 epochs; each size in a fresh
process, its peak resident memory above what the inputs already took, per slice. Writes
bench/results/head_memory.json.

    python bench/head_memory.py [--slices 20000 60000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ONE_SIZE = """
import json, resource, sys, time
import numpy as np
from deepcrate.models.feature_reader import SliceFeatures
from deepcrate.models.transfer import train_head

n = int(sys.argv[1])
rng = np.random.default_rng(0)
def part(m):
    labels = rng.integers(0, 5, m).astype(np.int32)
    features = (rng.normal(size=(m, 400)) + labels[:, None] * 0.05).astype(np.float32)
    return SliceFeatures(features=features, labels=labels, song_ids=np.array([f"s{i // 10}" for i in range(m)], object))
train, val = part(n), part(n // 2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.monotonic()
head = train_head(train, val, n_classes=5, objective="supcon", batch_size=128, max_epochs=2, patience=2,
                  learning_rate=0.001, heads=3)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"train_slices": n, "inputs_mb": before, "peak_mb": peak,
                  "kb_per_slice": (peak - before) * 1024 / (1.5 * n), "seconds": time.monotonic() - started,
                  "embedding_abs_sum": float(np.abs(head.embedding[0]).sum())}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[20000, 60000])
    args = parser.parse_args()
    runs = []
    for n in args.slices:
        done = subprocess.run([sys.executable, "-c", ONE_SIZE, str(n)], capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    out = ROOT / "bench" / "results" / "head_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
