"""``deepcrate sql``: run a Spark SQL query over every table of a warehouse."""
from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import json
from collections.abc import Iterable
from typing import Any, TextIO

from pyspark.sql import Row, SparkSession
from pyspark.sql.utils import AnalysisException

from deepcrate.errors import InputError
from deepcrate.warehouse import Warehouse

FORMATS = ("table", "csv", "json")


def run_query(spark: SparkSession, *, warehouse: str, query: str, out: TextIO, fmt: str = "table") -> int:
    """Register the warehouse's tables, run ``query`` and write its rows to ``out``.

    Returns the number of rows written.

    Raises
    ------
    InputError
        When the query does not parse or names an unknown table or column.
    """
    store = Warehouse(spark, warehouse)
    store.register()
    try:
        frame = spark.sql(query)
        columns = frame.columns
        rows = frame.toLocalIterator()
        first = next(rows, None)
    except AnalysisException as exc:
        raise InputError(f"query failed: {exc.getMessage() if hasattr(exc, 'getMessage') else exc}\n"
                         f"tables: {', '.join(store.tables()) or '(none)'}") from None
    except Exception as exc:  # parse errors arrive as ParseException etc.
        raise InputError(f"query failed: {str(exc).splitlines()[0]}") from None
    stream = rows if first is None else _chain(first, rows)
    writer = {"table": _write_table, "csv": _write_csv, "json": _write_json}[fmt]
    return writer(columns, (_plain(row) for row in stream), out)


def _chain(first: Row, rest: Iterable[Row]) -> Iterable[Row]:
    yield first
    yield from rest


def _plain(row: Row) -> list[Any]:
    return [_json_value(value) for value in row]


def _json_value(value: Any) -> Any:
    """Spark values as JSON-ready Python: dates ISO, binaries base64, arrays as lists."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, Row):
        return {k: _json_value(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _cell(value: Any) -> str:
    """A value as CSV/table text: nested values as JSON, missing as empty."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _write_csv(columns: list[str], rows: Iterable[list[Any]], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([_cell(v) for v in row])
        count += 1
    return count


def _write_json(columns: list[str], rows: Iterable[list[Any]], out: TextIO) -> int:
    # Streamed object by object: one JSON array without holding every row in memory.
    out.write("[")
    count = 0
    for row in rows:
        out.write(",\n " if count else "\n ")
        out.write(json.dumps(dict(zip(columns, row)), ensure_ascii=False))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def _write_table(columns: list[str], rows: Iterable[list[Any]], out: TextIO, *, width: int = 60) -> int:
    cells = [[_short(_cell(v), width) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()
    out.write(line + "\n" + "  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
    out.write(f"({len(cells)} row{'s' if len(cells) != 1 else ''})\n")
    return len(cells)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
