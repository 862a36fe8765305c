"""Rollback and vacuum: the warehouse's history kept tidy, under the writer lock, without Spark.

A rollback publishes an earlier run's tables and folders again as a new run (nothing is
deleted); vacuum deletes the files that none of the newest runs reads (nor the draft of
an interrupted job), and can list them first without deleting anything.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from pyarrow.fs import FileSelector, FileType

from deepcrate.errors import WarehouseError
from deepcrate.storage import files
from deepcrate.storage.delta_tables import DELTA_LOG, committed_files, latest_version, restore
from deepcrate.storage.run_log import EMPTY, NOT_TABLES, RunLog, RunRecord, TableVersion, now
from deepcrate.storage.writer_lock import Job, held_job
from deepcrate.uris import filesystem_and_path, warehouse_uri

logger = logging.getLogger(__name__)

_NO_VERSION = TableVersion(version=-1, run="", folder="", rows=0)


@dataclass(frozen=True)
class Unread:
    """A file that no kept run reads: vacuum deletes it."""

    path: str  # relative to the warehouse folder
    size: int


def rollback(warehouse: str, number: int) -> RunRecord:
    """Publish run ``number``'s tables and folders of ``warehouse`` again, as a new run: each table
    whose Delta log has moved on gets a version that reads the same files (a Delta restore)."""
    root = warehouse_uri(warehouse)
    runs = RunLog(root)
    job = _own_job(root, runs, "rollback")
    target = runs.get(number)
    if number < runs.oldest_kept():
        raise WarehouseError(f"warehouse {root}: the files of run {number} were vacuumed; cannot roll back")
    current = runs.current() or EMPTY
    tables = {}
    for name, entry in target.tables.items():
        if latest_version(f"{root}/{name}") != entry.version:
            version = restore(f"{root}/{name}", entry.version, name=name,
                              properties={"deepcrate.command": f"rollback to run {number}"})
            entry = replace(entry, version=version)
        tables[name] = entry
    changed = sorted(name for name in {*tables, *current.tables}
                     if current.tables.get(name, _NO_VERSION).run != tables.get(name, _NO_VERSION).run)
    changed += sorted(name for name in {*target.folders, *current.folders}
                      if current.folders.get(name) != target.folders.get(name))
    record = RunRecord(number=job.base + 1, time=now(), command=f"rollback to run {number}", tables=tables,
                       folders=dict(target.folders), changed=changed)
    runs.publish(record)
    job.base = record.number  # the job itself has nothing more to publish
    return record


def vacuum(warehouse: str, *, keep: int, dry_run: bool = False) -> list[Unread]:
    """Delete the files of ``warehouse`` that no run among the newest ``keep`` reads (nor the draft
    of an interrupted job); with ``dry_run``, only list them. Returns them, sorted."""
    root = warehouse_uri(warehouse)
    runs = RunLog(root)
    _own_job(root, runs, "vacuum")
    if keep < 1:
        raise WarehouseError(f"vacuum: keep must be at least 1, got {keep}")
    kept = runs.history()[:keep]
    if not kept:
        return []
    draft = runs.draft()
    unread = _unread_files(root, [*kept, *([draft] if draft else [])])
    if dry_run:
        return unread
    filesystem, base = filesystem_and_path(root)
    emptied: set[str] = set()
    for file in unread:
        filesystem.delete_file(f"{base}/{file.path}")
        emptied.add(f"{base}/{file.path}".rsplit("/", 1)[0])
    for folder in sorted(emptied, key=len, reverse=True):  # run folders left empty, deepest first
        if not filesystem.get_file_info(FileSelector(folder, allow_not_found=True)):
            filesystem.delete_dir(folder)
    runs.mark_vacuumed(kept[-1].number)
    logger.info("vacuum %s: deleted %d files (%d bytes); runs %d-%d kept", root, len(unread),
                sum(f.size for f in unread), kept[-1].number, kept[0].number)
    return unread


def _unread_files(root: str, records: list[RunRecord]) -> list[Unread]:
    """The files under the tables and folders of ``records`` that none of them reads."""
    needed: set[str] = set()
    kept_folders: set[str] = set()  # table run folders and published folders, relative to the root
    for record in records:
        for name, entry in record.tables.items():
            needed.update(_relative(root, uri) for uri in committed_files(f"{root}/{name}", entry.version, name=name))
            kept_folders.add(f"{name}/{entry.folder}".rstrip("/"))
        kept_folders.update(record.folders.values())
    kept_trees = [path for path in kept_folders if path.split("/")[0] in NOT_TABLES]
    unread = []
    for name in sorted({name for record in records for name in record.tables} | NOT_TABLES):
        for info in files.listing(f"{root}/{name}", recursive=True):
            relative = _relative(root, info.path)
            if info.type != FileType.File or f"/{DELTA_LOG}/" in f"/{relative}":
                continue
            folder = relative.rsplit("/", 1)[0]
            if relative in needed or (not relative.endswith(".parquet") and folder in kept_folders) \
                    or any(relative.startswith(f"{path}/") for path in kept_trees):
                continue
            unread.append(Unread(path=relative, size=info.size))
    return sorted(unread, key=lambda f: f.path)


def _relative(root: str, location: str) -> str:
    """``location`` (a URI or a path on the root's file system) relative to warehouse ``root``."""
    base = filesystem_and_path(root)[1]
    path = filesystem_and_path(location)[1] if "://" in location or location.startswith("file:") else location
    return path[len(base) + 1:]


def _own_job(root: str, runs: RunLog, what: str) -> Job:
    job = held_job(root)
    if job is None:
        raise WarehouseError(f"{what} of {root} must run under the writer lock (writer_lock)")
    if runs.current() is None:
        raise WarehouseError(f"warehouse {root} has no published runs; nothing to {what}")
    return job
