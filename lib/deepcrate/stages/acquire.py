"""Download a catalogue's audio from a manifest of URLs, politely and resumably.

Every manifest row ends as one row of the ``downloads`` status table: downloaded,
already present from an earlier run, failed (with the HTTP status and a message), or a
repeat of an earlier row's URL. Files are streamed to ``DIR/.partial/`` and renamed
into place only when complete, so a file under its final name is always whole; a
rerun skips every file an earlier run completed.
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepcrate import __version__
from deepcrate.audio.decode import DECODE_ERROR, TRUNCATED, check_whole
from deepcrate.errors import AudioError, ConfigError, InputError
from deepcrate.spark.task_warnings import TaskWarnings
from deepcrate.storage.schemas import DOWNLOADS, Table
from deepcrate.storage.spark_schemas import spark_schema
from deepcrate.storage.table_metadata import DownloadsMetadata
from deepcrate.storage.warehouse import Warehouse
from deepcrate.storage.writer_lock import holds_writer_lock

logger = logging.getLogger(__name__)

METADATA_COLUMNS = ["genre", "artist", "title", "label", "catalogue_number", "release_date"]
AUDIO_EXTENSIONS = (".mp3", ".ogg", ".flac", ".wav")
PARTIAL = ".partial"
MAX_NAME_BYTES = 150

# statuses of the downloads table
DOWNLOADED, PRESENT, FAILED, DUPLICATE = "downloaded", "present", "failed", "duplicate"
INCOMPLETE = "partial"  # the body ended, but the audio in it is cut short: fetched again by the next run


@dataclass(frozen=True)
class AcquireSettings:
    """The ``acquire`` section of the config, checked."""

    workers: int
    per_host_delay_s: float
    timeout_s: float
    retries: int
    backoff_s: float
    max_file_mb: float
    content_types: list[str]
    distributed: bool
    progress_interval_s: float
    truncated_ratio: float = 0.9  # ingest's: a body without Content-Length is whole when ingest would take it

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AcquireSettings:
        settings = cls(**config["acquire"], truncated_ratio=float(config["ingest"]["truncated_ratio"]))
        if settings.workers < 1 or settings.retries < 0 or settings.timeout_s <= 0 or settings.max_file_mb <= 0:
            raise ConfigError("acquire: workers >= 1, retries >= 0, timeout_s > 0 and max_file_mb > 0 are required")
        if settings.per_host_delay_s < 0 or settings.backoff_s < 0:
            raise ConfigError("acquire: per_host_delay_s and backoff_s must be >= 0")
        return settings


@dataclass
class Download:
    """One manifest row: where it goes and how it went (a row of ``downloads``)."""

    url: str
    path: str | None  # relative to the audio folder
    metadata: dict[str, str] = field(default_factory=dict)
    status: str = ""
    http_status: int | None = None
    bytes: int | None = None
    attempts: int = 0
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "metadata"}


# -- the manifest ----------------------------------------------------------------------


def read_url_manifest(manifest: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV or JSON-lines manifest with a ``url`` column, values as stripped strings.

    JSON lines are recognised by a first non-blank character ``{``.

    Raises
    ------
    InputError
        Unreadable file, a bad JSON line, or no ``url`` column.
    """
    path = Path(manifest)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"manifest {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"manifest {path}: cannot be read as UTF-8: {exc}") from None
    if text.lstrip().startswith("{"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise InputError(f"manifest {path}: line {number} is not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise InputError(f"manifest {path}: line {number} is not a JSON object")
            rows.append(value)
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))  # keeps newlines inside quoted fields
    rows = [{_column(k): "" if v is None else str(v).strip() for k, v in row.items() if k is not None}
            for row in rows]
    if not rows:
        raise InputError(f"manifest {path}: no rows")
    if "url" not in rows[0]:
        raise InputError(f"manifest {path}: needs a 'url' column, has {sorted(rows[0])}")
    return rows


def plan_downloads(rows: Iterable[dict[str, str]]) -> list[Download]:
    """Assign every row its file name, deterministically from the manifest order.

    ``<genre>/<artist - title>.<ext>`` (or the URL's file name without artist and
    title), sanitised; a name already taken gets `` (2)``, `` (3)``... A URL seen
    before is a duplicate; a URL that is not http(s) fails at once.
    """
    downloads, taken, seen = [], set(), {}
    for row in rows:
        url = row.get("url", "")
        metadata = {k: v for k, v in row.items() if k != "url"}
        item = Download(url=url, path=None, metadata=metadata)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https") or not urllib.parse.urlsplit(url).netloc:
            item.status, item.error = FAILED, f"not an http(s) URL: {url!r}"
        elif url in seen:
            item.status, item.path = DUPLICATE, seen[url].path
            item.error = "the same URL as an earlier row"
        else:
            item.path = _unique(_relative_path(url, metadata), taken)
            taken.add(item.path.casefold())
            seen[url] = item
        downloads.append(item)
    return downloads


def safe_name(text: str, *, fallback: str = "track") -> str:
    """A file or folder name that is safe on every file system and cannot escape its folder.

    NFC-normalised; control characters, path separators and characters Windows
    refuses become spaces or are dropped; no leading dots (hidden files, ``..``);
    at most :data:`MAX_NAME_BYTES` bytes of UTF-8.
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    text = re.sub(r'[/\\:*?"<>|]+', " ", text)
    text = re.sub(r"\s+", " ", text).lstrip(". ")
    text = text.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore").rstrip(" .")
    return text or fallback


def _relative_path(url: str, metadata: dict[str, str]) -> str:
    genre = safe_name(metadata.get("genre", ""), fallback="unlabelled")
    url_name = urllib.parse.unquote(os.path.basename(urllib.parse.urlsplit(url).path))
    stem, ext = os.path.splitext(url_name)
    ext = ext.lower() if ext.lower() in AUDIO_EXTENSIONS else ".mp3"
    artist, title = metadata.get("artist", ""), metadata.get("title", "")
    name = " - ".join(part for part in (artist, title) if part) or stem
    return f"{genre}/{safe_name(name)}{ext}"


def _unique(path: str, taken: set[str]) -> str:
    stem, ext = os.path.splitext(path)
    candidate, n = path, 1
    while candidate.casefold() in taken:  # case-insensitive: safe on macOS and Windows shares too
        n += 1
        candidate = f"{stem} ({n}){ext}"
    return candidate


def _column(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


# -- downloading -----------------------------------------------------------------------


class HostPacer:
    """Spaces the starts of requests to one host by at least ``delay_s`` seconds.

    ``clock`` and ``sleep`` are ``time.monotonic`` and ``time.sleep`` unless a test
    hands in its own.
    """

    def __init__(self, delay_s: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.delay_s = delay_s
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}

    def wait(self, host: str) -> float:
        """Block until this request to ``host`` may start; return the start time it was given."""
        with self._lock:  # reserve a start time, then sleep outside the lock
            now = self._clock()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + self.delay_s
        if start > now:
            self._sleep(start - now)
        return start


class _Refused(Exception):
    """A failure that retrying cannot fix (4xx, wrong type, too large)."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class _Retryable(Exception):
    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class _Incomplete(_Retryable):
    """The body ended, but the audio in it is cut short."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise _Refused(f"redirected to a URL that is not http(s): {newurl!r}", code)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects())


def fetch(item: Download, *, audio_dir: Path, settings: AcquireSettings, pacer: HostPacer) -> Download:
    """Download one planned item into ``audio_dir`` (retrying what may pass), fill in its status."""
    final = audio_dir / item.path
    host = urllib.parse.urlsplit(item.url).netloc.lower()
    for attempt in range(1, settings.retries + 2):
        item.attempts = attempt
        pacer.wait(host)
        try:
            item.http_status, item.bytes = _stream(item.url, final, audio_dir=audio_dir, settings=settings)
            item.status, item.error = DOWNLOADED, None
            return item
        except _Refused as exc:
            item.status, item.http_status, item.error = FAILED, exc.http_status, str(exc)
            return item
        except _Retryable as exc:
            item.status = INCOMPLETE if isinstance(exc, _Incomplete) else FAILED
            item.http_status, item.error = exc.http_status, str(exc)
        if attempt <= settings.retries:
            pause = settings.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random() / 2)  # jitter
            logger.debug("%s: %s; retry %d in %.1f s", item.url, item.error, attempt, pause)
            time.sleep(pause)
    item.error = f"{item.error} (gave up after {item.attempts} attempts)"
    return item


def _check_whole(path: Path, *, name: str, settings: AcquireSettings, status: int) -> None:
    try:
        check_whole(path.read_bytes(), name=name, truncated_ratio=settings.truncated_ratio)
    except AudioError as exc:
        if exc.reason in (TRUNCATED, DECODE_ERROR):
            raise _Incomplete(f"cut short: {exc}", status) from None
        raise _Refused(f"not audio: {exc}", status) from None


def _stream(url: str, final: Path, *, audio_dir: Path, settings: AcquireSettings) -> tuple[int, int]:
    """GET ``url`` to a temporary file, check it, rename it to ``final``; (HTTP status, bytes)."""
    limit = int(settings.max_file_mb * 1024 * 1024)
    request = urllib.request.Request(url, headers={"User-Agent": f"deepcrate-acquire/{__version__}"})
    partial = audio_dir / PARTIAL / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".part")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _OPENER.open(request, timeout=settings.timeout_s) as response:
            status = response.status
            content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if not any(content_type.startswith(t) for t in settings.content_types):
                raise _Refused(f"content type {content_type or 'missing'!r} is not audio", status)
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected and expected.isdigit() else None
            if expected is not None and expected > limit:
                raise _Refused(f"too large: {expected / 1e6:.1f} MB > acquire.max_file_mb", status)
            received = 0
            with open(partial, "wb") as out:
                while chunk := response.read(1 << 16):
                    received += len(chunk)
                    if received > limit:
                        raise _Refused(f"too large: over {settings.max_file_mb:g} MB and still sending", status)
                    out.write(chunk)
            if expected is not None and received != expected:
                raise _Retryable(f"cut off: {received} of {expected} bytes", status)
            if received == 0:
                raise _Retryable("empty response", status)
            if expected is None:  # nothing says how long the body should be: ask the audio itself
                _check_whole(partial, name=final.name, settings=settings, status=status)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        return status, received
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:  # urllib refuses redirects to file: and the like this way
            raise _Refused(f"redirected to a URL that is not http(s): {exc.headers.get('Location')!r}",
                           exc.code) from None
        message = f"HTTP {exc.code} {exc.reason}"
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable(message, exc.code) from None
        raise _Refused(message, exc.code) from None
    except http.client.IncompleteRead as exc:
        raise _Retryable(f"cut off: {len(exc.partial)} bytes then the connection closed") from None
    except TimeoutError:
        raise _Retryable(f"timed out after {settings.timeout_s:g} s") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, _Refused):
            raise exc.reason from None
        raise _Retryable(f"connection failed: {exc.reason}") from None
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        raise _Retryable(f"connection failed: {type(exc).__name__}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)


# -- the whole job ---------------------------------------------------------------------


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
def acquire(spark, *, manifest: str, audio: str, warehouse: str, config: dict[str, Any]) -> AcquireSummary:
    """Download every URL of ``manifest`` into ``audio``; write ``audio/manifest.csv`` and ``downloads``.

    Files an earlier run completed are not downloaded again: those ``audio/manifest.csv``
    lists for the same URL with the recorded size, and those at a URL's planned path that
    the manifest does not list (a run killed before writing it; files only ever reach
    their final name complete). With
    ``acquire.distributed`` the downloads run on Spark executors, which must see
    ``audio`` at the same path (shared storage).
    """
    settings = AcquireSettings.from_config(config)
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
    if settings.distributed and todo:
        _fetch_on_spark(spark, todo, audio_dir=audio_dir, settings=settings)
    else:
        _fetch_here(todo, audio_dir=audio_dir, settings=settings)
    manifest_path = _write_ingest_manifest(audio_dir, downloads)
    shutil.rmtree(audio_dir / PARTIAL, ignore_errors=True)
    _write_downloads_table(spark, store, downloads)
    return AcquireSummary(downloads=downloads, manifest=manifest_path, seconds=time.monotonic() - started)


def _fetch_here(todo: list[Download], *, audio_dir: Path, settings: AcquireSettings) -> None:
    """A bounded thread pool in this process, with progress lines."""
    pacer = HostPacer(settings.per_host_delay_s)
    finished = _Counter()
    with ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="acquire") as pool:
        futures = [pool.submit(_fetch_counted, item, audio_dir, settings, pacer, finished) for item in todo]
        last = time.monotonic()
        while not all(f.done() for f in futures):
            time.sleep(0.1)
            if time.monotonic() - last >= settings.progress_interval_s:
                last = time.monotonic()
                logger.info("downloads: %d/%d done, %d failed", finished.done, len(todo), finished.failed)
        for future in futures:
            future.result()


def _fetch_on_spark(spark, todo: list[Download], *, audio_dir: Path, settings: AcquireSettings) -> None:
    """The same downloads, the URL list partitioned over executors (each with its own pool and pacer)."""
    partitions = min(len(todo), max(1, spark.sparkContext.defaultParallelism))
    payload = [json.dumps(asdict(item)) for item in todo]
    audio, options = str(audio_dir), asdict(settings)
    task_warnings = TaskWarnings(spark.sparkContext)

    def fetch_partition(rows):
        items = [Download(**json.loads(row)) for row in rows]
        with task_warnings.captured():
            _fetch_here(items, audio_dir=Path(audio), settings=AcquireSettings(**options))
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


def _fetch_counted(item: Download, audio_dir: Path, settings: AcquireSettings, pacer: HostPacer,
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
