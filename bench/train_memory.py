"""The driver's peak memory while ``deepcrate train`` runs, per warehouse, for this checkout and a baseline.

For each warehouse given (e.g. bench/scale.py's at 2,000 and 10,000 songs): optionally
``deepcrate features`` first (``--rewrite-features``: the table rewritten by this checkout,
in its layout; no feature is computed where the table is complete), then ``deepcrate
train`` with this checkout's code and with a baseline commit's (``--baseline``, its ``lib``
first on ``PYTHONPATH``, from a temporary git worktree), each in a fresh process whose peak
resident memory is read (the kernel's high-water mark since 2026-12-07; polled every 0.2 s
before, which could miss short peaks). Each train publishes a model run into the
warehouse: use bench warehouses. Writes bench/results/train_memory.json.

    python bench/train_memory.py WH [WH ...] [--baseline e8064db] [--rewrite-features]
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from baseline_checkout import ROOT, baseline_checkout, peak_of

SLICES = re.compile(r"(\d+) train / (\d+) validation slices")


def deepcrate(command: str, warehouse: str) -> list[str]:
    return [sys.executable, "-m", "deepcrate.cli", command, "--warehouse", warehouse, "--set", "spark.master=local[2]"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("warehouses", nargs="+")
    parser.add_argument("--baseline", default="e8064db", help="commit whose code is the baseline")
    parser.add_argument("--rewrite-features", action="store_true")
    args = parser.parse_args()
    results = []
    with baseline_checkout(args.baseline) as baseline:
        for warehouse in args.warehouses:
            row: dict = {"warehouse": warehouse}
            if args.rewrite_features:
                row["features_s"] = peak_of(deepcrate("features", warehouse), ROOT / "lib").seconds
            for name, lib in (("baseline", baseline / "lib"), ("this", ROOT / "lib")):
                peaks = peak_of(deepcrate("train", warehouse), lib)
                found = SLICES.search(peaks.output)
                row[name] = {"driver_peak_mb": round(peaks.resident), "driver_anonymous_peak_mb": round(peaks.anonymous),
                             "seconds": round(peaks.seconds, 1)}
                if found:
                    row["train_slices"], row["validation_slices"] = int(found.group(1)), int(found.group(2))
                print(warehouse, name, json.dumps(row[name]), flush=True)
            results.append(row)
    small, large = results[0], results[-1]
    slices = (large["train_slices"] + large["validation_slices"]) - (small["train_slices"] + small["validation_slices"])
    if slices > 0:
        for name in ("baseline", "this"):
            grown = large[name]["driver_peak_mb"] - small[name]["driver_peak_mb"]
            print(f"{name}: +{grown} MB from the first warehouse to the last, {grown * 1024 / slices:.1f} KB "
                  f"per slice read more")
    out = ROOT / "bench" / "results" / "train_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"baseline_commit": args.baseline, "warehouses": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
