"""Peak memory of the musicnn head's training per slice (``models.transfer.train_head``), without Spark.

Synthetic features (400 float32 a slice, 5 genres, 10 slices a song), ``--slices`` train slices
plus half as many validation ones, 3 heads side by side, 2 epochs, as the train stage calls it
(the features standardised over themselves where the code can); each size in a fresh
process, its peak resident memory above what the inputs already took, per slice (the
high-water mark, file pages it maps included, and the anonymous memory, sampled); this
checkout and a baseline commit (``--baseline``, its ``lib`` first on ``PYTHONPATH``, from a
temporary git worktree) one after the other. Writes bench/results/head_memory.json.

    python bench/head_memory.py [--slices 20000 60000] [--baseline e8064db]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from baseline_checkout import ROOT, baseline_checkout, env_running

ONE_SIZE = """
import inspect, json, re, resource, sys, threading, time
import numpy as np
from deepcrate.models.feature_reader import SliceFeatures
from deepcrate.models.transfer import train_head
try:
    from deepcrate.cli.allocator import return_large_arrays
    from deepcrate.vectors.scratch import scratch_array
    return_large_arrays()  # as every deepcrate command does
except ImportError:  # a baseline from before them
    scratch_array = None

n = int(sys.argv[1])
rng = np.random.default_rng(0)
def part(m):
    labels = rng.integers(0, 5, m).astype(np.int32)
    features = rng.standard_normal((m, 400), dtype=np.float32)  # no float64 draw: it would raise the peak before
    features += labels[:, None].astype(np.float32) * np.float32(0.05)
    if scratch_array is not None:  # where the stage's reader holds them
        held = scratch_array(features.shape, np.float32)
        held[:] = features
        features = held
    return SliceFeatures(features=features, labels=labels, song_ids=np.array([f"s{i // 10}" for i in range(m)], object))
train, val = part(n), part(n // 2)
def anonymous():
    with open("/proc/self/status") as status:
        return int(re.search(r"RssAnon:\\s+(\\d+) kB", status.read()).group(1)) / 1024
anonymous_peak, done = [anonymous()], threading.Event()
def watch():  # RssAnon has no high-water mark: sampled
    while not done.wait(0.005):
        anonymous_peak[0] = max(anonymous_peak[0], anonymous())
threading.Thread(target=watch, daemon=True).start()
anonymous_before = anonymous()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
as_the_stage = {"overwrite_features": True} if "overwrite_features" in inspect.signature(train_head).parameters else {}
started = time.monotonic()
head = train_head(train, val, n_classes=5, objective="supcon", batch_size=128, max_epochs=2, patience=2,
                  learning_rate=0.001, heads=3, **as_the_stage)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
done.set()
print(json.dumps({"train_slices": n, "inputs_mb": before, "peak_mb": peak,
                  "kb_per_slice": (peak - before) * 1024 / (1.5 * n),
                  "anonymous_kb_per_slice": (anonymous_peak[0] - anonymous_before) * 1024 / (1.5 * n),
                  "seconds": time.monotonic() - started,
                  "embedding_abs_sum": float(np.abs(head.embedding[0]).sum())}))
"""


def one_size(n: int, lib: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", ONE_SIZE, str(n)], capture_output=True, text=True, check=True,
                          env=env_running(lib))
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[20000, 60000])
    parser.add_argument("--baseline", default="e8064db", help="commit whose code is the baseline")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"baseline": [], "this": []}
    with baseline_checkout(args.baseline) as baseline:
        for n in args.slices:
            for name, lib in (("baseline", baseline / "lib"), ("this", ROOT / "lib")):
                runs[name].append(one_size(n, lib))
                print(name, json.dumps(runs[name][-1]), flush=True)
    ratios = [this["kb_per_slice"] / base["kb_per_slice"] for this, base in zip(runs["this"], runs["baseline"])]
    print("KB per slice, this / baseline:", ", ".join(f"{r:.2f}" for r in ratios))
    anonymous = [this["anonymous_kb_per_slice"] / base["anonymous_kb_per_slice"]
                 for this, base in zip(runs["this"], runs["baseline"])]
    print("anonymous KB per slice, this / baseline:", ", ".join(f"{r:.2f}" for r in anonymous))
    out = ROOT / "bench" / "results" / "head_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"baseline_commit": args.baseline, "runs": runs, "ratio_this_to_baseline": ratios,
                              "anonymous_ratio_this_to_baseline": anonymous},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
