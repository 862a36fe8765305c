"""The cost of publishing: Delta commits + one run record against the Parquet renames, in one run.

A writing job of ingest's shape (three tables; the slices table of ``--songs`` songs with
two slices each, spread over ``--files`` Parquet files) is written with Spark and then
published, once per format, ``--repeats`` times. Publishing is the part after the
Parquet files are written: delta reads each file's footer, commits each table's files to
its Delta log through delta-rs and writes the run record; parquet renames the staged
folders. Reported beside the Spark write of the same tables, measured in the same run.

    python bench/publish.py                  # 10,000 songs
    python bench/publish.py --songs 2000

Writes bench/results/publish.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, IntegerType, StringType, StructField, StructType

from deepcrate.storage.schemas import TABLES
from deepcrate.storage.warehouse import Warehouse, writer_lock

SLICE_BYTES = 1024  # small stand-ins for the 64 KB images: publishing does not read the data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=64, help="Parquet files of the slices table")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "publish.json"))
    args = parser.parse_args(argv)

    spark = (SparkSession.builder.master("local[2]").appName("bench-publish").config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    schemas = {"bench_songs": StructType([StructField("song_id", StringType()), StructField("n_slices", IntegerType())]),
               "bench_slices": StructType([StructField("song_id", StringType()), StructField("slice_idx", IntegerType()),
                                           StructField("spectrogram", BinaryType())]),
               "bench_rejects": StructType([StructField("path", StringType()), StructField("reason", StringType())])}
    TABLES.update(schemas)
    songs = spark.range(args.songs).select(F.format_string("%016x", "id").alias("song_id"),
                                           F.lit(2).cast("int").alias("n_slices")).repartition(4)
    slices = (spark.range(args.songs * 2)
              .select(F.format_string("%016x", (F.col("id") / 2).cast("long")).alias("song_id"),
                      (F.col("id") % 2).cast("int").alias("slice_idx"),
                      F.expr(f"unhex(repeat('ab', {SLICE_BYTES}))").alias("spectrogram"))
              .repartition(args.files))
    rejects = spark.range(args.songs // 100).select(F.format_string("bad/%d.mp3", "id").alias("path"),
                                                    F.lit("not_audio").alias("reason")).coalesce(1)
    frames = {"bench_songs": songs, "bench_slices": slices, "bench_rejects": rejects}

    results: dict[str, dict[str, list[float]]] = {fmt: {"write_s": [], "publish_s": []} for fmt in ("parquet", "delta")}
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as scratch:
        for repeat in range(args.repeats):
            for fmt in ("parquet", "delta"):  # alternated, so drift hits both alike
                wh = str(Path(scratch) / f"wh-{fmt}")
                with writer_lock(spark, wh, command="bench", create=True):
                    store = Warehouse(spark, wh, create=True, table_format=fmt)
                    run = store.begin_run()
                    started = time.perf_counter()
                    for name, frame in frames.items():
                        store.write_table(run, name, frame)
                    written = time.perf_counter()
                    store.publish(run, list(frames))
                # the run record is written as the job (the with block) ends
                published = time.perf_counter()
                results[fmt]["write_s"].append(written - started)
                results[fmt]["publish_s"].append(published - written)
                print(f"repeat {repeat + 1} {fmt:7s}: write {written - started:6.2f} s, "
                      f"publish {published - written:6.3f} s", file=sys.stderr)
    summary = {fmt: {key: round(statistics.median(values), 4) for key, values in measured.items()}
               for fmt, measured in results.items()}
    report = {
        "songs": args.songs, "slice_files": args.files, "repeats": args.repeats, "medians": summary, "runs": results,
        "delta_publish_vs_parquet_publish": round(summary["delta"]["publish_s"] / summary["parquet"]["publish_s"], 2),
        "delta_publish_share_of_write": round(summary["delta"]["publish_s"] / summary["delta"]["write_s"], 3),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    print(f"written {args.out}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
