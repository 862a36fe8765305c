"""Training throughput (slices/s), from the Parquet table vs from the same slices in memory.

For each model preset and precision, one process trains twice on the same train
slices: once through deepcrate's input pipeline (pyarrow row groups -> shuffle
buffer -> tf.data) and once from a numpy array already in memory (tf.data over
tensors). The ratio table/memory shows whether reading the table keeps the
accelerator busy (goal: >= 0.9). The first epoch of each run warms up (graph tracing,
oneDNN kernels) and is not counted.

    python bench/train.py                      # demo warehouse cached under ~/.cache
    python bench/train.py --warehouse WH --presets seed --precisions float32

Writes bench/results/train-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "deepcrate-bench"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", help="a warehouse with a slices table (default: a cached demo one)")
    parser.add_argument("--presets", nargs="+", default=["seed", "improved"])
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    warehouse = args.warehouse or str(_demo_warehouse())
    import keras
    import tensorflow as tf

    from deepcrate.config import resolve_settings
    from deepcrate.models.architectures import build_model
    from deepcrate.stages.training import training_dataset
    from deepcrate.storage.arrow_tables import ArrowTables

    gpus = tf.config.list_physical_devices("GPU")
    device = "gpu" if gpus else "cpu"
    table = ArrowTables.current(warehouse).slice_table(image_shape=(256, 256))
    counts = table.genre_counts()["train"]
    labels = sorted(g for g in counts if g)
    n_slices = sum(counts[g] for g in labels)
    in_memory = list(table.batches(split="train", labels=labels, batch_size=4096))
    images = np.concatenate([b.images for b in in_memory])
    targets = np.concatenate([b.labels for b in in_memory])
    print(f"{n_slices} train slices, {len(labels)} genres, device {device} "
          f"({', '.join(g.name for g in gpus) or platform.processor() or 'cpu'}), {os.cpu_count()} cores")

    results = []
    for preset in args.presets:
        for precision in args.precisions:
            row = {"preset": preset, "precision": precision, "batch_size": args.batch_size}
            for source in ("memory", "table"):
                keras.mixed_precision.set_dtype_policy(precision)
                keras.utils.set_random_seed(0)
                model = build_model(preset=preset, n_classes=len(labels))
                model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="sparse_categorical_crossentropy")
                if source == "memory":
                    data = (tf.data.Dataset.from_tensor_slices((images, targets)).shuffle(len(targets), seed=0)
                            .batch(args.batch_size).prefetch(2))
                else:
                    settings = resolve_settings(
                        overrides=[f"train.batch_size={args.batch_size}"]).train
                    data = training_dataset(table, labels=labels, settings=settings, n_slices=n_slices)
                timer = _EpochTimer()
                model.fit(data, epochs=1 + args.epochs, verbose=0, callbacks=[timer])
                seconds = sum(timer.seconds[1:])
                row[f"{source}_slices_per_s"] = round(args.epochs * n_slices / seconds, 1)
            row["table_vs_memory"] = round(row["table_slices_per_s"] / row["memory_slices_per_s"], 3)
            results.append(row)
            print(f"{preset:9s} {precision:15s} memory {row['memory_slices_per_s']:8.1f} slices/s   "
                  f"table {row['table_slices_per_s']:8.1f} slices/s   table/memory {row['table_vs_memory']:.2f}",
                  flush=True)
    keras.mixed_precision.set_dtype_policy("float32")

    base = next((r for r in results if r["precision"] == "float32"), None)
    for row in results:
        same = next((r for r in results if r["preset"] == row["preset"] and r["precision"] == "float32"), base)
        if same:
            row["vs_float32"] = round(row["table_slices_per_s"] / same["table_slices_per_s"], 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train-{device}.json"
    path.write_text(json.dumps({"warehouse": warehouse, "train_slices": n_slices, "device": device,
                                "gpus": [g.name for g in gpus], "cores": os.cpu_count(), "results": results},
                               indent=2))
    print(f"written {path}")
    return 0


class _EpochTimer:
    """A Keras callback recording wall time per epoch (defined lazily: keras imports late)."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.started)

        return Timer()


def _demo_warehouse() -> Path:
    """7 genres x 40 songs x 60 s of demo music, ingested once and cached (3,080 slices)."""
    root = CACHE / "train-demo"
    if (root / "wh" / "slices" / "_SUCCESS").exists():
        return root / "wh"
    from deepcrate.cli import main as deepcrate

    if not (root / "audio" / "manifest.csv").exists():
        deepcrate(["demo-catalogue", str(root / "audio"), "--songs-per-genre", "40", "--seconds", "60", "--seed", "1"])
    code = deepcrate(["ingest", "--audio", str(root / "audio"), "--manifest", str(root / "audio" / "manifest.csv"),
                      "--warehouse", str(root / "wh")])
    if code:
        sys.exit(code)
    return root / "wh"


if __name__ == "__main__":
    sys.exit(main())
