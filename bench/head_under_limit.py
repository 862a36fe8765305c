"""The head's training under a memory limit: its slices in a scratch file (as train holds them) or in ordinary arrays.

Synthetic features (400 float32 a slice, 5 genres, 7 slices a song), ``--slices`` train slices
plus a third as many validation ones, drawn a block at a time into a scratch array
(``vectors.scratch``) or into an ordinary array, then ``models.transfer.train_head`` (3 heads,
3 epochs) with the allocator setting every deepcrate command makes; each in a fresh process
in a cgroup (v1 memory controller; needs root) whose limit, page cache included, is ``--limit-mb``.
Reported: exit status (124: not done within ``--timeout``) and seconds. Writes
bench/results/head_under_limit.json.

    sudo python bench/head_under_limit.py [--slices 200000] [--limit-mb 850] [--timeout 300]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from baseline_checkout import ROOT, env_running

CGROUP = Path("/sys/fs/cgroup/memory/deepcrate-bench")
ONE_RUN = """
import sys
import numpy as np
from deepcrate.cli.allocator import return_large_arrays
from deepcrate.models.feature_reader import SliceFeatures
from deepcrate.models.transfer import train_head
from deepcrate.vectors.scratch import scratch_array
return_large_arrays()
held, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
def part(m):
    labels = rng.integers(0, 5, m).astype(np.int32)
    features = scratch_array((m, 400)) if held == "scratch" else np.empty((m, 400), np.float32)
    for start in range(0, m, 8192):  # a block at a time: no temporary of every slice
        block = slice(start, start + 8192)
        features[block] = (rng.standard_normal((len(labels[block]), 400), dtype=np.float32)
                           + labels[block, None].astype(np.float32) * np.float32(0.05))
    return SliceFeatures(features, labels, np.array([f"s{i // 7}" for i in range(m)], object))
train, val = part(n), part(n // 3)
train_head(train, val, n_classes=5, objective="supcon", batch_size=128, max_epochs=3, patience=3,
           learning_rate=0.001, heads=3, overwrite_features=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200000)
    parser.add_argument("--limit-mb", type=int, default=850)
    parser.add_argument("--timeout", type=int, default=300)
    args = parser.parse_args()
    CGROUP.mkdir(exist_ok=True)
    (CGROUP / "memory.limit_in_bytes").write_text(str(args.limit_mb * 2**20))
    runs = {}
    for held in ("scratch", "ordinary"):
        started = time.monotonic()
        command = f"echo $$ > {CGROUP / 'cgroup.procs'}; exec {sys.executable} -c '{ONE_RUN}' {held} {args.slices}"
        try:
            code = subprocess.run(["sh", "-c", command], capture_output=True, timeout=args.timeout,
                                  env=env_running(ROOT / "lib")).returncode
        except subprocess.TimeoutExpired:
            code = 124
        runs[held] = {"returncode": code, "seconds": round(time.monotonic() - started, 1)}
        print(held, json.dumps(runs[held]), flush=True)
    out = ROOT / "bench" / "results" / "head_under_limit.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"slices": args.slices, "limit_mb": args.limit_mb, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
