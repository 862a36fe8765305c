"""Recommendation quality of each front-end/model/objective on real recordings, over seeds.

For every variant and seed, a full rebuild (ingest, train, embed, index, evaluate)
into its own warehouse under ``--work``, on the corpus ``bench/real_corpus.py``
builds. The seed draws both the split (by song, stratified by soundtrack) and the
training (weights, order, augmentation); the split is the default one (65/25/10). The
MFCC, timbre and random baselines (and, for a musicnn model, the untuned pretrained
network) are computed in each run on the same queries, with the ideal ranking (the
ceiling).

    python bench/real_corpus.py                      # once
    python bench/quality.py --seeds 0 1 2            # the default, musicnn (MTT alone) and seed variants
    python bench/quality.py --variants seed mel --seeds 0
    python bench/quality.py --report a.json b.json   # one table from earlier runs

Writes bench/results/quality.json and prints mean ± standard deviation over the seeds.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "deepcrate-bench"
LONG = ["train.batch_size=32", "train.max_epochs=60", "train.patience=8"]
OVERLAP = ["spectrogram.slice_hop_frames=128"]
VARIANTS = {
    "seed": ["spectrogram.preset=seed", "train.model=seed"],
    "mel": ["spectrogram.preset=mel", "train.model=seed"],
    "improved": ["spectrogram.preset=mel", "train.model=improved"],
    "improved-linear": ["spectrogram.preset=seed", "train.model=improved"],
    "contrastive": ["spectrogram.preset=mel", "train.model=improved", "train.objective=contrastive"],
    # tuning: the loss weighted so each soundtrack counts the same; improved's former learning rate
    "seed-balanced": ["spectrogram.preset=seed", "train.model=seed", "train.balance_genres=true"],
    "improved-balanced": ["spectrogram.preset=mel", "train.model=improved", "train.balance_genres=true"],
    "improved-adam3e-3": ["spectrogram.preset=mel", "train.model=improved", "train.learning_rate=0.003"],
    "improved-balanced-adam3e-3": ["spectrogram.preset=mel", "train.model=improved", "train.balance_genres=true",
                                   "train.learning_rate=0.003"],
    # tuning: ~700 training slices make ~6 steps an epoch at batch 128, so patience 3 stops early
    "seed-long": ["spectrogram.preset=seed", "train.model=seed", *LONG],
    "improved-long": ["spectrogram.preset=mel", "train.model=improved", *LONG],
    "contrastive-long": ["spectrogram.preset=mel", "train.model=improved", "train.objective=contrastive",
                         "train.max_epochs=60", "train.patience=10"],
    # half-overlapping slices: twice the training slices (and twice the slices to embed)
    "seed-overlap": ["spectrogram.preset=seed", "train.model=seed", *OVERLAP],
    "improved-overlap": ["spectrogram.preset=mel", "train.model=improved", *OVERLAP],
    "seed-long-overlap": ["spectrogram.preset=seed", "train.model=seed", *LONG, *OVERLAP],
    "improved-long-overlap": ["spectrogram.preset=mel", "train.model=improved", *LONG, *OVERLAP],
    # transfer: musicnn's pretrained layers fixed, a head learnt on their features (issue 22)
    "musicnn": ["spectrogram.preset=musicnn", "train.model=musicnn"],
    "musicnn-mtt": ["spectrogram.preset=musicnn", "train.model=musicnn", "train.pretrained=MTT_musicnn"],
    "musicnn-supcon": ["spectrogram.preset=musicnn", "train.model=musicnn", "train.objective=supcon"],
    "musicnn-mtt-supcon": ["spectrogram.preset=musicnn", "train.model=musicnn", "train.pretrained=MTT_musicnn",
                           "train.objective=supcon"],
    # both checkpoints side by side (the default since the head is kept by validation retrieval)
    "musicnn-both-supcon": ["spectrogram.preset=musicnn", "train.model=musicnn",
                            "train.pretrained=MTT_musicnn+MSD_musicnn", "train.objective=supcon"],
}
# every variant from the same settings, whatever the defaults of the day: the seed recipe's, which
# each variant's own overrides then change
PINNED = ["spectrogram.preset=seed", "train.model=seed", "train.objective=classify", "train.pretrained=MSD_musicnn"]
SPLIT: list[str] = []  # the default split (65/25/10): ~33 test queries per seed on the 333-track corpus
REPORTED = ("precision_at_10", "map_at_10", "precision_at_5", "song_accuracy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(CACHE / "real-corpus" / "audio"))
    parser.add_argument("--work", default=str(CACHE / "quality"))
    parser.add_argument("--variants", nargs="+", default=["musicnn-both-supcon", "musicnn-mtt-supcon", "seed"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="extra config overrides")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "quality.json"))
    parser.add_argument("--report", nargs="+", metavar="JSON", help="no runs: merge these results into one table")
    args = parser.parse_args()
    if args.report:
        runs = [run for file in args.report for run in json.loads(Path(file).read_text())["runs"]]
        variants = [name for name in VARIANTS if any(run["variant"] == name for run in runs)]
        seeds = sorted({run["seed"] for run in runs})
        report(runs, variants=variants, seeds=seeds, corpus=args.corpus, out=Path(args.out))
        return 0
    corpus = Path(args.corpus)
    if not (corpus / "manifest.csv").is_file():
        print(f"{corpus}/manifest.csv is missing: run python bench/real_corpus.py", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from deepcrate.config import resolve_settings
    from deepcrate.spark.session import spark_session
    from deepcrate.stages.rebuild import rebuild
    from deepcrate.storage.warehouse import Warehouse

    spark = spark_session(resolve_settings(overrides=["spark.master=local[2]", "spark.options.spark.ui.enabled=false"]).spark)
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            overrides = [*PINNED, *VARIANTS[variant], *SPLIT, f"split.seed={seed}", f"train.seed={seed}", *args.overrides]
            warehouse = Path(args.work) / f"{variant}-{seed}"
            started = time.monotonic()
            summary = rebuild(spark, audio=str(corpus), manifest=str(corpus / "manifest.csv"),
                              warehouse=str(warehouse), settings=resolve_settings(overrides=overrides))
            metrics = Warehouse(spark, str(warehouse)).metadata("evaluation").metrics
            train_s = next(s.seconds for s in summary.stages if s.name == "train")
            runs.append({"variant": variant, "seed": seed, "overrides": overrides, "metrics": metrics,
                         "train_s": round(train_s, 1), "seconds": round(time.monotonic() - started, 1)})
            model = metrics["methods"]["model"]
            print(f"{variant:<16} seed {seed}: P@10 {model['precision_at_10']:.3f}  MAP@10 {model['map_at_10']:.3f}  "
                  f"song acc {model['song_accuracy']:.3f}  (MFCC P@10 {metrics['methods']['mfcc']['precision_at_10']:.3f}"
                  f", {metrics['queries']} queries, train {train_s:.0f} s)", flush=True)

    report(runs, variants=args.variants, seeds=args.seeds, corpus=str(corpus), out=Path(args.out))
    return 0


def report(runs: list[dict], *, variants: list[str], seeds: list[int], corpus: str, out: Path) -> None:
    """Print the mean ± std table over the seeds and write it with every run to ``out``."""
    table = aggregate(runs, variants=variants)
    print(f"\nseeds {', '.join(map(str, seeds))}; mean ± standard deviation over the n seeds each row ran")
    print(f"{'':<28}{'n':>3}" + "".join(f"{name:>18}" for name in REPORTED) + f"{'P@10 / MFCC':>14}")
    for name, row in table.items():
        ratio = row.get("p10_vs_mfcc")
        print(f"{name:<28}{row['seeds']:>3}" + "".join(f"{row[m]['mean']:>11.3f} ± {row[m]['std']:.3f}" if row[m]
                                                         else f"{'–':>18}" for m in REPORTED)
              + (f"{ratio['mean']:>8.2f} ± {ratio['std']:.2f}" if ratio else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"corpus": corpus, "seeds": seeds, "summary": table, "runs": runs}, indent=2))
    print(f"written {out}")


def aggregate(runs: list[dict], *, variants: list[str]) -> dict[str, dict]:
    """Mean and standard deviation over seeds of each variant's model rows and of the baselines
    (None for a metric a method has not, such as the timbre baseline's song accuracy)."""
    def stats(values: list[float | None]) -> dict[str, float] | None:
        if any(v is None for v in values):
            return None
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}

    table = {}
    for variant in variants:
        mine = [r["metrics"]["methods"] for r in runs if r["variant"] == variant]
        table[variant] = {m: stats([run["model"][m] for run in mine]) for m in REPORTED}
        table[variant]["seeds"] = len(mine)
        table[variant]["p10_vs_mfcc"] = stats([run["model"]["precision_at_10"] / run["mfcc"]["precision_at_10"]
                                               for run in mine])
    for baseline in ("pretrained", "mfcc", "timbre", "random", "ideal"):  # the same for every variant of a seed
        if any(baseline not in r["metrics"]["methods"] for r in runs):  # runs from before it existed
            continue
        per_seed = list({r["seed"]: r["metrics"]["methods"][baseline] for r in runs}.values())
        table[baseline] = {m: stats([run[m] for run in per_seed]) for m in REPORTED}
        table[baseline]["seeds"] = len(per_seed)
    return table


if __name__ == "__main__":
    sys.exit(main())
