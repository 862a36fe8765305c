"""Where a one-shot ``deepcrate sql`` spends its time, and a shell's later statements, in one run.

Times, on one warehouse:

1. the whole command, wall clock, ``--repeat`` times: this checkout's code against the code
   of a baseline commit (``--baseline``, default the last commit before issue 42), each in a
   fresh process with the same virtualenv (the baseline's ``lib`` first on ``PYTHONPATH``),
   and the floor: a process that only starts and stops a bare local Spark session;
   this checkout is timed with its class archive (sql.class_archive: written by a first one-shot
   query, timed on its own) and without it;
2. inside one process of this checkout: the JVM and session start, opening the warehouse,
   registering the tables a statement names, the read-only check, the query;
3. a shell sitting: the first statement and the ones after it (the session is kept).

    python bench/sql_startup.py --warehouse demo/warehouse
    python bench/sql_startup.py --warehouse demo/warehouse --repeat 5 --baseline HEAD~3

Writes bench/results/sql_startup.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baseline_checkout import ROOT, baseline_checkout, env_running

QUERY = "SELECT genre, count(*) AS n FROM songs GROUP BY genre ORDER BY genre"
SHELL_QUERIES = [QUERY, "SELECT count(*) AS n FROM recommendations", "SELECT max(duration_s) FROM songs",
                 "SELECT s.title FROM songs s JOIN recommendations r USING (song_id) LIMIT 3"]


def one_shot(lib: Path, warehouse: str, *, cache: str, extra: tuple[str, ...] = ()) -> tuple[float, int]:
    """Seconds for one ``deepcrate sql`` process (its user cache: ``cache``) and the lines it wrote on stderr."""
    env = {**env_running(lib), "XDG_CACHE_HOME": cache}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "deepcrate.cli", "sql", "--warehouse", warehouse, *extra, QUERY],
                            capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"deepcrate sql failed ({lib}): {result.stderr[-2000:]}")
    return seconds, len(result.stderr.splitlines())


BARE_SESSION = ("from pyspark.sql import SparkSession; SparkSession.builder.master('local[*]')"
                ".config('spark.ui.enabled', 'false').getOrCreate().stop()")


def bare_session() -> float:
    """Seconds for a process that only starts (and stops) a bare local Spark session: the floor."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE_SESSION], capture_output=True, check=True, timeout=600,
                   env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    return time.perf_counter() - started


def phases(warehouse: str) -> dict[str, float]:
    """This checkout's phases in one process, then a shell's statements."""
    from deepcrate.config import resolve_settings
    from deepcrate.query.sql import QuerySession
    from deepcrate.query.sql_guard import check_read_only
    from deepcrate.spark.session import spark_session

    times: dict[str, float] = {}
    started = time.perf_counter()
    spark = spark_session(resolve_settings().spark, quiet=True)
    times["jvm_and_session_s"] = time.perf_counter() - started
    mark = time.perf_counter()
    session = QuerySession(spark, warehouse=warehouse)
    times["open_warehouse_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    session.register({"songs"})
    times["register_named_tables_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    check_read_only(spark, QUERY, tables=session.tables, register=session.register)
    times["read_only_check_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    session.run(QUERY, out=io.StringIO())
    times["first_query_s"] = time.perf_counter() - mark
    later = []
    for query in SHELL_QUERIES * 3:
        mark = time.perf_counter()
        session.run(query, out=io.StringIO())
        later.append(time.perf_counter() - mark)
    times["shell_later_statement_median_s"] = statistics.median(later[len(SHELL_QUERIES):])
    times["shell_later_statement_max_s"] = max(later[len(SHELL_QUERIES):])
    mark = time.perf_counter()
    session.register(None)
    times["register_every_table_s"] = time.perf_counter() - mark
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", default="c5efc72", help="commit whose code is the baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, baseline_checkout(args.baseline) as baseline:
        old = baseline / "lib"
        cache = os.path.join(scratch, "cache")
        # the first one-shot query of this checkout writes the class archive (sql.class_archive)
        first_s, _ = one_shot(ROOT / "lib", args.warehouse, cache=cache)
        archives = Path(cache) / "deepcrate" / "jvm"
        returned = time.monotonic()
        while not list(archives.glob("spark-*.jsa")) and time.monotonic() < returned + 600:
            time.sleep(1)
        ready_after_s = time.monotonic() - returned
        archive_mb = sum(p.stat().st_size for p in archives.glob("spark-*.jsa")) / 2**20
        runs = {"baseline": [], "this_without_archive": [], "this": [], "bare_spark_session": []}
        variants = (("baseline", old, ()), ("this_without_archive", ROOT / "lib", ("--set", "sql.class_archive=false")),
                    ("this", ROOT / "lib", ()))
        stderr_lines = {}
        for _ in range(args.repeat):  # interleaved: all of them see the same machine
            for name, lib, extra in variants:
                seconds, lines = one_shot(lib, args.warehouse, cache=cache, extra=extra)
                runs[name].append(seconds)
                stderr_lines[name] = lines
            runs["bare_spark_session"].append(bare_session())
    result = {
        "warehouse": args.warehouse, "query": QUERY, "cores": os.cpu_count(), "baseline_commit": args.baseline,
        "one_shot_s": {name: {"median": statistics.median(v), "runs": v} for name, v in runs.items()},
        "one_shot_ratio_this_to_baseline": statistics.median(runs["this"]) / statistics.median(runs["baseline"]),
        "first_one_shot_writing_the_archive_s": first_s,
        "archive_ready_after_it_returned_s": ready_after_s,
        "archive_mb": archive_mb,
        "stderr_lines": stderr_lines,
        "phases_this": phases(args.warehouse),
    }
    out = ROOT / "bench" / "results" / "sql_startup.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
