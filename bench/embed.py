"""Embedding through Spark vs the bare model on the same slices, per core.

The baseline is the trained model called directly (``model(x)``, batches of 256) on
every slice of the table already in memory, in one process whose TensorFlow uses one
thread (then two). The Spark side is the whole ``deepcrate embed`` job (read the
table, embed on the executors, write slice_embeddings, average per song, write
song_embeddings) on ``local[1]`` and ``local[2]``, and its slice pass alone (read,
embed, write slice_embeddings). Goal: Spark >= 0.85 of the bare
model per core, and the model loaded once per Python worker.

    python bench/embed.py                # the cached 3,080-slice demo warehouse (see bench/train.py)
    python bench/embed.py --warehouse WH
    python bench/embed.py --warehouse WH --bare-slices 10500   # large tables: the bare model's
                                                             # rate from the first 10,500 slices

Writes bench/results/embed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BARE = """
import json, os, sys, time
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads({threads})
tf.config.threading.set_inter_op_parallelism_threads(1)
from deepcrate.models.inference import embed_images, worker_model
from deepcrate.storage.arrow_tables import ArrowTables
table = ArrowTables.current({warehouse!r}).slice_table(image_shape=(256, 256))
def first_images(limit):
    chunks, held = [], 0
    for split in ("train", "validation", "test"):
        for batch in table.batches(split=split, labels=None, batch_size=4096):
            chunks.append(batch.images[: limit - held])
            held += len(chunks[-1])
            if held >= limit:
                return np.concatenate(chunks)
    return np.concatenate(chunks)
images = first_images({limit})
model = worker_model("bench", open({model!r}, "rb").read())
embed_images(model, images[:512], batch_size=256)  # warm-up: tracing, oneDNN kernels
best = float("inf")
for _ in range(2):
    started = time.perf_counter()
    embed_images(model, images, batch_size=256)
    best = min(best, time.perf_counter() - started)
print(json.dumps({{"slices": len(images), "seconds": best}}))
"""

SPARK = """
import json, sys, time
sys.path.insert(0, {bench!r})
from process_cpu import ProcessCpu
from deepcrate.config import resolve_settings
from deepcrate.stages.embed import embed
from deepcrate.spark.session import spark_session
settings = resolve_settings(overrides=["spark.master=local[{cores}]", "spark.options.spark.ui.enabled=false"])
spark = spark_session(settings.spark)
first = embed(spark, warehouse={warehouse!r}, settings=settings)  # warm-up: Python workers start, load the model
with ProcessCpu() as cpu:
    summary = embed(spark, warehouse={warehouse!r}, settings=settings)  # the same workers: no new loads
print(json.dumps({{"slices": summary.slices, "seconds": summary.seconds, "pass_seconds": summary.pass_seconds,
                  "model_loads": first.model_loads + summary.model_loads, "cpu_seconds": cpu.seconds}}))
"""


def _run(code: str, *, threads: int) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", help="a warehouse with slices and a trained model")
    parser.add_argument("--bare-slices", type=int, default=0,
                        help="time the bare model on the first N slices only (0: all; a table of 50,000 slices "
                             "takes 13 GB in memory as float32): its per-slice rate does not depend on N")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    warehouse = Path(args.warehouse or Path.home() / ".cache" / "deepcrate-bench" / "train-demo" / "wh").resolve()
    models = sorted((warehouse / "models").glob("*/model.keras"))
    if not models:
        print(f"{warehouse}: no trained model; run: deepcrate train --warehouse {warehouse} "
              f"--set train.max_epochs=1", file=sys.stderr)
        return 2
    print(f"{warehouse}, model {models[-1].parent.name}, {os.cpu_count()} cores", flush=True)
    results: dict = {"warehouse": str(warehouse), "model": models[-1].parent.name}
    for threads in (1, 2):
        limit = args.bare_slices or 2**62
        bare = _run(BARE.format(threads=threads, warehouse=str(warehouse), model=str(models[-1]), limit=limit),
                    threads=threads)
        results[f"bare_{threads}_thread"] = {**bare, "slices_per_s": bare["slices"] / bare["seconds"]}
        print(f"bare model, {threads} thread(s): {results[f'bare_{threads}_thread']['slices_per_s']:.0f} slices/s",
              flush=True)
    for cores in (1, 2):
        spark = _run(SPARK.format(cores=cores, warehouse=str(warehouse), bench=str(Path(__file__).parent)), threads=1)
        bare_rate = results["bare_1_thread"]["slices_per_s"]
        rate, pass_rate = spark["slices"] / spark["seconds"], spark["slices"] / spark["pass_seconds"]
        results[f"spark_local_{cores}"] = {**spark, "slices_per_s": rate, "pass_slices_per_s": pass_rate,
                                           "per_core_vs_bare_1_thread": rate / cores / bare_rate,
                                           "pass_per_core_vs_bare_1_thread": pass_rate / cores / bare_rate}
        print(f"spark local[{cores}]: whole embed job {rate:.0f} slices/s = {rate / cores / bare_rate:.2f} of the "
              f"bare model per core; the slice pass alone {pass_rate:.0f} slices/s = "
              f"{pass_rate / cores / bare_rate:.2f}; model loaded {spark['model_loads']} times over both runs",
              flush=True)
        print("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in spark["cpu_seconds"].items())
              + f" (the bare model: {results['bare_1_thread']['seconds']:.1f} s for {results['bare_1_thread']['slices']} "
              f"slices on 1 thread)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embed.json").write_text(json.dumps(results, indent=2))
    print(f"written {out / 'embed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
