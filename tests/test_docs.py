"""The docs say what the code does: generated references up to date, links that resolve,
a README a newcomer can read, table names only through the constants."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepcrate.storage.schemas import ABOUT, COLUMN_DOCS, TABLES, Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import reference

LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
# Warehouse methods that take a table (or folder) name first.
TABLE_METHODS = {"read", "exists", "metadata", "write_table", "write_table_files", "read_staged", "dataset",
                 "staging_uri", "table_uri", "version", "local_folder"}


def test_the_generated_references_match_the_code():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "reference.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_changed_schema_makes_the_check_fail(monkeypatch):
    import pyarrow as pa

    monkeypatch.setitem(TABLES, Table.REJECTS, TABLES[Table.REJECTS].append(pa.field("extra", pa.string())))
    monkeypatch.setitem(COLUMN_DOCS, Table.REJECTS, {**COLUMN_DOCS[Table.REJECTS], "extra": "new"})
    assert reference.main(["--check"]) == 1


def test_every_setting_and_every_column_says_what_it_means():
    rows = reference.settings()

    def leaves(section, prefix=""):
        for key, value in section.items():
            if isinstance(value, dict) and f"{prefix}{key}" != "spark.options":
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    assert [key for key, _, _ in rows] == list(leaves(yaml.safe_load(reference.DEFAULTS.read_text())))
    assert [key for key, _, meaning in rows if not meaning] == []
    for table, schema in TABLES.items():
        assert ABOUT[table]
        assert list(COLUMN_DOCS[table]) == schema.names
        assert all(COLUMN_DOCS[table].values()), table


def test_settings_are_read_with_their_defaults():
    rows = {key: value for key, value, _ in reference.settings()}
    assert rows["index.k"] == 10 and rows["train.pretrained"] == "MTT_musicnn+MSD_musicnn"
    assert rows["spark.options"]["spark.sql.session.timeZone"] == "UTC"
    assert "spark.options.spark.driver.memory" not in rows


def test_the_readme_is_short_and_stays_inside_the_repository():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 260
    assert "../" not in text


@pytest.mark.parametrize("page", ["README.md", *sorted(p.relative_to(ROOT).as_posix()
                                                        for p in (ROOT / "docs").glob("*.md"))])
def test_every_link_resolves(page):
    path = ROOT / page
    for target, _ in LINK.findall(path.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{page}: {target}"


def test_table_names_reach_the_warehouse_only_as_constants():
    names = {str(t) for t in Table}
    bare = []
    for module in sorted((ROOT / "lib" / "deepcrate").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in TABLE_METHODS and node.args):
                run_first = node.func.attr in {"staging_uri", "write_table", "write_table_files", "read_staged"}
                name = node.args[1] if run_first and len(node.args) > 1 else node.args[0]
                if isinstance(name, ast.Constant) and name.value in names:
                    bare.append(f"{module.name}:{node.lineno} {node.func.attr}({name.value!r})")
    assert bare == []
