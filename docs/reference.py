"""Generate the references that code can write: docs/tables.md (from deepcrate.storage.schemas) and
docs/settings.md (from conf/local.yaml, its values and comments).

    python docs/reference.py           # rewrite both
    python docs/reference.py --check   # exit 1 when either differs from the code (the tests run this)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from deepcrate.storage.schemas import ABOUT, COLUMN_DOCS, EXTENSIBLE, TABLES
from deepcrate.storage.spark_schemas import spark_schema

DOCS = Path(__file__).resolve().parent
DEFAULTS = DOCS.parent / "conf" / "local.yaml"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:][^#:]*?):(?P<value>[^#]*?)\s*(#\s?(?P<comment>.*))?$")
_COMMENT = re.compile(r"^(?P<indent> *)#\s?(?P<comment>.*)$")


def tables_markdown() -> str:
    out = ["# Tables", "",
           "Generated from `lib/deepcrate/storage/schemas.py` by `python docs/reference.py`; a test fails when the two "
           "differ. How to open the tables, the folders that are not tables (`models/`, `index/`) and what the "
           "warehouse guarantees: [warehouse.md](warehouse.md).", ""]
    for table in TABLES:
        out += [f"## {table}", "", ABOUT[table], "", "| column | type | nullable | meaning |", "|---|---|---|---|"]
        for field in spark_schema(table).fields:  # the types as Spark SQL shows them
            meaning = COLUMN_DOCS[table][field.name]
            out.append(f"| {field.name} | {field.dataType.simpleString()} | {'yes' if field.nullable else 'no'} "
                       f"| {_cell(meaning)} |")
        if table in EXTENSIBLE:
            out.append("| *extras* | string | yes | any further manifest columns |")
        out.append("")
    return "\n".join(out)


def settings() -> list[tuple[str, object, str]]:
    """(dotted key, default, meaning) of every setting in conf/local.yaml, in file order.

    A key's meaning is its trailing comment plus the comment-only lines indented under it.
    """
    values = yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))
    rows: list[list] = []
    stack: list[tuple[int, str]] = []
    last_indent = None
    inside_map = None  # the indent of a free-form map setting, whose keys are its value
    for line in DEFAULTS.read_text(encoding="utf-8").splitlines():
        if inside_map is not None and line.strip() and len(line) - len(line.lstrip()) > inside_map:
            continue
        inside_map = None
        comment = _COMMENT.match(line)
        if comment:
            if rows and last_indent is not None and len(comment["indent"]) > last_indent:
                rows[-1][2] = f"{rows[-1][2]} {comment['comment'].strip()}".strip()
            continue
        match = _KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [key for _, key in stack] + [match["key"].strip()]
        value = _lookup(values, path)
        if isinstance(value, dict) and not match["value"].strip() and not _is_map_setting(path):
            stack.append((indent, match["key"].strip()))
            last_indent = None
            continue
        rows.append([".".join(path), value, (match["comment"] or "").strip()])
        last_indent = indent
        if _is_map_setting(path):
            inside_map = indent
    return [(key, value, meaning) for key, value, meaning in rows]


def _is_map_setting(path: list[str]) -> bool:
    return path == ["spark", "options"]  # free-form: handed to Spark as it is


def _lookup(values: dict, path: list[str]) -> object:
    for key in path:
        values = values[key]
    return values


def settings_markdown() -> str:
    out = ["# Settings", "",
           "Every setting and its default, generated from `conf/local.yaml` by `python docs/reference.py` (a test "
           "fails when the two differ). How overlays work: [configuration.md](configuration.md).", ""]
    section = None
    for key, value, meaning in settings():
        top = key.split(".")[0]
        if top != section:
            section = top
            out += ["", f"## {section}", "", "| key | default | meaning |", "|---|---|---|"]
        shown = yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
        out.append(f"| `{key}` | `{shown}` | {_cell(meaning)} |")
    out.append("")
    return "\n".join(out).replace("\n\n\n", "\n\n")


def _cell(text: str) -> str:
    """``text`` inside a Markdown table cell: its pipes escaped."""
    return text.replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for name, text in (("tables.md", tables_markdown()), ("settings.md", settings_markdown())):
        path = DOCS / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"docs out of date with the code: {', '.join(stale)}; run python docs/reference.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
