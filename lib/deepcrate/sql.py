"""``deepcrate sql``: one read-only Spark SQL query over the tables of a warehouse.

The query tool is not a way in: the statement is parsed by Spark's own parser and
refused, before anything runs, unless it is one query (SELECT, WITH, VALUES, TABLE)
or one of SHOW, DESCRIBE, EXPLAIN, with no write anywhere in its plan (INSERT, CREATE,
DROP, SET, CACHE, compound BEGIN ... END blocks, ...), reading only the warehouse's tables
by their one-part names (no ``text.`/etc/passwd```, no other catalog) and calling no
Java method by reflection. Reading files by path is also switched off in the session
(``spark.sql.runSQLOnFiles``) as a second lock on the same door.
"""
from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import decimal
import json
import re
from collections.abc import Iterable
from typing import Any, TextIO

from pyspark.sql import Row, SparkSession
from pyspark.sql.utils import AnalysisException

from deepcrate.errors import InputError, first_line
from deepcrate.warehouse import Warehouse, unreadable_file_error

FORMATS = ("table", "csv", "json")


def run_query(spark: SparkSession, *, warehouse: str, query: str, out: TextIO, fmt: str = "table",
              as_of: int | None = None) -> int:
    """Register the warehouse's tables (as run ``as_of`` left them, when given), run ``query`` and
    write its rows to ``out``.

    Returns the number of rows written.

    Raises
    ------
    InputError
        When the query does not parse, names an unknown table or column, or is not a
        read-only query over the warehouse's tables (:func:`check_read_only`).
    """
    store = Warehouse(spark, warehouse, as_of=as_of)
    store.register()
    check_read_only(spark, query)
    files_by_path = spark.conf.get("spark.sql.runSQLOnFiles", "true")
    spark.conf.set("spark.sql.runSQLOnFiles", "false")
    try:
        with _quiet_query_errors():
            try:
                frame = spark.sql(query)
                columns = frame.columns
                rows = frame.toLocalIterator()
                first = next(rows, None)
            except AnalysisException as exc:
                raise InputError(f"query failed: {first_line(exc)} "
                                 f"(tables: {', '.join(store.tables()) or 'none'})") from None
            except Exception as exc:  # a damaged file, or a parse error (ParseException etc.)
                raise unreadable_file_error(exc) or InputError(f"query failed: {first_line(exc)}") from None
            stream = rows if first is None else _chain(first, rows)
            writer = {"table": _write_table, "csv": _write_csv, "json": _write_json}[fmt]
            return writer(columns, (_plain(row) for row in stream), out)
    finally:
        spark.conf.set("spark.sql.runSQLOnFiles", files_by_path)


@contextlib.contextmanager
def _quiet_query_errors():
    """pyspark logs a failed query's whole Java stack as JSON (~10 KB, logger SQLQueryContextLogger)
    before raising it; the user gets the one line of the InputError instead."""
    from pyspark.logger import PySparkLogger

    logger = PySparkLogger.getLogger("SQLQueryContextLogger")
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


# Commands that only read; every other Command (CREATE, DROP, SET, CACHE, ...) is refused.
READ_ONLY_COMMANDS = frozenset({"ShowTables", "ShowTablesExtended", "ShowViews", "ShowColumns", "ShowFunctions",
                                "DescribeRelation", "DescribeColumn", "DescribeQueryCommand", "DescribeFunction",
                                "ExplainCommand"})
# Plan nodes that write without being Commands.
WRITES = frozenset({"InsertIntoStatement", "InsertIntoDir", "AppendData", "OverwriteByExpression",
                    "OverwritePartitionsDynamic", "MergeIntoTable", "DeleteFromTable", "UpdateTable"})
REFLECTION = frozenset({"reflect", "java_method", "try_reflect"})
ALLOWED = "one read-only query (SELECT, WITH, VALUES, SHOW, DESCRIBE, EXPLAIN) over the warehouse's tables"


def check_read_only(spark: SparkSession, query: str) -> None:
    """Refuse ``query`` unless it is :data:`ALLOWED`, decided from Spark's parsed plan.

    Raises
    ------
    InputError
        One line: what was refused and why, or the parse error.
    """
    jvm = spark._jvm
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(query)
    except Exception as exc:  # ParseException: its first line says where
        raise InputError(f"query failed: {first_line(exc)}") from None
    command = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.plans.logical.Command")
    query_plan = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.plans.QueryPlan")
    subquery = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.expressions.SubqueryExpression")
    pending = [plan]
    while pending:
        node = pending.pop()
        kind = node.getClass().getSimpleName()
        if kind in WRITES or (command.isInstance(node) and kind not in READ_ONLY_COMMANDS):
            raise InputError(f"refused: {_statement(kind)} is not read-only; deepcrate sql runs {ALLOWED}")
        if kind == "UnresolvedRelation" and node.multipartIdentifier().size() != 1:
            name = ".".join(_items(node.multipartIdentifier()))
            raise InputError(f"refused: {name} is not a table of the warehouse (files by path and other catalogs "
                             f"are not read); deepcrate sql runs {ALLOWED}")
        if kind == "UnresolvedFunction" and _items(node.nameParts())[-1].lower() in REFLECTION:
            raise InputError(f"refused: {_items(node.nameParts())[-1]}() calls Java methods; "
                             f"deepcrate sql runs {ALLOWED}")
        pending += _items(node.children()) + _items(node.innerChildren())
        if query_plan.isInstance(node):
            pending += _items(node.expressions())
        if subquery.isInstance(node) or kind == "DescribeQueryCommand":
            pending.append(node.plan())
        if kind == "ExplainCommand":  # the statement it explains is a field, not a child
            pending.append(node.logicalPlan())


def _items(seq) -> list:
    """A Scala Seq's elements."""
    return [seq.apply(i) for i in range(seq.size())]


def _statement(kind: str) -> str:
    """A plan node's name as the statement it came from: ``CreateTableAsSelect`` -> ``CREATE TABLE AS SELECT``."""
    for suffix in ("Statement", "Command"):
        kind = kind.removesuffix(suffix)
    if kind == "CompoundBody":
        return "a BEGIN ... END block"
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", kind).upper()



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
    # a newline or tab inside a value (a file name may hold one) would break the row apart
    cells = [[_short(_cell(v).translate(_ESCAPES), width) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()
    out.write(line + "\n" + "  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
    out.write(f"({len(cells)} row{'s' if len(cells) != 1 else ''})\n")
    return len(cells)


_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
