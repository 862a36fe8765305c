"""jobs/ingest.py under a real spark-submit (local master), as a cluster user runs it."""
import os
import subprocess
import sys
from pathlib import Path

from helpers import delta_table, make_signal, table_metadata, write_audio

ROOT = Path(__file__).resolve().parents[1]


def test_spark_submit_ingest_job(tmp_path):
    for n in range(3):
        write_audio(tmp_path / "audio" / ("a" if n else "b") / f"{n}.mp3", make_signal(6, seed=n))
    (tmp_path / "audio" / "a" / "bad.mp3").write_text("nope")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1"}
    spark_submit = Path(sys.executable).parent / "spark-submit"
    result = subprocess.run(
        [str(spark_submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
         str(ROOT / "jobs" / "ingest.py"), "--audio", str(tmp_path / "audio"),
         "--warehouse", str(tmp_path / "wh"), "--set", "split.seed=3"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr  # spark-submit sends the driver's stderr to stdout
    assert "3 songs, 6 slices, 1 rejects" in output  # the default preset, musicnn: two 2.99 s slices in 6 s
    assert "master local[2]" in output  # spark-submit's master, not the config's local[*]
    # issue 42: one line about the settings, not the 100-line dump; the whole config goes into the run record
    assert "settings: the defaults with --set split.seed=3" in output and "split:\n  train: 0.65" not in output
    import json
    record = json.loads((tmp_path / "wh" / "_runs" / "00000001.json").read_text())
    assert record["config"]["split"] == {"train": 0.65, "validation": 0.25, "test": 0.1, "seed": 3}
    songs = delta_table(tmp_path / "wh" / "songs").to_pandas()
    assert sorted(songs["genre"]) == ["a", "a", "b"]
    metadata = table_metadata(tmp_path / "wh", "slices")
    # a child process: the product's defaults (musicnn), not the suite's seed recipe
    assert metadata["spectrogram"]["preset"] == "musicnn" and metadata["split"]["seed"] == 3
