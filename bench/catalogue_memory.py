"""Evaluate's, index's and train's driver memory as the catalogue grows, for this checkout and a baseline.

Neither stage decodes audio or runs a network: they read song vectors. So the catalogue
is grown from a small real one instead of rebuilt: a warehouse the default pipeline
built (``--source WH``; by default one made here from 6 demo songs per genre, cached) is
tiled to each size in ``--songs``: its songs copied under new ids, each copy's vectors
(song and slice embeddings, pretrained features, MFCC statistics, the timbre Gaussians'
means) moved by Gaussian noise of a third of each column's spread, so that no two songs
are duplicates (``pretrained_features`` too, for ``--stages train``; not ``slices``, whose
counts training only logs). Then ``deepcrate evaluate`` and ``deepcrate index`` (and
``train``) run on each tiled warehouse with this checkout's code and with a baseline
commit's (its ``lib`` first on ``PYTHONPATH``, from a temporary git worktree), each in a
fresh process whose peak memory is read: the Python driver's, not its JVM's; the kernel's
high-water mark of the resident size (file pages it maps included) and the largest
anonymous resident size seen (what the process itself holds), so Linux only. Reported: the
peaks, the growth per song from the smallest size to the largest, and the seconds.
Writes bench/results/catalogue_memory.json; warehouses under ~/.cache/deepcrate-bench/catalogue/.

    python bench/catalogue_memory.py [--songs 2000 10000 40000] [--baseline bfc6b80] [--source WH]
        [--stages evaluate index train] [--reuse-tiled] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from baseline_checkout import ROOT, baseline_checkout, peak_of

from deepcrate.audio.mfcc import N_MFCC  # the timbre Gaussian's mean: its first values (the covariance is kept)
from deepcrate.models.pretrained_runtime import FEATURE_DTYPE, from_arrow, to_bytes

WORK = Path.home() / ".cache" / "deepcrate-bench" / "catalogue"
RESULTS = ROOT / "bench" / "results"
TILED = ("songs", "mfcc_features", "song_embeddings", "slice_embeddings", "pretrained_features")
NOISE = 1 / 3  # of each column's standard deviation


def source_warehouse(songs_per_genre: int) -> Path:
    """A warehouse the default pipeline built on a small demo catalogue (made once, then cached)."""
    folder = WORK / f"source-{songs_per_genre}"
    warehouse = folder / "warehouse"
    if (warehouse / "song_embeddings").exists():
        return warehouse
    shutil.rmtree(folder, ignore_errors=True)
    cli = [sys.executable, "-m", "deepcrate.cli"]
    subprocess.run([*cli, "demo-catalogue", str(folder / "audio"), "--songs-per-genre", str(songs_per_genre),
                    "--seconds", "30"], check=True)
    subprocess.run([*cli, "rebuild", "--audio", str(folder / "audio"), "--manifest", str(folder / "audio" / "manifest.csv"),
                    "--warehouse", str(warehouse), "--set", "spark.master=local[2]"], check=True)
    return warehouse


def tiled(table: pa.Table, copies: int, rng: np.random.Generator) -> pa.Table:
    """``copies`` copies of ``table``: copy 0 as it is, the others with new song ids (and paths) and
    their float list columns moved by noise."""
    parts = [table]
    spread = {name: _matrix(table.column(name)).std(axis=0) for name in _vector_columns(table)}
    # pretrained_features.features: float32 values in a binary column
    features_spread = {"features": _features(table.column("features")).std(axis=0)} if "slice_hash" in table.column_names else {}
    for copy in range(1, copies):
        columns = {}
        for name in table.column_names:
            column = table.column(name)
            if name in ("song_id", "path"):
                column = pc.binary_join_element_wise(column, pa.scalar(f"~{copy}"), "")
            elif name in spread:
                column = _moved(column, spread[name], rng, only=N_MFCC if name == "timbre" else None)
            elif name in features_spread:
                column = _moved_features(column, features_spread[name], rng)
            columns[name] = column
        parts.append(pa.table(columns, schema=table.schema))
    return pa.concat_tables(parts)


def _vector_columns(table: pa.Table) -> list[str]:
    return [field.name for field in table.schema
            if pa.types.is_list(field.type) and pa.types.is_floating(field.type.value_type)
            and table.column(field.name).null_count == 0 and len(table) and len(table.column(field.name)[0])]


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    flat = column.combine_chunks()
    return flat.flatten().to_numpy(zero_copy_only=False).reshape(len(flat), -1).astype(np.float64)


def _moved(column: pa.ChunkedArray, spread: np.ndarray, rng: np.random.Generator, *, only: int | None) -> pa.Array:
    matrix = _matrix(column)
    width = matrix.shape[1] if only is None else only
    matrix[:, :width] += rng.normal(size=(len(matrix), width)) * spread[:width] * NOISE
    values = pa.array(matrix.astype(column.type.value_type.to_pandas_dtype()).ravel())
    offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values).cast(column.type)


def _features(column: pa.ChunkedArray) -> np.ndarray:
    width = len(column[0].as_py()) // FEATURE_DTYPE.itemsize  # every row's, or from_arrow says otherwise
    return from_arrow(column, width=width, where="pretrained_features").astype(np.float64)


def _moved_features(column: pa.ChunkedArray, spread: np.ndarray, rng: np.random.Generator) -> pa.Array:
    matrix = _features(column)
    matrix += rng.normal(size=matrix.shape) * spread * NOISE
    return pa.array(to_bytes(matrix.astype(FEATURE_DTYPE)), pa.binary())


def tile_warehouse(source: Path, target: Path, *, songs: int) -> int:
    """Copy ``source`` to ``target`` and republish its song tables tiled to at least ``songs`` songs;
    returns the songs it has."""
    from deepcrate.config import resolve_settings
    from deepcrate.spark.session import spark_session
    from deepcrate.storage.warehouse import VECTOR_ROW_GROUP_BYTES, Warehouse
    from deepcrate.storage.writer_lock import writer_lock

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    spark = spark_session(resolve_settings(overrides=["spark.master=local[2]"]).spark, quiet=True)
    try:
        with writer_lock(str(target), command="bench-tile"):
            store = Warehouse(spark, str(target))
            have = store.arrow.read("songs", columns=["song_id"]).num_rows
            copies = -(-songs // have)
            run = store.begin_run()
            with tempfile.TemporaryDirectory() as scratch:
                for name in TILED:
                    rows = tiled(store.arrow.read(name), copies, np.random.default_rng(copies))
                    folder = Path(scratch) / name
                    folder.mkdir()
                    # in row groups of the size the stages' writers keep to
                    group_rows = max(1, VECTOR_ROW_GROUP_BYTES * rows.num_rows // max(1, rows.nbytes))
                    pq.write_table(rows, folder / "part-00000.parquet", row_group_size=group_rows)
                    store.write_table_files(run, name, str(folder), metadata=store.metadata(name))
            store.publish(run, list(TILED))
    finally:
        spark.stop()
    return have * copies


def _songs_in(warehouse: Path) -> int:
    from deepcrate.storage.arrow_tables import ArrowTables

    return ArrowTables.local(str(warehouse), reader="bench").read("songs", columns=["song_id"]).num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, nargs="+", default=[2000, 10000, 40000])
    parser.add_argument("--baseline", default="bfc6b80", help="commit whose code is the baseline")
    parser.add_argument("--source", type=Path, help="a warehouse built by the default pipeline")
    parser.add_argument("--songs-per-genre", type=int, default=6, help="of the demo source made when --source is not given")
    parser.add_argument("--stages", nargs="+", default=["evaluate", "index"], help="also: train")
    parser.add_argument("--reuse-tiled", action="store_true", help="keep the tiled warehouses an earlier run made")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each command, alternating the two codes: the highest peaks are kept (polling "
                             "can only miss a peak, never invent one) and the median seconds")
    args = parser.parse_args()
    source = args.source or source_warehouse(args.songs_per_genre)
    rows = []
    with baseline_checkout(args.baseline) as baseline:
        for songs in args.songs:
            warehouse = WORK / f"tiled-{songs}"
            if args.reuse_tiled and (warehouse / "songs").exists():
                row: dict = {"songs": _songs_in(warehouse)}
            else:
                row = {"songs": tile_warehouse(source, warehouse, songs=songs)}
            for stage in args.stages:
                command = [sys.executable, "-m", "deepcrate.cli", stage, "--warehouse", str(warehouse),
                           "--set", "spark.master=local[2]"]
                runs: dict[str, list] = {"baseline": [], "this": []}
                for _ in range(args.repeat):
                    for name, lib in (("baseline", baseline / "lib"), ("this", ROOT / "lib")):
                        runs[name].append(peak_of(command, lib))
                for name, peaks in runs.items():
                    row[f"{stage}_{name}"] = {"driver_peak_mb": round(max(p.resident for p in peaks)),
                                              "driver_anonymous_peak_mb": round(max(p.anonymous for p in peaks)),
                                              "anonymous_peaks_mb": [round(p.anonymous) for p in peaks],
                                              "seconds": round(float(np.median([p.seconds for p in peaks])), 1)}
                    print(f"{row['songs']} songs, {stage}, {name}: {row[f'{stage}_{name}']}", flush=True)
            rows.append(row)
    growth = {}
    small, large = rows[0], rows[-1]
    for stage in args.stages:
        for name in ("baseline", "this"):
            for peak in ("driver_peak_mb", "driver_anonymous_peak_mb"):
                added = large[f"{stage}_{name}"][peak] - small[f"{stage}_{name}"][peak]
                per_song = added * 1024 / max(1, large["songs"] - small["songs"])
                growth.setdefault(f"{stage}_{name}", {})[peak] = {"mb": added, "kb_per_song": round(per_song, 1)}
                print(f"{stage} {name}, {peak}: {small['songs']} -> {large['songs']} songs: {added:+} MB "
                      f"({per_song:.1f} KB a song)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "catalogue_memory.json"
    out.write_text(json.dumps({"baseline": args.baseline, "source": str(source), "rows": rows, "growth": growth,
                               "cpu_count": os.cpu_count()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
