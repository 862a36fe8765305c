"""The layer contract (.importlinter, docs/architecture.md) holds, and it would catch a wrong-way import."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter"), "--no-cache"],
                          capture_output=True, text=True, env=env, cwd=package_parent)


def test_the_package_keeps_its_layers():
    result = _lint_imports(ROOT / "lib")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("stages/evaluate", "from deepcrate.stages.ingest import ingest",
     "deepcrate.stages.evaluate is not allowed to import deepcrate.stages.ingest"),
    ("vectors/retrieval", "from deepcrate.stages.index import index_songs",
     "deepcrate.vectors is not allowed to import deepcrate.stages"),
    ("storage/warehouse", "from deepcrate.stages.rebuild import rebuild",
     "deepcrate.storage is not allowed to import deepcrate.stages"),
    ("query/recommend", "from deepcrate.stages.embed import embed",
     "deepcrate.query is not allowed to import deepcrate.stages"),
    ("query/report", "from deepcrate.query.sql import QuerySession",
     "deepcrate.query.report is not allowed to import deepcrate.query.sql"),
    ("spark/progress", "from deepcrate.models.store import latest_model",
     "deepcrate.spark is not allowed to import deepcrate.models"),
    ("models/store", "import pyspark", "deepcrate.models is not allowed to import pyspark"),
    ("storage/table_metadata", "from deepcrate.storage.spark_schemas import spark_schema",
     "deepcrate.query.recommend is not allowed to import pyspark"),
    ("audio/mfcc", "import pyspark", "deepcrate.audio is not allowed to import pyspark"),
    ("models/head_training", "import tensorflow", "deepcrate.models.head_training is not allowed to import tensorflow"),
    ("config/sections", "from deepcrate.config.loading import resolve_settings",
     "deepcrate.config.sections is not allowed to import deepcrate.config.loading"),
    ("config/sections", "import numpy", "deepcrate.config is not allowed to import numpy"),
])
def test_a_wrong_way_import_breaks_the_contract(tmp_path, module, line, broken):
    package = tmp_path / "deepcrate"
    shutil.copytree(ROOT / "lib" / "deepcrate", package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(package / f"{module}.py", "a", encoding="utf-8") as source:
        source.write(f"\n{line}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in result.stdout


def test_a_module_outside_every_layer_breaks_the_contract(tmp_path):
    package = tmp_path / "deepcrate"
    shutil.copytree(ROOT / "lib" / "deepcrate", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "stray.py").write_text('"""Not placed in any layer."""\n', encoding="utf-8")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1
    assert "deepcrate.stray" in result.stdout
