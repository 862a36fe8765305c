"""``deepcrate history``, ``rollback`` and ``vacuum``: the warehouse's published runs.

Every writing job publishes one run (:mod:`deepcrate.storage.run_log`): which Delta version of
each table, and which model and index folders, belong together. These commands list the
runs, make an earlier one current again (as a new run; nothing is deleted), and delete
the files that no recent run reads.
"""
from __future__ import annotations

from typing import Any, TextIO

from deepcrate.query.output import write_json, write_table
from deepcrate.storage import files, maintenance
from deepcrate.storage.run_log import RunLog
from deepcrate.storage.writer_lock import writer_lock


def history_rows(warehouse: str) -> list[dict[str, Any]]:
    """One row per published run, newest first: number, time, command, what changed, row counts."""
    runs = RunLog(files.warehouse_folder(warehouse))
    oldest_kept = runs.oldest_kept()
    return [{"run": record.number, "time": record.time, "command": record.command, "changed": record.changed,
             "rows": {name: entry.rows for name, entry in sorted(record.tables.items())},
             "models": sorted(name.split("/", 1)[1] for name in record.folders if name.startswith("models/")),
             "files_kept": record.number >= oldest_kept, "config": record.config}
            for record in runs.history()]


def write_history(rows: list[dict[str, Any]], *, out: TextIO, fmt: str = "table") -> None:
    """``rows`` as JSON (``fmt="json"``, one object per run) or as a table a person reads, each run
    with what it changed and its tables' row counts under it."""
    if fmt == "json":
        write_json(rows, out)
        return
    if not rows:
        out.write("no published runs (nothing written yet, or a plain-Parquet warehouse its next job converts)\n")
        return
    write_table(["run", "time", "command", "files"],
                [[row["run"], row["time"], row["command"], "kept" if row["files_kept"] else "vacuumed"] for row in rows],
                out, width=None, count=False,
                notes=[[f"changed: {', '.join(row['changed']) or 'nothing'}",
                        "rows:    " + ", ".join(f"{name} {count}" for name, count in row["rows"].items())]
                       for row in rows])


def rollback(*, warehouse: str, to: int) -> str:
    """Make run ``to`` current again, as a new run; returns a line saying what changed."""
    with writer_lock(warehouse, command=f"rollback to run {to}"):
        record = maintenance.rollback(warehouse, to)
    return (f"run {record.number}: the tables of run {to} are current again "
            f"(changed: {', '.join(record.changed) or 'nothing'})")


def vacuum(*, warehouse: str, keep: int, dry_run: bool = False) -> str:
    """Delete the files no run among the newest ``keep`` reads; returns lines saying how much went,
    or with ``dry_run`` which files would go (one per line), deleting nothing."""
    with writer_lock(warehouse, command="vacuum --dry-run" if dry_run else "vacuum"):
        unread = maintenance.vacuum(warehouse, keep=keep, dry_run=dry_run)
    size = sum(f.size for f in unread) / 1e6
    if dry_run:
        return "\n".join([*(f"{f.path}\t{f.size}" for f in unread),
                          f"dry run: vacuum would delete {len(unread)} files ({size:.1f} MB); nothing was deleted"])
    return f"vacuum: deleted {len(unread)} files ({size:.1f} MB); the newest {keep} runs keep every file they read"
