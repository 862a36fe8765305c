"""jobs/rebuild.py on a real Spark standalone cluster (a master and two workers on 127.0.0.1).

The executors get nothing from this checkout's virtualenv: their Python is the packed
environment (``make package``: dist/deepcrate-env.tar.gz, shipped with --archives), which
has no TensorFlow (the product's defaults run none on executors), and the code is a wheel
built here (shipped with --py-files).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deepcrate.audio.demo import write_demo_catalogue

from helpers import delta_table
from local_cluster import SPARK_HOME, StandaloneCluster, code_zip

ROOT = Path(__file__).resolve().parents[1]
ENV_ARCHIVE = ROOT / "dist" / "deepcrate-env.tar.gz"


@pytest.fixture
def cluster(tmp_path):
    (tmp_path / "cluster").mkdir()
    started = StandaloneCluster(tmp_path / "cluster", workers=2)
    yield started
    started.stop()
    assert all(p.poll() is not None for p in started.processes)


def test_spark_submit_rebuild_on_a_standalone_cluster_with_the_packed_environment(cluster, tmp_path):
    if not ENV_ARCHIVE.is_file():
        pytest.fail(f"{ENV_ARCHIVE} is missing: run `make package` (make test does)")
    # The code as a wheel, built now so that the executors run this checkout.
    (tmp_path / "dist").mkdir()
    code = code_zip(ROOT, tmp_path / "dist")
    manifest = write_demo_catalogue(tmp_path / "audio", songs_per_genre=5, seconds=11.0, seed=2)
    (tmp_path / "audio" / "trance" / "broken.mp3").write_bytes(b"not audio")

    command = [
        str(SPARK_HOME / "bin" / "spark-submit"), "--master", cluster.url,
        "--archives", f"{ENV_ARCHIVE}#env", "--py-files", str(code),
        "--conf", "spark.pyspark.python=./env/bin/python",
        "--conf", f"spark.pyspark.driver.python={sys.executable}",
        "--conf", "spark.executor.memory=2g", "--conf", "spark.ui.enabled=false",
        str(ROOT / "jobs" / "rebuild.py"), "--audio", str(tmp_path / "audio"), "--manifest", str(manifest),
        "--warehouse", str(tmp_path / "wh"), "--conf", str(ROOT / "conf" / "cluster.yaml"),
        "--set", "train.max_epochs=2",
    ]
    env = {k: v for k, v in cluster.env.items() if k not in ("PYSPARK_PYTHON", "PYTHONPATH")}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, cwd=tmp_path)  # a loaded machine: musicnn on 2 cores
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"master {cluster.url}" in output
    # the product's defaults (musicnn: 3 slices of 2.99 s per 11 s song), trained on the driver
    assert "35 songs, 105 slices, 1 rejects" in output and "rejected, not_audio: 1" in output
    for stage in ("ingest", "features", "train", "embed", "index", "evaluate"):  # features: OpenVINO on the executors
        assert f"  {stage:<8} ran" in output

    songs = delta_table(tmp_path / "wh" / "songs").to_pandas()
    embeddings = delta_table(tmp_path / "wh" / "slice_embeddings").to_pandas()
    recommendations = delta_table(tmp_path / "wh" / "recommendations").to_pandas()
    assert len(songs) == 35 and songs["genre"].nunique() == 7
    assert len(embeddings) == 105 and not embeddings.duplicated(["song_id", "slice_idx"]).any()
    assert all(len(p) == 400 for p in embeddings["pretrained"])  # both musicnn networks' untuned features, on the executors
    assert set(recommendations["song_id"]) == set(songs["song_id"])
    assert (recommendations.groupby("song_id").size() == 10).all()
    # Both executors ran in the unpacked environment, not in this checkout's virtualenv.
    executors = list((cluster.work).glob("worker*/app-*/*"))
    assert len(executors) == 2 and all((e / "env" / "bin" / "python").exists() for e in executors)
    installed = {p.name for e in executors for p in (e / "env").glob("lib/python3*/site-packages/*")}
    assert "openvino" in installed and "tensorflow" not in installed  # features on OpenVINO, the head in numpy
    assert all((e / "deepcrate.zip").exists() for e in executors)
