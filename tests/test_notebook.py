"""notebooks/explore.ipynb runs top to bottom on a rebuilt demo warehouse, and matches its .py source."""
from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_the_notebook_and_its_py_source_hold_the_same_cells():
    paired = nbformat.read(NOTEBOOKS / "explore.ipynb", as_version=4)
    source = jupytext.read(NOTEBOOKS / "explore.py")
    assert [(c.cell_type, c.source) for c in paired.cells] == [(c.cell_type, c.source) for c in source.cells]
    assert not any(c.get("outputs") for c in paired.cells)  # committed without outputs


def test_the_notebook_runs_on_a_rebuilt_warehouse(rebuilt, tmp_path, monkeypatch):
    root, _, _, _ = rebuilt
    monkeypatch.setenv("DEEPCRATE_WAREHOUSE", str(root / "wh"))
    notebook = nbformat.read(NOTEBOOKS / "explore.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "tables: evaluation, mfcc_features, recommendations, rejects, slice_embeddings, slices, song_embeddings, songs" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # slices per genre, confusion matrix, embedding map
    players = [o for o in outputs if "<audio" in o.get("data", {}).get("text/html", "")]
    assert len(players) == 3 * 4  # three seed songs, each with three neighbours
    tables = [o for o in outputs if "text/html" in o.get("data", {}) and "<table" in o["data"]["text/html"]]
    assert any("rank" in t["data"]["text/html"] and "similarity" in t["data"]["text/html"] for t in tables)
