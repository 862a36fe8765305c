"""One writing job at a time: the warehouse's writer lock, and what a job committed before it publishes.

Every writing command holds ``WH/_LOCK`` (host, pid, start time, command, a token) for its
whole run (:func:`writer_lock`; re-entrant, so a rebuild holds it across its stages). The
file is created only if absent, which is atomic on a local folder and a shared POSIX mount;
a second writer is refused in one line naming the holder. A lock whose holder was a process
of this host that is no longer alive is taken over (moved aside under a unique name first,
so two newcomers cannot both take it). On HDFS and object stores creating a file only if
absent is a check, then a write (:func:`deepcrate.storage.files.create_new`): there the lock
tells apart writers that start seconds apart, and one writer at a time is the operator's job.

While a job runs, what it commits is kept in a draft run record; when it ends without an
error, one new run record publishes all of it at once (:mod:`deepcrate.storage.run_log`).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from deepcrate.config import to_mapping
from deepcrate.errors import WarehouseError
from deepcrate.storage import files, legacy
from deepcrate.storage.delta_tables import latest_version, restore
from deepcrate.storage.run_log import EMPTY, RunLog, RunRecord, TableVersion

logger = logging.getLogger(__name__)

LOCK_FILE = "_LOCK"
Stage = TypeVar("Stage", bound=Callable[..., Any])


@dataclass
class Job:
    """A writing job of this process: the lock it holds and what it has committed so far."""

    token: str
    command: str
    base: int  # the run that was current when the job began
    depth: int = 1
    tables: dict[str, TableVersion] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved settings, kept in the run record

    def applied_to(self, record: RunRecord) -> RunRecord:
        """``record`` with what this job committed: the run it publishes when it ends."""
        return record.with_changes(number=self.base + 1, command=self.command, tables=self.tables,
                                   folders=self.folders, changed=self.changed, base=self.base, config=self.config)


_HELD: dict[str, Job] = {}  # warehouse root -> the writing job this process runs there


def held_job(root: str) -> Job | None:
    """The writing job this process runs on warehouse ``root`` (a URI), or None."""
    return _HELD.get(root)


@contextlib.contextmanager
def writer_lock(warehouse: str, *, command: str, create: bool = False,
                config: dict[str, Any] | None = None) -> Iterator[None]:
    """Run the block as one writing job: hold the warehouse's writer lock (``WH/_LOCK``), and when
    the block ends without an error publish every table it committed as one run. Re-entrant in
    one process: a rebuild's stages are one job, published once.

    An interrupted job publishes nothing; the next job of the same command carries on from
    what it committed (the draft), so a rebuild after a crash does not redo the stages that
    finished; a job of another command drops the draft.

    Raises
    ------
    WarehouseError
        Another live process holds the lock (the message names its host, pid, start time and
        command), another job published meanwhile, or the folder is missing (``create=False``)
        or not writable.
    """
    root = files.warehouse_folder(warehouse, create=create)
    runs = RunLog(root)
    job = _HELD.get(root)
    if job:
        job.depth += 1
    else:
        token = _take_lock(root, command)
        try:
            job = _HELD[root] = _start_job(runs, token=token, command=command)
            job.config = config or {}
        except BaseException:
            _drop_lock(root, token)
            raise
    try:
        yield
        if job.depth == 1 and job.changed:
            check_lock(root)
            runs.publish(job.applied_to(runs.current() or EMPTY))
            runs.drop_draft()
            logger.info("published run %d of %s: %s", job.base + 1, root, ", ".join(dict.fromkeys(job.changed)))
    finally:
        job.depth -= 1
        if job.depth == 0:
            del _HELD[root]
            _drop_lock(root, job.token)


def holds_writer_lock(*, create: bool = False) -> Callable[[Stage], Stage]:
    """Decorate a stage ``f(spark, *, warehouse, ...)`` to run under :func:`writer_lock`."""
    def decorate(stage: Stage) -> Stage:
        @functools.wraps(stage)
        def locked(spark, *args, warehouse: str, **kwargs):
            settings = kwargs.get("settings")
            with writer_lock(warehouse, command=stage.__name__, create=create,
                             config=to_mapping(settings) if settings is not None else None):
                return stage(spark, *args, warehouse=warehouse, **kwargs)
        return locked  # type: ignore[return-value]
    return decorate


def check_lock(root: str) -> None:
    """Refuse to go on when the writing job of this process no longer holds the warehouse's lock
    (``WH/_LOCK`` deleted, or taken by another job, while it ran): what it wrote is not committed."""
    job = _HELD.get(root)
    if job is None:
        return
    lock = f"{root}/{LOCK_FILE}"
    holder = job_record(lock)
    if holder is None or holder.get("token") != job.token:
        now = "it is gone" if holder is None else (f"it now names {holder.get('command', '?')}, pid "
                                                   f"{holder.get('pid', '?')} on {holder.get('host', '?')}")
        raise WarehouseError(f"warehouse {root}: this {job.command} lost its writer lock {lock} while it "
                             f"ran ({now}); nothing more was committed or published: run it again")


def job_record(uri: str) -> dict[str, Any] | None:
    """The JSON record of a job in file ``uri`` (the writer lock, a scratch owner): None when the file
    is gone, {} when it names no job."""
    for _ in range(20):  # a holder that just created the file may not have written it yet
        try:
            text = files.read_text(uri)
        except WarehouseError:  # gone (released), or unreadable
            return None if not files.exists(uri) else {}
        if text.strip():
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return {}
        time.sleep(0.05)
    return {}


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _take_lock(root: str, command: str) -> str:
    lock = f"{root}/{LOCK_FILE}"
    token = uuid.uuid4().hex
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": command, "token": token,
              "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    for _ in range(3):
        if files.create_new(lock, json.dumps(holder)):
            return token
        other = job_record(lock)
        if other is None:  # released meanwhile
            continue
        if not other:
            raise WarehouseError(
                f"warehouse {root}: its writer lock {lock} holds no job's record (it should name the host, "
                f"pid and command of the job writing); if no job is writing to this warehouse, delete that file")
        if other.get("host") == holder["host"] and not process_alive(int(other.get("pid", -1))):
            _move_aside_stale(root, lock, other)
            continue
        raise WarehouseError(
            f"warehouse {root}: another job is writing to it: {other.get('command', '?')} on host "
            f"{other.get('host', '?')}, pid {other.get('pid', '?')}, since {other.get('started', '?')} "
            f"(lock {lock}; delete it only if that job is gone)")
    raise WarehouseError(f"warehouse {root}: could not take the writer lock {lock}")


def _move_aside_stale(root: str, lock: str, stale: dict[str, Any]) -> None:
    aside = f"{lock}.stale-{uuid.uuid4().hex[:8]}"
    if not files.move(lock, aside):
        return  # another newcomer moved it first
    if (job_record(aside) or {}).get("token") != stale.get("token"):  # moved a fresh lock: put it back
        files.move(aside, lock)
        return
    files.delete(aside)
    logger.warning("warehouse %s: took over the writer lock of %s (pid %s on %s, since %s), which is no "
                   "longer running", root, stale.get("command"), stale.get("pid"), stale.get("host"),
                   stale.get("started"))


def _drop_lock(root: str, token: str) -> None:
    lock = f"{root}/{LOCK_FILE}"
    holder = job_record(lock)
    if holder and holder.get("token") == token:
        files.delete(lock)


def _start_job(runs: RunLog, *, token: str, command: str) -> Job:
    current = runs.current() or EMPTY
    job = Job(token=token, command=command, base=current.number)
    draft = runs.draft()
    if draft is not None and draft.base == job.base and draft.command == command:
        logger.warning("warehouse %s: carrying on from an interrupted %s, which committed %s", runs.root,
                       draft.command, ", ".join(draft.changed))
        job.tables, job.folders, job.changed = dict(draft.tables), dict(draft.folders), list(draft.changed)
    elif draft is not None:  # another job published since, or this is another kind of job
        logger.warning("warehouse %s: dropping what an interrupted %s committed (%s); vacuum deletes its files",
                       runs.root, draft.command, ", ".join(draft.changed))
        runs.drop_draft()
    _restore_newest_versions(runs.root, {**current.tables, **job.tables})
    tables, folders = legacy.convert(runs.root, command=command) if current is EMPTY else ({}, {})
    if tables:  # a warehouse in the plain-Parquet layout: its tables become Delta tables, published with the job
        job.tables.update(tables)
        job.folders.update(folders)
        job.changed.extend([*tables, *folders])
        runs.write_draft(job.applied_to(EMPTY))
    return job


def _restore_newest_versions(root: str, expected: dict[str, TableVersion]) -> None:
    """Make each table's newest Delta version the one this job starts from again, for readers that
    open the Delta tables directly: an interrupted job may have committed versions nobody published."""
    for name, entry in expected.items():
        if latest_version(f"{root}/{name}") not in (entry.version, None):
            restore(f"{root}/{name}", entry.version, name=name,
                    properties={"deepcrate.command": "undo a version an interrupted job left unpublished"})
            logger.warning("warehouse %s: table %s: undid a version an interrupted job committed", root, name)
