"""Download a catalogue's audio from a manifest of URLs, politely and resumably.

Every manifest row ends as one row of the ``downloads`` status table: downloaded,
already present from an earlier run, failed (with the HTTP status and a message), or a
repeat of an earlier row's URL. Files are streamed to ``DIR/.partial/`` and renamed
into place only when complete, so a file under its final name is always whole; a
rerun skips every file an earlier run completed.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deepcrate import __version__
from deepcrate.config import Settings
from deepcrate.spark.task_warnings import TaskWarnings
from deepcrate.stages.acquire.fetch import PARTIAL, HostPacer, fetch
from deepcrate.stages.acquire.manifest import (
    DOWNLOADED,
    DUPLICATE,
    FAILED,
    INCOMPLETE,
    METADATA_COLUMNS,
    PRESENT,
    Download,
    plan_downloads,
    read_url_manifest,
)
from deepcrate.storage.schemas import DOWNLOADS, Table
from deepcrate.storage.spark_schemas import spark_schema
from deepcrate.storage.table_metadata import DownloadsMetadata
from deepcrate.storage.warehouse import Warehouse
from deepcrate.storage.writer_lock import holds_writer_lock

logger = logging.getLogger(__name__)


@dataclass
class AcquireSummary:
    downloads: list[Download]
    manifest: Path
    seconds: float

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for item in self.downloads:
            result[item.status] = result.get(item.status, 0) + 1
        return result

    def lines(self) -> list[str]:
        counts = self.counts()
        total_bytes = sum(d.bytes or 0 for d in self.downloads if d.status == DOWNLOADED)
        lines = [f"{len(self.downloads)} URLs in {self.seconds:.1f} s: "
                 + ", ".join(f"{counts.get(s, 0)} {s}" for s in (DOWNLOADED, PRESENT, INCOMPLETE, FAILED, DUPLICATE))
                 + f" ({total_bytes / 1e6:.1f} MB downloaded)"]
        failures = [d for d in self.downloads if d.status in (FAILED, INCOMPLETE)]
        for item in failures[:10]:
            lines.append(f"  {item.status}: {item.url}: {item.error}")
        if len(failures) > 10:
            lines.append(f"  ... {len(failures) - 10} more failures in the downloads table")
        lines.append(f"ingest manifest: {self.manifest}")
        return lines


@holds_writer_lock(create=True)
def acquire(spark, *, manifest: str, audio: str, warehouse: str, settings: Settings) -> AcquireSummary:
    """Download every URL of ``manifest`` into ``audio``; write ``audio/manifest.csv`` and ``downloads``.

    Files an earlier run completed are not downloaded again: those ``audio/manifest.csv``
    lists for the same URL with the recorded size, and those at a URL's planned path that
    the manifest does not list (a run killed before writing it; files only ever reach
    their final name complete). With
    ``acquire.distributed`` the downloads run on Spark executors, which must see
    ``audio`` at the same path (shared storage).
    """
    started = time.monotonic()
    audio_dir = Path(audio).resolve()
    store = Warehouse(spark, warehouse, create=True)
    audio_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(audio_dir / PARTIAL, ignore_errors=True)  # what a killed run left half-written
    downloads = plan_downloads(read_url_manifest(manifest))
    done_before = _completed(audio_dir)
    listed_paths = {entry["path"] for entry in done_before.values()}
    todo = []
    for item in downloads:
        if item.status:
            continue
        previous = done_before.get(item.url)
        size = _size(audio_dir / item.path)
        if previous and previous["path"] == item.path and size == previous["bytes"]:
            item.status, item.bytes = PRESENT, size
        elif not previous and item.path not in listed_paths and size:
            # Renamed into place only when complete, but the run died before writing manifest.csv.
            item.status, item.bytes = PRESENT, size
        else:
            todo.append(item)
    logger.info("%d URLs: %d to download, %d already present, %d refused or repeated", len(downloads), len(todo),
                sum(d.status == PRESENT for d in downloads), sum(d.status in (FAILED, DUPLICATE) for d in downloads))
    if settings.acquire.distributed and todo:
        _fetch_on_spark(spark, todo, audio_dir=audio_dir, settings=settings)
    else:
        _fetch_here(todo, audio_dir=audio_dir, settings=settings)
    manifest_path = _write_ingest_manifest(audio_dir, downloads)
    shutil.rmtree(audio_dir / PARTIAL, ignore_errors=True)
    _write_downloads_table(spark, store, downloads)
    return AcquireSummary(downloads=downloads, manifest=manifest_path, seconds=time.monotonic() - started)


def _fetch_here(todo: list[Download], *, audio_dir: Path, settings: Settings) -> None:
    """A bounded thread pool in this process, with progress lines."""
    pacer = HostPacer(settings.acquire.per_host_delay_s)
    finished = _Counter()
    with ThreadPoolExecutor(max_workers=settings.acquire.workers, thread_name_prefix="acquire") as pool:
        futures = [pool.submit(_fetch_counted, item, audio_dir, settings, pacer, finished) for item in todo]
        last = time.monotonic()
        while not all(f.done() for f in futures):
            time.sleep(0.1)
            if time.monotonic() - last >= settings.acquire.progress_interval_s:
                last = time.monotonic()
                logger.info("downloads: %d/%d done, %d failed", finished.done, len(todo), finished.failed)
        for future in futures:
            future.result()


def _fetch_on_spark(spark, todo: list[Download], *, audio_dir: Path, settings: Settings) -> None:
    """The same downloads, the URL list partitioned over executors (each with its own pool and pacer)."""
    partitions = min(len(todo), max(1, spark.sparkContext.defaultParallelism))
    payload = [json.dumps(asdict(item)) for item in todo]
    audio = str(audio_dir)
    task_warnings = TaskWarnings(spark.sparkContext)

    def fetch_partition(rows):
        items = [Download(**json.loads(row)) for row in rows]
        with task_warnings.captured():
            _fetch_here(items, audio_dir=Path(audio), settings=settings)
        return [json.dumps(asdict(item)) for item in items]

    logger.info("downloading on Spark: %d URLs in %d partitions", len(todo), partitions)
    results = spark.sparkContext.parallelize(payload, partitions).mapPartitions(fetch_partition).collect()
    task_warnings.log(stage="acquire")
    for item, result in zip(todo, results):  # collect() keeps the order of the input
        item.__dict__.update(json.loads(result))


def _write_downloads_table(spark, store: Warehouse, downloads: list[Download]) -> None:
    run = store.begin_run()
    rows = [tuple(d.row()[name] for name in DOWNLOADS.names) for d in downloads]
    frame = spark.createDataFrame(rows, schema=spark_schema(Table.DOWNLOADS)).coalesce(1)
    store.write_table(run, Table.DOWNLOADS, frame, metadata=DownloadsMetadata(deepcrate_version=__version__))
    store.publish(run, [Table.DOWNLOADS])


class _Counter:
    def __init__(self) -> None:
        self.done = self.failed = 0
        self.lock = threading.Lock()


def _fetch_counted(item: Download, audio_dir: Path, settings: Settings, pacer: HostPacer,
                   counter: _Counter) -> None:
    fetch(item, audio_dir=audio_dir, settings=settings, pacer=pacer)
    with counter.lock:
        counter.done += 1
        counter.failed += item.status in (FAILED, INCOMPLETE)


def _completed(audio_dir: Path) -> dict[str, dict[str, Any]]:
    """URL -> {path, bytes} of the files an earlier run completed (from its manifest.csv)."""
    path = audio_dir / "manifest.csv"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    return {r["url"]: {"path": r["path"], "bytes": int(r["bytes"])} for r in rows
            if r.get("url") and r.get("path") and (r.get("bytes") or "").isdigit()}


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _write_ingest_manifest(audio_dir: Path, downloads: list[Download]) -> Path:
    """``audio/manifest.csv`` as ingest reads it: the files on disk with their metadata."""
    kept = [d for d in downloads if d.status in (DOWNLOADED, PRESENT)]
    extras = sorted({k for d in kept for k in d.metadata} - set(METADATA_COLUMNS) - {"path", "bytes"})
    columns = ["path", *METADATA_COLUMNS, *extras, "url", "bytes"]
    target, tmp = audio_dir / "manifest.csv", audio_dir / PARTIAL / "manifest.csv"
    tmp.parent.mkdir(exist_ok=True)  # written aside, renamed: a rerun never sees half a manifest
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for item in kept:
            writer.writerow({**{c: item.metadata.get(c, "") for c in columns}, "path": item.path,
                             "url": item.url, "bytes": item.bytes})
    os.replace(tmp, target)
    return target
