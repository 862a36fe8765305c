"""Fault injection: make the first attempt of a stage's first task fail halfway.

Spark retries a failed task (``local[N,F]`` locally, ``spark.task.maxFailures`` on a
cluster) and commits only the output of the attempt that succeeds. This hook lets
tests prove that a worker dying mid-stage costs time only: counts stay exact and
nothing is written twice. It is switched on per thread with a Spark local property,
so it cannot fire by accident::

    spark.sparkContext.setLocalProperty(INJECT_FAILURE, "ingest,embed")
"""
from __future__ import annotations

INJECT_FAILURE = "deepcrate.inject_failure"


class InjectedFailure(RuntimeError):
    """The failure :func:`fail_if_injected` raises."""


def fail_if_injected(stage: str) -> None:
    """On an executor, raise when ``stage`` is switched on and this is partition 0, attempt 0."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None or context.partitionId() != 0 or context.attemptNumber() != 0:
        return
    stages = (context.getLocalProperty(INJECT_FAILURE) or "").split(",")
    if stage in stages:
        raise InjectedFailure(f"injected failure in the first attempt of {stage}'s first task")
