"""FAISS on 1M realistic (clustered) 128-d song vectors vs exact search, in one run.

Measures, for exact (numpy brute force and FAISS Flat) and approximate (HNSW, IVF)
indexes: build time, recall@10 against exact search, single-query latency p50/p99;
then the whole recommendations table (top 10 for every song) with the default index:
time and peak memory. Exact search over all 1M songs is extrapolated from a sample
of queries (it would take hours on 2 cores), and says so.

    python bench/index.py                 # 1,000,000 songs
    python bench/index.py --songs 200000  # quicker

Writes bench/results/index.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepcrate.config import resolve_settings
from deepcrate.stages.index import recommendation_blocks
from deepcrate.vectors.faiss_index import build_index
from deepcrate.vectors.similarity import exact_top_k, normalise


def clustered_vectors(n: int, dim: int = 128, *, seed: int = 0) -> np.ndarray:
    """Song-like vectors: 12 genre directions, 40 styles each, songs spread around their style.

    Like real embeddings (and unlike uniform noise) neighbours are much closer than
    strangers, which is what approximate indexes exploit.
    """
    rng = np.random.default_rng(seed)
    genres = rng.standard_normal((12, dim))
    styles = genres[rng.integers(0, 12, 480)] + 0.6 * rng.standard_normal((480, dim))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # blocks keep the float64 temporaries small
        stop = min(n, start + 100_000)
        style = rng.integers(0, 480, stop - start)
        spread = rng.uniform(0.3, 0.8, (stop - start, 1))
        out[start:stop] = styles[style] + spread * rng.standard_normal((stop - start, dim))
    return normalise(out)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


def single_query_latency(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, float]:
    times = []
    for q in queries:
        started = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def _peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000, help="sample for recall and latency")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--table-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table_only:
        table_only(args.songs)
        return 0
    k = 10
    print(f"{args.songs} clustered 128-d vectors, {os.cpu_count()} cores, faiss {faiss.__version__}", flush=True)
    vectors = clustered_vectors(args.songs)
    queries = vectors[np.random.default_rng(1).choice(args.songs, args.queries, replace=False)]
    results: dict = {"songs": args.songs, "cores": os.cpu_count(), "k": k, "indexes": {}}

    started = time.perf_counter()
    _, truth = exact_top_k(vectors, queries, k)
    numpy_s = time.perf_counter() - started
    results["numpy_brute_force"] = {"queries_per_s": args.queries / numpy_s,
                                    "all_songs_extrapolated_min": args.songs / (args.queries / numpy_s) / 60}
    print(f"numpy brute force: {args.queries / numpy_s:,.0f} queries/s; all {args.songs} songs would take "
          f"~{results['numpy_brute_force']['all_songs_extrapolated_min']:.0f} min", flush=True)

    for kind in ("flat", "hnsw", "ivf"):
        started = time.perf_counter()
        if kind == "flat":
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
        else:
            index, _ = build_index(vectors, 
                resolve_settings(overrides=["index.exact_max_songs=0", f"index.approximate={kind}"]).index)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        _, found = index.search(queries, k)
        batch_qps = args.queries / (time.perf_counter() - started)
        p50, p99 = single_query_latency(index, queries[:300], k)
        row = {"build_s": build_s, "recall_at_10": recall(found, truth), "batch_queries_per_s": batch_qps,
               "p50_ms": p50, "p99_ms": p99}
        results["indexes"][kind] = row
        print(f"{kind:5s} build {build_s:7.1f} s   recall@10 {row['recall_at_10']:.3f}   "
              f"{batch_qps:9,.0f} queries/s batched   one query p50 {p50:.3f} ms  p99 {p99:.3f} ms", flush=True)
        del index

    # The whole table in a fresh process, so that its peak memory is the table's own.
    del vectors
    import subprocess

    table = subprocess.run([sys.executable, __file__, "--songs", str(args.songs), "--table-only"],
                           check=True, capture_output=True, text=True)
    results["recommendations"] = json.loads(table.stdout.strip().splitlines()[-1])
    r = results["recommendations"]
    print(f"recommendations table with {r['index']}: {r['rows']:,} rows in {r['minutes']:.1f} min; peak RSS "
          f"{r['peak_rss_mib']:,.0f} MiB (vectors {r['vectors_mib']:,.0f} MiB + index + one block)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").write_text(json.dumps(results, indent=2))
    print(f"written {out / 'index.json'}")
    return 0


def table_only(songs: int) -> None:
    """Build the default index and write the whole recommendations table; print one JSON line."""
    vectors = clustered_vectors(songs)
    settings = resolve_settings(overrides=["index.exact_max_songs=0"]).index
    started = time.perf_counter()
    index, params = build_index(vectors, settings)
    build_s = time.perf_counter() - started
    ids = pa.array([f"{i:016x}" for i in range(songs)])
    started = time.perf_counter()
    rows = 0
    with tempfile.TemporaryDirectory() as tmp:
        for number, block in enumerate(recommendation_blocks(index, ids, vectors, settings)):
            pq.write_table(block, os.path.join(tmp, f"part-{number:05d}.parquet"))
            rows += block.num_rows
    table_s = time.perf_counter() - started
    print(json.dumps({"index": params["kind"], "rows": rows, "build_s": build_s, "seconds": table_s,
                      "minutes": table_s / 60, "total_minutes": (build_s + table_s) / 60,
                      "peak_rss_mib": _peak_rss_mib(),
                      "vectors_mib": vectors.nbytes / 2**20}))


if __name__ == "__main__":
    sys.exit(main())
