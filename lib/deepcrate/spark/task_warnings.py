"""Warnings raised inside Spark tasks, carried to the driver's log.

On a cluster an executor's Python warnings and log lines land in that executor's own
stderr, on another machine, where no user looks. A stage wraps each task's work in
:meth:`TaskWarnings.captured`; what the work warns (Python ``warnings`` and
deepcrate's own log records at WARNING and above) travels back with the task in an
accumulator, and :meth:`TaskWarnings.log` writes each distinct warning once on the
driver, with how many times it was raised: a thousand files with the same problem make
one line, not a thousand.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

from pyspark import AccumulatorParam, SparkContext

MAX_DISTINCT = 50  # distinct messages kept; the rest are counted under OTHERS
OTHERS = "(further distinct warnings, not shown)"

logger = logging.getLogger(__name__)


class _Counts(AccumulatorParam):
    """Merges {message: count} dicts, keeping at most MAX_DISTINCT messages."""

    def zero(self, value: dict[str, int]) -> dict[str, int]:
        return {}

    def addInPlace(self, value1: dict[str, int], value2: dict[str, int]) -> dict[str, int]:
        for message, count in value2.items():
            if message not in value1 and len(value1) >= MAX_DISTINCT and message != OTHERS:
                message = OTHERS
            value1[message] = value1.get(message, 0) + count
        return value1


class _Collect(logging.Handler):
    def __init__(self, into: dict[str, int]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        message = f"{record.name}: {record.getMessage()}"
        self.into[message] = self.into.get(message, 0) + 1


class TaskWarnings:
    """The warnings of one Spark job's tasks (see the module doc).

    Parameters
    ----------
    context : SparkContext
        The driver's context (an accumulator is registered with it).
    """

    def __init__(self, context: SparkContext) -> None:
        self.accumulator = context.accumulator({}, _Counts())
        self._logged: dict[str, int] = {}

    def __getstate__(self) -> dict:  # what a task receives
        return {"accumulator": self.accumulator, "_logged": {}}

    @contextlib.contextmanager
    def captured(self) -> Iterator[None]:
        """On an executor: collect what the enclosed work warns, and send it with the task."""
        counts: dict[str, int] = {}

        def count(message, category, filename, lineno, file=None, line=None) -> None:
            text = f"{category.__name__}: {message} ({os.path.basename(filename)}:{lineno})"
            counts[text] = counts.get(text, 0) + 1

        handler = _Collect(counts)
        package = logging.getLogger("deepcrate")
        package.addHandler(handler)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = count
                yield
        finally:
            package.removeHandler(handler)
            if counts:
                self.accumulator.add(counts)

    def log(self, *, stage: str) -> int:
        """On the driver, after a job: log each warning not logged before, once; returns how many were raised."""
        counts = dict(self.accumulator.value)
        new = {message: count - self._logged.get(message, 0) for message, count in counts.items()}
        for message, count in sorted(new.items(), key=lambda item: -item[1]):
            if count > 0:
                logger.warning("%s, on the executors: %s%s", stage, message, f" ({count} times)" if count > 1 else "")
        self._logged = counts
        return sum(count for count in new.values() if count > 0)
