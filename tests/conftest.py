"""Shared fixtures: one real local Spark session, real audio files written on the fly; the markers.

Every test is marked ``unit`` (no Spark, no model training: the whole set runs in about a
minute), ``spark`` (the local session, or a stage run through the CLI) or ``cluster`` (a
standalone cluster and spark-submit). ``pytest -m unit tests`` while working;
``make test`` runs everything.
"""
from __future__ import annotations

import os
import sys

import pytest

from deepcrate.config import resolve_settings
from deepcrate.spark.session import LOCAL_FILES, ensure_utf8_locale

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
ensure_utf8_locale()


# Modules whose tests run stages (through the CLI, a job or a model) even without the spark fixture.
_STAGE_MODULES = {"test_cli", "test_jobs", "test_rebuild", "test_notebook", "test_musicnn", "test_train",
                  "test_contrastive", "test_embed_index", "test_evaluate", "test_ingest", "test_acquire",
                  "test_demo", "test_warehouse", "test_faults"}


def pytest_configure(config):
    config.addinivalue_line("markers", "unit: needs neither Spark nor a training run")
    config.addinivalue_line("markers", "spark: runs Spark locally (or a stage that starts it)")
    config.addinivalue_line("markers", "cluster: starts a standalone Spark cluster and submits to it")


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.path.stem
        if module == "test_cluster":
            item.add_marker("cluster")
        elif "spark" in item.fixturenames or module in _STAGE_MODULES:
            item.add_marker("spark")
        else:
            item.add_marker("unit")


SEED_RECIPE = {"spectrogram": {"preset": "seed"}, "train": {"model": "seed", "objective": "classify"}}


@pytest.fixture(scope="session", autouse=True)
def seed_recipe_by_default():
    """In this process the defaults are the seed recipe (MISSION.md: 256x256 linear slices, the
    original CNN): most tests exercise the stages on it, fast and with its exact numbers. The
    product's default (musicnn) is tested where a test asks for it (tests/test_musicnn.py) and
    where a test runs the product in a child process (spark-submit, the cluster)."""
    import deepcrate.config.loading

    packaged = deepcrate.config.loading.default_config

    def seed_defaults():
        config = packaged()
        for section, values in SEED_RECIPE.items():
            config[section].update(values)
        return config

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deepcrate.config.loading, "default_config", seed_defaults)
        yield


@pytest.fixture(scope="session", autouse=True)
def own_cache_folder(tmp_path_factory):
    """The user's cache (``XDG_CACHE_HOME``: the JVM's class archive) is the session's own folder,
    for this process and every command it starts."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2,2]")  # 2 cores; a failed task is retried once
        .appName("deepcrate-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config(map=LOCAL_FILES)  # as deepcrate's own session reads local files
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def demo_warehouse(spark, tmp_path_factory):
    """A small real warehouse: the demo catalogue (7 genres x 8 songs x 11 s = 2 slices each), ingested.

    Shared read-only; a test that writes to a warehouse copies it first (:func:`copy_warehouse`).
    """
    from deepcrate.audio.demo import write_demo_catalogue
    from deepcrate.stages.ingest.job import ingest

    root = tmp_path_factory.mktemp("demo")
    manifest = write_demo_catalogue(root / "audio", songs_per_genre=8, seconds=11.0, seed=3)
    ingest(spark, audio=str(root / "audio"), manifest=str(manifest), warehouse=str(root / "wh"),
           settings=resolve_settings())
    return root / "wh"


MUSICNN = ["spectrogram.preset=musicnn", "train.model=musicnn"]


@pytest.fixture(scope="session")
def musicnn_warehouse(spark, tmp_path_factory):
    """The demo catalogue (7 genres x 5 songs x 7 s = 2 musicnn slices each), ingested with the musicnn
    preset, with its pretrained features (the features stage). Shared read-only."""
    from deepcrate.audio.demo import write_demo_catalogue
    from deepcrate.stages.features import compute_features
    from deepcrate.stages.ingest.job import ingest

    root = tmp_path_factory.mktemp("musicnn")
    manifest = write_demo_catalogue(root / "audio", songs_per_genre=5, seconds=7.0, seed=2)
    settings = resolve_settings(overrides=MUSICNN)
    ingest(spark, audio=str(root / "audio"), manifest=str(manifest), warehouse=str(root / "wh"), settings=settings)
    compute_features(spark, warehouse=str(root / "wh"), settings=settings)
    return root / "wh"


@pytest.fixture(scope="session")
def rebuilt(spark, tmp_path_factory):
    """A demo catalogue (7 genres x 5 songs x 11 s, one bad file) rebuilt from scratch with the CLI,
    which also writes the report (ROOT/report.html).

    Returns (root, manifest, the CLI arguments, the CLI's output). Shared read-only.
    Depends on ``spark`` so that the CLI finds the retrying test session.
    """
    import contextlib
    import io

    from deepcrate.audio.demo import write_demo_catalogue
    from deepcrate.cli import main

    # spaces, unicode, '#', '?' and a lone '%' in every path: they must survive Spark, delta-rs and the URIs
    root = tmp_path_factory.mktemp("rebuild") / "my crate ü#1?100%"
    manifest = write_demo_catalogue(root / "audio", songs_per_genre=5, seconds=11.0, seed=5)
    (root / "audio" / "trance" / "broken.mp3").write_bytes(b"not audio")
    args = ["rebuild", "--audio", str(root / "audio"), "--manifest", str(manifest), "--warehouse", str(root / "wh"),
            "--set", "train.max_epochs=2", "--set", "train.batch_size=16", "--set", "train.shuffle_buffer=64",
            "--report", str(root / "report.html")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return root, manifest, args, out.getvalue()
