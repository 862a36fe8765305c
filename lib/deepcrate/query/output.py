"""What the reading commands print: a table a person reads, CSV, JSON, M3U; one way each.

JSON is one convention everywhere (README, "Using it"): a list of row objects, one object per
row, whose keys are the columns; dates as ISO strings, binaries as base64, a missing
value as ``null``. Rows are streamed, so a long answer is never held twice in memory.
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

FORMATS = ("table", "csv", "json")
_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def json_value(value: Any) -> Any:
    """A value as JSON-ready Python: dates ISO, binaries base64, NaN as None, numpy as Python, nested kept."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if hasattr(value, "asDict"):  # a Spark Row (a struct)
        return {k: json_value(v) for k, v in value.asDict().items()}
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_value(v) for v in value]
    if hasattr(value, "isoformat"):  # pandas' Timestamp
        return value.isoformat()
    return value


def write_json(rows: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """``rows`` as one JSON array of objects, written object by object; returns the count."""
    out.write("[")
    count = 0
    for row in rows:
        out.write(",\n " if count else "\n ")
        out.write(json.dumps({str(k): json_value(v) for k, v in row.items()}, ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def write_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO) -> int:
    """A header line, then one line per row (nested values as JSON); returns the count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([cell(v) for v in row])
        count += 1
    return count


def write_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO, *, width: int | None = 60,
                notes: Sequence[Sequence[str]] | None = None, count: bool = True) -> int:
    """Aligned columns for a person: values cut at ``width`` characters (None: whole), ``notes[i]`` as
    indented lines under row ``i``, and with ``count`` a closing ``(N rows)``. Returns the number of rows."""
    # a newline or tab inside a value (a file name may hold one) would break the row apart
    cells = [[_short(cell(v).translate(_ESCAPES), width) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for number, row in enumerate(cells):
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
        for note in (notes[number] if notes else ()):
            out.write(f"    {note}\n")
    if count:
        out.write(f"({len(cells)} row{'s' if len(cells) != 1 else ''})\n")
    return len(cells)


def write_m3u(entries: Iterable[tuple[str, float, str]], out: TextIO) -> int:
    """An extended M3U playlist of (name, seconds, location) that DJ software opens; returns the count."""
    out.write("#EXTM3U\n")
    count = 0
    for name, seconds, location in entries:
        out.write(f"#EXTINF:{round(seconds)},{name}\n{location}\n")
        count += 1
    return count


def cell(value: Any) -> str:
    """A value as CSV or table text: nested values as JSON, missing as empty."""
    value = json_value(value)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _short(text: str, width: int | None) -> str:
    return text if width is None or len(text) <= width else text[: width - 3] + "..."
