"""Wall time of each rebuild stage: Spark local mode vs a standalone cluster on this machine.

The catalogue is the demo one, 7 genres x 29 songs x 30 s (203 songs), written once
and cached. Both runs are ``spark-submit jobs/rebuild.py`` from scratch into a fresh
warehouse:

- local: ``--master local[N]`` (N = this machine's cores), every stage, training included
  (the baseline);
- cluster: a master and N workers of one core each on 127.0.0.1 (tests/local_cluster.py),
  executors running in the packed environment (``make package``), the code as a zipped
  wheel, and ``--model`` set to the model the local run trained: training runs in the
  driver either way, so it is measured once.

Both runs share this machine's cores, so the ratio cluster/local is the cost of the
cluster's machinery (executor start, unpacking the environment, shipping the code and
the shuffle between processes), not a speed-up.

    python bench/rebuild.py             # or: make bench-rebuild (builds dist/ first)

Writes bench/results/rebuild.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deepcrate.audio.demo import write_demo_catalogue

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's standalone cluster on 127.0.0.1
from local_cluster import SPARK_HOME, StandaloneCluster, code_zip

CACHE = Path.home() / ".cache" / "deepcrate-bench" / "rebuild-200"
STAGE_LINE = re.compile(r"^\s+(ingest|train|embed|index|evaluate)\s+(ran|skipped|given)\s+([\d.]+) s\s*(.*)$")
TOTALS = re.compile(r"rebuild finished in [\d.]+ s: (\d+) songs, (\d+) slices, (\d+) rejects")


def catalogue() -> Path:
    audio = CACHE / "audio"
    if not (audio / "manifest.csv").is_file():
        shutil.rmtree(audio, ignore_errors=True)
        print(f"writing the 203-song demo catalogue to {audio} (once)", flush=True)
        write_demo_catalogue(audio, songs_per_genre=29, seconds=30.0, seed=200)
    return audio


def submit(*, master: str, spark_args: list[str], job_args: list[str], env: dict, cwd: Path) -> dict:
    command = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", master, *spark_args,
               "--conf", "spark.ui.enabled=false", "--conf", f"spark.pyspark.driver.python={sys.executable}",
               str(ROOT / "jobs" / "rebuild.py"), *job_args]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"spark-submit --master {master} failed:\n{output[-4000:]}")
    totals = TOTALS.search(output)
    songs, slices, rejects = (int(n) for n in totals.groups())
    stages = {}
    for line in output.splitlines():
        if match := STAGE_LINE.match(line):
            name, status, seconds, detail = match.groups()
            seconds = float(seconds)
            stages[name] = {"status": status, "seconds": seconds, "detail": detail,
                            "songs_per_s": round(songs / seconds, 1) if status == "ran" and seconds else None}
    return {"master": master, "songs": songs, "slices": slices, "rejects": rejects,
            "submit_wall_s": round(wall, 1), "stages": stages}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    archive = ROOT / "dist" / "deepcrate-env.tar.gz"
    if not archive.is_file():
        print(f"{archive} is missing: run `make package`", file=sys.stderr)
        return 2
    audio = catalogue()
    cores = os.cpu_count() or 2
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYTHONPATH")}
    env.update(SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1", TF_CPP_MIN_LOG_LEVEL="2")
    common = ["--audio", str(audio), "--manifest", str(audio / "manifest.csv")]
    results: dict = {"catalogue": str(audio), "cores": cores}

    with tempfile.TemporaryDirectory(prefix="deepcrate-bench-rebuild-") as tmp:
        work = Path(tmp)
        print(f"local[{cores}]: rebuild from scratch, training included", flush=True)
        local = submit(master=f"local[{cores}]", spark_args=["--driver-memory", "4g", "--conf", f"spark.pyspark.python={sys.executable}"],
                       job_args=[*common, "--warehouse", str(work / "wh-local")], env=env, cwd=work)
        results["local"] = local
        model = next((work / "wh-local" / "models").glob("*/model.keras")).parent

        # What every executor of the cluster run does first (Spark unpacks --archives itself).
        (work / "unpacked").mkdir()
        started = time.perf_counter()
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(work / "unpacked")], check=True)
        results["env_unpack_s"] = round(time.perf_counter() - started, 1)
        shutil.rmtree(work / "unpacked")

        (work / "cluster").mkdir()
        cluster = StandaloneCluster(work / "cluster", workers=args.workers, cores=1, memory="3g")
        try:
            print(f"standalone cluster, {args.workers} workers x 1 core: rebuild from scratch with --model",
                  flush=True)
            spark_args = ["--archives", f"{archive}#env", "--py-files", str(code_zip(ROOT, work)),
                          "--conf", "spark.pyspark.python=./env/bin/python", "--conf", "spark.executor.memory=2g",
                          "--driver-memory", "4g"]
            results["cluster"] = submit(
                master=cluster.url, spark_args=spark_args, env={**cluster.env, **env}, cwd=work,
                job_args=[*common, "--warehouse", str(work / "wh-cluster"), "--model", str(model),
                          "--conf", str(ROOT / "conf" / "cluster.yaml")])
        finally:
            cluster.stop()

    print(f"\n{'stage':<8}{'local s':>9}{'songs/s':>9}{'cluster s':>11}{'songs/s':>9}{'cluster/local':>15}")
    for name in ("ingest", "train", "embed", "index", "evaluate"):
        here, there = results["local"]["stages"][name], results["cluster"]["stages"][name]
        ratio = there["seconds"] / here["seconds"] if there["status"] == "ran" and here["seconds"] else None
        results.setdefault("cluster_vs_local", {})[name] = None if ratio is None else round(ratio, 2)
        print(f"{name:<8}{here['seconds']:>9.1f}{here['songs_per_s'] or 0:>9.1f}"
              f"{there['seconds']:>11.1f}{there['songs_per_s'] or 0:>9.1f}"
              f"{'' if ratio is None else f'{ratio:.2f}':>15}   {there['status']}")
    ran = {n: s["seconds"] for n, s in results["local"]["stages"].items()}
    results["dominant_stage_local"] = max(ran, key=ran.get)
    print(f"local: {results['local']['songs']} songs; the longest stage is {results['dominant_stage_local']} "
          f"({ran[results['dominant_stage_local']] / sum(ran.values()):.0%} of the stage time); "
          f"spark-submit wall: local {results['local']['submit_wall_s']} s, "
          f"cluster {results['cluster']['submit_wall_s']} s; unpacking the environment once: "
          f"{results['env_unpack_s']} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rebuild.json").write_text(json.dumps(results, indent=2))
    print(f"written {out / 'rebuild.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
