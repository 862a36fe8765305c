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

import contextlib
import itertools
import signal
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO

from pyspark.sql import Row, SparkSession

from deepcrate.errors import InputError, spark_error_line
from deepcrate.query.output import write_csv, write_json, write_table
from deepcrate.query.sql_guard import check_read_only, quiet_query_errors
from deepcrate.spark.session import session_conf
from deepcrate.storage.arrow_tables import unreadable_file_error
from deepcrate.storage.warehouse import Warehouse


class QuerySession:
    """The tables of one warehouse run, for one statement or a whole shell sitting.

    A table is registered as a Spark SQL view the first time a statement names it (each costs
    a Delta log read and a Parquet schema), all of the run the session was opened on.

    Parameters
    ----------
    spark : SparkSession
    warehouse : str
        The warehouse folder or URI.
    as_of : int, optional
        Read the tables as published run ``as_of`` left them.
    timeout_s : float
        A statement still running after this long is cancelled, with its Spark jobs.
    """

    def __init__(self, spark: SparkSession, *, warehouse: str, as_of: int | None = None,
                 timeout_s: float = 600.0) -> None:
        self.spark = spark
        self.timeout_s = timeout_s
        self._store = Warehouse(spark, warehouse, as_of=as_of)
        current = self._store.runs.current() if as_of is None else None
        if current is not None:  # pinned: every statement of a sitting reads the same run
            self._store = Warehouse(spark, warehouse, as_of=current.number)
        self.tables = self._store.tables()
        self._registered: set[str] = set()

    def register(self, names: set[str] | None = None) -> None:
        """Register ``names`` (default: every table) that are not registered yet."""
        wanted = set(self.tables) if names is None else names & set(self.tables)
        self._registered |= set(self._store.register(wanted - self._registered))

    def run(self, query: str, *, out: TextIO, fmt: str = "table") -> int:
        """Run ``query`` and write its rows to ``out`` in ``fmt`` (table, csv, json); returns the rows written.

        Raises
        ------
        InputError
            When the query does not parse, names an unknown table or column, is not a
            read-only query over the warehouse's tables (:func:`~deepcrate.query.sql_guard.check_read_only`),
            fails, or runs out of time.
        KeyboardInterrupt
            Ctrl-C: the statement's Spark jobs were cancelled.
        """
        with _cancellable(self.spark, timeout_s=self.timeout_s) as cancelled:
            try:
                check_read_only(self.spark, query, tables=self.tables, register=self.register)
            except Exception:  # Ctrl-C cancelled a job of the registration (a schema read)
                _stop_if(cancelled(), timeout_s=self.timeout_s)
                raise
            with session_conf(self.spark, {"spark.sql.runSQLOnFiles": "false"}), quiet_query_errors():
                try:  # the first row before any output: most failures come before it
                    _stop_if(cancelled(), timeout_s=self.timeout_s)
                    frame = self.spark.sql(query)
                    rows = frame.toLocalIterator()
                    first = next(rows, None)
                    stream = () if first is None else itertools.chain([first], rows)
                    written = _write(fmt, frame.columns, stream, out)
                except Exception as exc:  # a damaged file, a failed assert_true(), or a cancel
                    _stop_if(cancelled(), timeout_s=self.timeout_s)
                    raise unreadable_file_error(exc) or InputError(f"query failed: {spark_error_line(exc)}") from None
            _stop_if(cancelled(), timeout_s=self.timeout_s)  # Ctrl-C as the last rows came
            return written


def _stop_if(reason: str | None, *, timeout_s: float) -> None:
    if reason == "timeout":
        raise InputError(f"query cancelled after {timeout_s:g} s (sql.timeout_s)") from None
    if reason == "interrupt":
        raise KeyboardInterrupt from None


@contextlib.contextmanager
def _cancellable(spark: SparkSession, *, timeout_s: float) -> Iterator[Callable[[], str | None]]:
    """Run the block's Spark jobs in a job group of their own, cancelled after ``timeout_s`` or on
    Ctrl-C; the callable says why it was cancelled ("timeout", "interrupt") or None.

    Ctrl-C only asks for the cancel, from another thread: raising inside the call the main
    thread is blocked in would tear py4j's connection (a logged traceback) instead."""
    context = spark.sparkContext
    group = f"deepcrate-sql-{uuid.uuid4().hex[:12]}"
    context.setJobGroup(group, "deepcrate sql", interruptOnCancel=True)
    reasons: list[str] = []
    done = threading.Event()

    def keep_cancelling() -> None:  # a job the statement starts after the cancel is cancelled too
        tracker = context.statusTracker()
        while True:
            if set(tracker.getJobIdsForGroup(group)) & set(tracker.getActiveJobsIds()):
                context.cancelJobGroup(group)
            if done.wait(0.2):
                return

    def cancel(reason: str) -> None:
        if not reasons:
            reasons.append(reason)
            threading.Thread(target=keep_cancelling, daemon=True).start()

    timer = threading.Timer(timeout_s, cancel, args=("timeout",))
    timer.daemon = True
    timer.start()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel("interrupt")) if in_main else None
    try:
        yield lambda: reasons[0] if reasons else None
    finally:
        done.set()
        timer.cancel()
        if in_main:
            signal.signal(signal.SIGINT, previous)
        context.setLocalProperty("spark.jobGroup.id", None)


def _write(fmt: str, columns: list[str], rows: Iterable[Row], out: TextIO) -> int:
    if fmt == "json":
        return write_json((dict(zip(columns, row)) for row in rows), out)
    if fmt == "csv":
        return write_csv(columns, rows, out)
    return write_table(columns, rows, out)
