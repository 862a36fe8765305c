"""The warehouse: a folder of tables, each write published atomically, every run kept.

Layout (``warehouse.table_format: delta``, the default)::

    WH/<table>/_delta_log/         the table's Delta log (delta-rs; no JVM jars)
    WH/<table>/<run>/              the Parquet files one job run wrote, and its _deepcrate.json
    WH/models/<version>/           a model folder; WH/index/<run>/ an index
    WH/_runs/<n>.json              published run n: the version of every table and folder
    WH/_LOCK                       the writer lock

A job writes each table's files into a new folder of the table, then commits them as the
table's next Delta version (:mod:`deepcrate.storage.delta_tables`). Readers never see those
versions until the job ends and writes the next run record (:mod:`deepcrate.storage.run_log`):
the one atomic step, after which every table of the run is current together. A reader
resolves every table through one record, so it never sees songs of one run beside
recommendations of another, and older runs stay readable (``--as-of``) until vacuumed.

``table_format: parquet`` keeps the earlier layout for existing warehouses: ``WH/<table>/``
holds the Parquet files, a job writes under ``WH/_staging/<run>/`` and publishes with
renames, and a crash during the renames is rolled forward by the next job. A Delta job
converts such a warehouse in place (the Parquet files become the tables' first versions;
nothing is decoded or rewritten).

File-system calls go through Hadoop's FileSystem API or pyarrow, so the same code serves
local folders, HDFS and object stores (docs/warehouse.md says what each guarantees).

One job writes to a warehouse at a time: every writing stage holds ``WH/_LOCK`` (host,
pid, start time, command) for its whole run (:func:`writer_lock`; re-entrant, so a
rebuild holds it across its stages). The file is created only if absent, which is
atomic on a local folder, a shared POSIX mount and HDFS; a second writer is refused in
one line naming the holder. A lock whose holder was a process of this host that is
no longer alive is taken over (moved aside under a unique name first, so two
newcomers cannot both take it). On object stores (S3, GCS) creating a file only if
absent is not atomic through Hadoop: there the lock only tells writers apart that
start seconds apart, and one writer at a time is the operator's job.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from deepcrate.errors import WarehouseError, first_line
from deepcrate.models.slice_reader import SliceTable
from deepcrate.models.store import MODELS
from deepcrate.storage.delta_tables import DELTA_LOG, DataFile, commit_files, committed_files, latest_version, restore
from deepcrate.storage.run_log import EMPTY, RunLog, RunRecord, TableVersion, now
from deepcrate.storage.schemas import Table, validate
from deepcrate.storage.table_metadata import TableMetadata, checked_metadata, metadata_class
from deepcrate.uris import filesystem_and_path, local_path, to_uri, warehouse_uri
from deepcrate.vectors.faiss_index import INDEX

logger = logging.getLogger(__name__)

METADATA_FILE = "_deepcrate.json"
NOT_TABLES = {MODELS, INDEX}  # folders of the warehouse that hold files, not a table
TABLE_FORMATS = ("delta", "parquet")
_STAGING = "_staging"
_SCRATCH = "_scratch"  # a job's intermediate data, never published (see Warehouse.scratch_uri)
_OWNER_SUFFIX = ".owner"  # beside a run's scratch folder: the host and pid of the job that writes it
_FORMER_SCRATCH = "decoded"  # where ingest's scratch lay, never removed, before _SCRATCH
_PUBLISH = "_PUBLISH"
LOCK_FILE = "_LOCK"
_STAGE_RECORDS = "_stages"  # WH/_stages/<stage>.json: what each stage last published, and from which inputs
# Spark writes a CRC with every Parquet page but neither Spark nor pyarrow checks it by default: a
# damaged page then reads as wrong numbers, silently. Checked, it is an error naming the file.
VERIFY_PAGES = "parquet.page.verify-checksum.enabled"
_PARQUET = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True))
# pyarrow decodes a whole row group at once, so a reader holds one group per file it reads;
# Spark's default (128 MB, in practice one group per file) let training's reader grow with the
# catalogue (1.5 GB at 2,000 songs, 3.5 GB at 10,000: bench/slice_reader.py). Groups of 16 MB
# keep it flat (0.6 GB at both). No dictionary for the images: they rarely repeat, and where
# they do (copies of one recording under several names) the dictionary hides their size from
# Parquet's row-group check, which then never cuts a group.
SLICES_ROW_GROUP_BYTES = 16 * 2**20
WRITE_OPTIONS: dict[str, dict[str, str]] = {
    Table.SLICES: {"parquet.block.size": str(SLICES_ROW_GROUP_BYTES), "parquet.enable.dictionary#spectrogram": "false"},
}


@dataclass
class _Job:
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


EMPTY_VERSION = TableVersion(version=-1, run="", folder="", rows=0)
_HELD: dict[str, _Job] = {}  # warehouse root -> the writing job this process runs there
Stage = TypeVar("Stage", bound=Callable[..., Any])


class ArrowTables:
    """The tables of a warehouse read with pyarrow: no Spark, no JVM.

    For the readers that run outside Spark (``recommend``, training's input pipeline) and
    the stages that read a few columns into the driver. ``view`` is the run whose tables
    are read (None: a plain Parquet warehouse, read folder by folder); ``folder_of``,
    when given, names the folder of each table instead (a run's staged tables).
    """

    def __init__(self, root: str, view: RunRecord | None, *,
                 folder_of: Callable[[str], str] | None = None) -> None:
        self.root = warehouse_uri(root)
        self.view = view
        self._folder_of = folder_of

    @classmethod
    def current(cls, root: str, *, as_of: int | None = None) -> ArrowTables:
        """The tables of the current run (or of run ``as_of``)."""
        return cls(root, resolve_view(RunLog(warehouse_uri(root)), as_of=as_of))

    def exists(self, name: str) -> bool:
        if self.view is not None and self._folder_of is None:
            return name in self.view.tables or name in self.view.folders
        filesystem, path = filesystem_and_path(f"{self.folder(name)}/_SUCCESS")
        return filesystem.get_file_info(path).type == pyarrow.fs.FileType.File

    def folder(self, name: str) -> str:
        """The URI of published folder ``name`` (``index``, ``models/<version>``), or of a plain
        Parquet table."""
        if self._folder_of is not None:
            return self._folder_of(name)
        if self.view is not None and name in self.view.folders:
            return f"{self.root}/{self.view.folders[name]}"
        return f"{self.root}/{name}"

    def metadata(self, name: Table) -> TableMetadata:
        """What the stage that wrote table ``name`` recorded with it (its settings), typed per table."""
        folder = self.folder(name)
        if self.view is not None and self._folder_of is None and name in self.view.tables \
                and self.view.tables[name].folder:
            folder = f"{folder}/{self.view.tables[name].folder}"
        filesystem, path = filesystem_and_path(f"{folder}/{METADATA_FILE}")
        try:
            with filesystem.open_input_stream(path) as stream:
                text = stream.read().decode()
        except (OSError, ValueError) as exc:
            raise WarehouseError(f"table {name} in {self.root}: its metadata cannot be read: {first_line(exc)}") from None
        return metadata_class(name).from_json(text, where=f"table {name} in {self.root}")

    def dataset(self, name: Table) -> ds.Dataset:
        """The Parquet files of table ``name`` (exactly its committed version) as one pyarrow dataset."""
        if not self.exists(name):
            raise WarehouseError(f"warehouse {self.root}: no table {name!r}")
        try:
            if self.view is not None and self._folder_of is None:
                files = verified_files(self.root, name, self.view.tables[name])
                filesystem, _ = filesystem_and_path(self.root)
                return ds.dataset([filesystem_and_path(uri)[1] for uri in files], format=_PARQUET,
                                  filesystem=filesystem)
            filesystem, path = filesystem_and_path(self.folder(name))
            return ds.dataset(path, format=_PARQUET, filesystem=filesystem)
        except (OSError, pa.ArrowInvalid) as exc:
            raise WarehouseError(f"table {name} in {self.root}: cannot be read: {exc}") from None

    def read(self, name: Table, *, columns: list[str] | None = None, where: ds.Expression | None = None) -> pa.Table:
        """Columns ``columns`` (all when None) of the rows matching ``where``."""
        dataset = self.dataset(name)
        try:
            return dataset.to_table(columns=columns, filter=where)
        except (OSError, pa.ArrowInvalid) as exc:
            raise WarehouseError(f"table {name} in {self.root}: {_damaged_file(dataset) or 'cannot be read'}: "
                                 f"{first_line(exc)}; restore it, or roll back (deepcrate rollback)") from None

    def slice_table(self, *, image_shape: tuple[int, int]) -> SliceTable:
        """The ``slices`` table as training streams it (:class:`~deepcrate.models.slice_reader.SliceTable`)."""
        return SliceTable(self.dataset(Table.SLICES), image_shape=image_shape, uri=f"{self.root}/{Table.SLICES}")


def _damaged_file(dataset: ds.Dataset) -> str | None:
    """'file F', the first of ``dataset``'s files that cannot be read whole (pyarrow's errors do not say)."""
    for fragment in dataset.get_fragments():
        try:
            fragment.to_table()
        except (OSError, pa.ArrowInvalid):
            return f"file {fragment.path}"
    return None



def unreadable_file_error(exc: BaseException) -> WarehouseError | None:
    """The one line for a Spark job that failed reading a damaged Parquet file; None for other failures.

    Spark raises such a failure as a ~10 KB Java stack in which the file and the cause are
    two lines among hundreds (``FAILED_READ_FILE``).
    """
    text = str(exc)
    found = re.search(r"Encountered error while reading file (.+?)\.?\s+SQLSTATE", text)
    if found is None:
        return None
    causes = re.findall(r"^Caused by: ([\w.$]+)(?:: (.*))?$", text, flags=re.MULTILINE)
    cause = f"{causes[-1][0].rsplit('.', 1)[-1]}: {causes[-1][1]}" if causes else "unknown cause"
    return WarehouseError(f"file {found.group(1)} cannot be read ({cause}); restore it, "
                          f"or roll back the warehouse (deepcrate rollback)")


def verified_files(root: str, name: str, entry: TableVersion) -> list[str]:
    """The files of table ``name`` as ``entry`` names its version, checked against what the run
    recorded: every file there, readable Parquet (its footer), the rows adding up.

    Raises
    ------
    WarehouseError
        One line naming the table and the missing or unreadable file, or the rows that differ.
    """
    files = committed_files(f"{root}/{name}", entry.version, name=name)
    filesystem, _ = filesystem_and_path(root)
    paths = [filesystem_and_path(uri)[1] for uri in files]
    missing = [uri for uri, info in zip(files, filesystem.get_file_info(paths), strict=True)
               if info.type != pyarrow.fs.FileType.File]
    if missing:
        raise WarehouseError(f"table {name} in {root}: {len(missing)} of its {len(files)} files are missing "
                             f"(first: {missing[0]}); restore them, or roll back (deepcrate rollback)")
    rows = 0
    for uri, path in zip(files, paths, strict=True):
        try:
            rows += pq.read_metadata(path, filesystem=filesystem).num_rows
        except (OSError, pa.ArrowInvalid) as exc:
            raise WarehouseError(f"table {name} in {root}: file {uri} is not readable Parquet: "
                                 f"{first_line(exc)}") from None
    if rows != entry.rows:
        raise WarehouseError(f"table {name} in {root}: its files hold {rows} rows, the run that published it "
                             f"recorded {entry.rows}")
    return files


_SPARK_SCHEMA_KEY = b"org.apache.spark.sql.parquet.row.metadata"


def _spark_schema(uri: str) -> StructType | None:
    """The schema Spark recorded in a Parquet file it wrote (None for another writer's file): given to
    the reader, it spares the Spark job that would infer it (seconds, on a reader's first query)."""
    filesystem, path = filesystem_and_path(uri)
    recorded = (pq.read_metadata(path, filesystem=filesystem).metadata or {}).get(_SPARK_SCHEMA_KEY)
    return StructType.fromJson(json.loads(recorded)) if recorded else None


def resolve_view(runs: RunLog, *, as_of: int | None = None) -> RunRecord | None:
    """The run a reader sees: ``as_of`` when given, else the current one (None: no Delta runs yet)."""
    if as_of is None:
        return runs.current()
    if as_of < 1:
        raise WarehouseError(f"warehouse {runs.root}: there is no run {as_of} (runs are numbered from 1; "
                             f"deepcrate history lists them)")
    if as_of < runs.oldest_kept():
        raise WarehouseError(f"warehouse {runs.root}: the files of run {as_of} were vacuumed "
                             f"(runs from {runs.oldest_kept()} on are kept)")
    return runs.get(as_of)


class Warehouse:
    """Tables under one root folder, published atomically.

    Parameters
    ----------
    spark : SparkSession
    root : str
        A local path or a Hadoop URI (``hdfs://``, ``s3a://``...).
    create : bool
        Create the folder when missing (writers); readers want ``False``.
    table_format : {"delta", "parquet"}
        How this job publishes (``warehouse.table_format``). Readers follow what is on disk.
    as_of : int, optional
        Read the tables as published run ``as_of`` left them (``deepcrate history``).

    Raises
    ------
    WarehouseError
        When the folder is missing or not writable, or run ``as_of`` is unknown.
    """

    def __init__(self, spark: SparkSession, root: str, *, create: bool = False,
                 table_format: str = "delta", as_of: int | None = None) -> None:
        self.spark = spark
        self.root = warehouse_uri(root)
        if table_format not in TABLE_FORMATS:
            raise WarehouseError(f"warehouse.table_format must be one of {TABLE_FORMATS}, got {table_format!r}")
        self.table_format = table_format
        # delta-rs refuses the INT96 timestamps Spark writes by default (FIELD-NOTES)
        spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        spark.conf.set(VERIFY_PAGES, "true")  # SQL options reach the Hadoop conf of every file scan
        jvm = spark.sparkContext._jvm
        self._path = jvm.org.apache.hadoop.fs.Path
        try:
            self._fs = self._path(self.root).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
            if create:
                self._fs.mkdirs(self._path(self.root))
                probe = f"{self.root}/.write-probe-{uuid.uuid4().hex}"
                self._fs.create(self._path(probe)).close()
                self._fs.delete(self._path(probe), False)
        except Exception as exc:  # py4j wraps the Java IOException
            raise WarehouseError(f"warehouse {self.root}: not writable: {_java_message(exc)}") from None
        if not self._exists(self.root):
            raise WarehouseError(f"warehouse {self.root}: no such folder")
        self.runs = RunLog(self.root)
        self._as_of = resolve_view(self.runs, as_of=as_of) if as_of is not None else None

    # -- which run a reader sees ---------------------------------------------------
    def view(self) -> RunRecord | None:
        """The run this object reads: the pinned ``as_of`` run; else the current run with what this
        process's writing job has committed so far; None for a plain Parquet warehouse."""
        if self._as_of is not None:
            return self._as_of
        current = self.runs.current()
        job = _HELD.get(self.root)
        if job is None or not job.changed:
            return current
        return job.applied_to(current or EMPTY)

    # -- reading -----------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    def tables(self) -> list[str]:
        """Names of the published tables, sorted."""
        view = self.view()
        return sorted(view.tables) if view is not None else self._parquet_tables()

    def _parquet_tables(self) -> list[str]:
        names = []
        for status in self._fs.listStatus(self._path(self.root)):
            name = status.getPath().getName()
            if (status.isDirectory() and not name.startswith(("_", ".")) and name not in NOT_TABLES
                    and self._exists(f"{self.root}/{name}/_SUCCESS")):
                names.append(name)
        return sorted(names)

    def read(self, name: Table, *, columns: list[str] | None = None) -> DataFrame:
        """Published table ``name`` (its ``columns`` only, when given) as a Spark DataFrame."""
        return self._read(name, self.view(), columns=columns)

    def _read(self, name: str, view: RunRecord | None, *, columns: list[str] | None = None) -> DataFrame:
        if view is None:
            if not self._exists(f"{self.root}/{name}/_SUCCESS"):
                raise WarehouseError(f"warehouse {self.root}: no table {name!r} (has: {self.tables()})")
            frame = self.spark.read.parquet(self.table_uri(name))
        else:
            if name not in view.tables:
                raise WarehouseError(f"warehouse {self.root}: no table {name!r} (has: {sorted(view.tables)})")
            files = verified_files(self.root, name, view.tables[name])
            schema = _spark_schema(files[0]) if files else None
            frame = (self.spark.read if schema is None else self.spark.read.schema(schema)).parquet(*files)
        return frame if columns is None else frame.select(*columns)

    @property
    def arrow(self) -> ArrowTables:
        """The same tables, read with pyarrow in this process."""
        return ArrowTables(self.root, self.view())

    def version(self, name: str) -> str | None:
        """The run that published ``name`` (None when it is missing or was published before runs were
        recorded); a model folder's version is its name."""
        view = self.view()
        if view is None:
            if not self._exists(f"{self.table_uri(name)}/_SUCCESS"):
                return None
            return name.split("/", 1)[1] if name.startswith(f"{MODELS}/") else (self._run_of(name) or None)
        if name not in view.tables and name not in view.folders:
            return None
        if name.startswith(f"{MODELS}/"):
            return name.split("/", 1)[1]
        if name in view.folders:
            return view.folders[name].rsplit("/", 1)[-1]
        return view.tables[name].run or None

    def register(self, names: Iterable[str] | None = None) -> list[str]:
        """Register the published tables ``names`` (default: every one) as Spark SQL views of the same
        name, all of one run. Returns the names registered."""
        view = self.view()
        published = sorted(view.tables) if view is not None else self._parquet_tables()
        names = published if names is None else sorted(set(names) & set(published))
        for name in names:
            self._read(name, view).createOrReplaceTempView(name)
        return names

    def metadata(self, name: str) -> TableMetadata:
        """What the stage that wrote table ``name`` recorded with it (its settings), typed per table."""
        view = self.view()
        folder = self.table_uri(name)
        if view is not None and name in view.tables and view.tables[name].folder:
            folder = f"{folder}/{view.tables[name].folder}"
        return metadata_class(name).from_json(self._read_text(f"{folder}/{METADATA_FILE}"),
                                              where=f"table {name} in {self.root}")

    def _run_of(self, name: str) -> str:
        """The run recorded in a plain Parquet table's metadata ("" before runs were recorded)."""
        return TableMetadata.from_json(self._read_text(f"{self.table_uri(name)}/{METADATA_FILE}"),
                                       where=f"table {name} in {self.root}").run

    # -- writing -----------------------------------------------------------------
    def begin_run(self) -> str:
        """A fresh run id; the run's tables are written under :meth:`staging_uri`.

        A Delta job converts a plain Parquet warehouse first (no data is rewritten); a
        Parquet job finishes or drops an interrupted publish.
        """
        if self.table_format == "parquet":
            if self.runs.current() is not None:
                raise WarehouseError(f"warehouse {self.root} holds Delta tables; warehouse.table_format: parquet "
                                     f"cannot write to it (use delta, the default)")
            self.recover()
        elif self.view() is None and self._parquet_tables():
            self._convert_to_delta()
        self._drop_left_scratch()
        return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]

    def scratch_uri(self, run: str, name: str) -> str:
        """Where ``run`` writes data it needs only while it runs (ingest's decoded files): never
        published, deleted by :meth:`drop_scratch`, or by a later job once this one's process is gone."""
        owner = f"{self.root}/{_SCRATCH}/{run}{_OWNER_SUFFIX}"
        if not self._exists(owner):
            self._write_text(owner, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        return f"{self.root}/{_SCRATCH}/{run}/{name}"

    def drop_scratch(self, run: str) -> None:
        """Delete what ``run`` wrote under :meth:`scratch_uri`."""
        for uri in (f"{self.root}/{_SCRATCH}/{run}", f"{self.root}/{_SCRATCH}/{run}{_OWNER_SUFFIX}"):
            if self._exists(uri):
                self._fs.delete(self._path(uri), True)
        parent = self._path(f"{self.root}/{_SCRATCH}")
        if self._fs.exists(parent) and not self._fs.listStatus(parent):
            self._fs.delete(parent, True)

    def _drop_left_scratch(self) -> None:
        """A job starts under the writer lock: scratch there is a dead job's, unless its process
        still runs on this host (a job whose lock file was deleted under it): that one is kept,
        and that job will find it lost its lock before it commits."""
        scratch = self._path(f"{self.root}/{_SCRATCH}")
        if self._fs.exists(scratch):
            for status in self._fs.listStatus(scratch):
                name = status.getPath().getName()
                run = name.removesuffix(_OWNER_SUFFIX)
                owner = self._job_record(f"{self.root}/{_SCRATCH}/{run}{_OWNER_SUFFIX}") or {}
                if owner.get("host") == socket.gethostname() and _process_alive(int(owner.get("pid", -1))):
                    logger.warning("warehouse %s: keeping the scratch of run %s: its job (pid %s) still runs",
                                   self.root, run, owner.get("pid"))
                    continue
                if name == run:
                    logger.info("warehouse %s: deleting the scratch of run %s, left by a job that did not finish",
                                self.root, run)
                self._fs.delete(status.getPath(), True)
        former = self._path(f"{self.root}/{_FORMER_SCRATCH}")
        if self._fs.exists(former) and not self._exists(f"{self.root}/{_FORMER_SCRATCH}/_delta_log"):
            logger.info("warehouse %s: deleting %s, left by a job that did not finish", self.root, _FORMER_SCRATCH)
            self._fs.delete(former, True)

    def staging_uri(self, run: str, name: str) -> str:
        """Where ``run`` writes table or folder ``name`` before it is published."""
        if self.table_format == "parquet":
            return f"{self.root}/{_STAGING}/{run}/{name}"
        return f"{self.root}/{_run_folder(run, name)}"

    def write_table(self, run: str, name: Table, frame: DataFrame, *, metadata: TableMetadata | None = None) -> None:
        """Check ``frame`` against the schema of ``name`` and write it, with ``metadata`` (the kind
        :data:`~deepcrate.storage.table_metadata.METADATA_OF` names for the table), into ``run``."""
        uri = self.staging_uri(run, name)
        validate(frame, table=name).write.mode("overwrite").options(**WRITE_OPTIONS.get(name, {})).parquet(uri)
        self._write_metadata(run, name, metadata)

    def write_table_files(self, run: str, name: Table, local_dir: str, *,
                          metadata: TableMetadata | None = None) -> None:
        """Stage a local folder of Parquet files (written block by block with pyarrow) as table
        ``name`` of ``run``, checked against its schema like :meth:`write_table`."""
        self.stage_folder(run, local_dir, name)
        validate(self.read_staged(run, name), table=name)
        self._write_metadata(run, name, metadata)

    def read_staged(self, run: str, name: Table) -> DataFrame:
        """Table ``name`` as ``run`` wrote it, before it is published."""
        return self.spark.read.parquet(self.staging_uri(run, name))

    def staged_arrow(self, run: str) -> ArrowTables:
        """The tables ``run`` wrote, before they are published, read with pyarrow."""
        return ArrowTables(self.root, None, folder_of=functools.partial(self.staging_uri, run))

    def _write_metadata(self, run: str, name: Table, metadata: TableMetadata | None) -> None:
        self._write_text(f"{self.staging_uri(run, name)}/{METADATA_FILE}",
                         checked_metadata(name, metadata, run=run).to_json())

    def stage_folder(self, run: str, local_dir: str, name: str) -> None:
        """Copy a local folder (a model) into the run, to be published like a table.

        ``name`` may have several parts (``models/<version>``).
        """
        staged = self.staging_uri(run, name)
        self._fs.mkdirs(self._path(staged).getParent())
        self._copy(self._path(to_uri(local_dir)), self._path(staged))
        self._fs.create(self._path(f"{staged}/_SUCCESS"), True).close()

    def folder_uri(self, name: str) -> str:
        """The URI of published folder ``name`` (``index``, ``models/<version>``)."""
        return self.arrow.folder(name)

    def local_folder(self, name: str, *, scratch: str) -> str:
        """A local path holding the published folder ``name`` (a copy when the warehouse is remote)."""
        uri = self.folder_uri(name)
        if uri.startswith("file:"):
            return local_path(uri)
        target = os.path.join(scratch, name.replace("/", "_"))
        self._copy(self._path(uri), self._path(to_uri(target)))
        return target

    def _copy(self, source, target) -> None:
        """Copy a file or folder between any two Hadoop file systems. Not copyFromLocalFile and
        copyToLocalFile: they cast the local file system to the checksummed kind, and deepcrate's
        sessions read local files through the raw one (session.LOCAL_FILES)."""
        conf = self.spark.sparkContext._jsc.hadoopConfiguration()
        copy = self.spark.sparkContext._jvm.org.apache.hadoop.fs.FileUtil.copy
        if not copy(source.getFileSystem(conf), source, target.getFileSystem(conf), target, False, True, conf):
            raise WarehouseError(f"warehouse {self.root}: could not copy {source.toString()} to {target.toString()}")

    def exists(self, name: str) -> bool:
        """Whether ``name`` (a table or folder under the root) is published."""
        view = self.view()
        if view is not None:
            return name in view.tables or name in view.folders
        return self._exists(f"{self.table_uri(name)}/_SUCCESS")

    def list_folder(self, name: str) -> list[str]:
        """Names of the sub-folders of ``name`` (e.g. the model versions), sorted."""
        view = self.view()
        if view is not None:
            return sorted(key.split("/", 1)[1] for key in view.folders if key.startswith(f"{name}/"))
        uri = self.table_uri(name)
        if not self._exists(uri):
            return []
        return sorted(s.getPath().getName() for s in self._fs.listStatus(self._path(uri)) if s.isDirectory())

    def publish(self, run: str, names: list[str]) -> None:
        """Replace the published tables ``names`` with the run's staged ones.

        Delta: each table becomes a new version of its Delta table; readers see them when the
        writing job ends (:func:`writer_lock`), all at once. Parquet: renames, at once.
        """
        for name in names:
            if not self._exists(f"{self.staging_uri(run, name)}/_SUCCESS"):
                raise WarehouseError(f"run {run}: table {name} was not written completely")
        if self.table_format == "parquet":
            self._write_text(f"{self.root}/{_STAGING}/{run}/{_PUBLISH}", json.dumps(names))
            self._roll_forward(run, names)
            logger.info("published %s to %s", ", ".join(names), self.root)
            return
        self.check_lock()
        tables: dict[str, TableVersion] = {}
        folders: dict[str, str] = {}
        for name in names:
            if name.split("/")[0] in NOT_TABLES:
                folders[name] = _run_folder(run, name)
            else:
                tables[name] = self._commit(name, run=run, folder=run)
        self._add_to_job(tables, folders, names)

    def _commit(self, name: str, *, run: str, folder: str) -> TableVersion:
        """Commit the Parquet files directly in ``WH/<name>/<folder>`` as the next version of ``name``."""
        files, schema = _data_files(f"{self.table_uri(name)}/{folder}".rstrip("/"), prefix=folder)
        if not files:
            raise WarehouseError(f"run {run}: table {name} has no Parquet files")
        version = commit_files(self.table_uri(name), files, schema=schema, name=name,
                               properties={"deepcrate.run": run, "deepcrate.command": _job_command(self.root)})
        return TableVersion(version=version, run=run, folder=folder, rows=sum(f.rows for f in files))

    def _add_to_job(self, tables: dict[str, TableVersion], folders: dict[str, str], names: list[str]) -> None:
        job = _HELD.get(self.root)
        if job is None:  # a publish outside a writing job is published at once
            base = self.runs.current() or EMPTY
            self.runs.publish(base.with_changes(number=base.number + 1, command="publish", tables=tables,
                                                folders=folders, changed=names))
            return
        job.tables.update(tables)
        job.folders.update(folders)
        job.changed.extend(names)
        self.runs.write_draft(job.applied_to(EMPTY))
        logger.info("committed %s to %s (published when %s ends)", ", ".join(names), self.root, job.command)

    def _convert_to_delta(self) -> None:
        """Make every table of a plain Parquet warehouse a Delta table over the files it has."""
        self.recover()
        tables = {}
        for name in self._parquet_tables():
            run = self._run_of(name)
            tables[name] = self._commit(name, run=run, folder="")
        folders = {f"{MODELS}/{v}": f"{MODELS}/{v}" for v in self.list_folder(MODELS)
                   if self._exists(f"{self.root}/{MODELS}/{v}/_SUCCESS")}
        if self._exists(f"{self.root}/{INDEX}/_SUCCESS"):
            folders[INDEX] = INDEX
        logger.info("converting the Parquet warehouse %s to Delta tables: %s", self.root, ", ".join(tables))
        self._add_to_job(tables, folders, [*tables, *folders])

    # -- history: rollback and vacuum (under the writer lock) ----------------------------
    def rollback(self, number: int) -> RunRecord:
        """Publish run ``number``'s tables and folders again, as a new run: each table whose Delta
        log has moved on gets a version that reads the same files (a Delta restore)."""
        job = self._own_job("rollback")
        target = self.runs.get(number)
        if number < self.runs.oldest_kept():
            raise WarehouseError(f"warehouse {self.root}: the files of run {number} were vacuumed; cannot roll back")
        current = self.runs.current() or EMPTY
        tables = {}
        for name, entry in target.tables.items():
            if latest_version(self.table_uri(name)) != entry.version:
                version = restore(self.table_uri(name), entry.version, name=name,
                                  properties={"deepcrate.command": f"rollback to run {number}"})
                entry = replace(entry, version=version)
            tables[name] = entry
        changed = sorted(name for name in {*tables, *current.tables}
                         if current.tables.get(name, EMPTY_VERSION).run != tables.get(name, EMPTY_VERSION).run)
        changed += sorted(name for name in {*target.folders, *current.folders}
                          if current.folders.get(name) != target.folders.get(name))
        record = RunRecord(number=job.base + 1, time=now(), command=f"rollback to run {number}", tables=tables,
                           folders=dict(target.folders), changed=changed)
        self.runs.publish(record)
        job.base = record.number  # the job itself has nothing more to publish
        return record

    def vacuum(self, *, keep: int) -> tuple[int, int]:
        """Delete the files no run among the newest ``keep`` reads (nor the draft of an interrupted
        job); returns (files deleted, bytes freed)."""
        self._own_job("vacuum")
        if keep < 1:
            raise WarehouseError(f"vacuum --keep must be at least 1, got {keep}")
        kept = self.runs.history()[:keep]
        if not kept:
            return 0, 0
        draft = self.runs.draft()
        records = [*kept, *([draft] if draft else [])]
        needed: set[str] = set()
        kept_folders: set[str] = set()  # table run folders and published folders, relative to the root
        for record in records:
            for name, entry in record.tables.items():
                needed.update(_relative(self.root, uri)
                              for uri in committed_files(self.table_uri(name), entry.version, name=name))
                kept_folders.add(f"{name}/{entry.folder}".rstrip("/"))
            kept_folders.update(record.folders.values())
        names = {name for record in records for name in record.tables} | NOT_TABLES
        filesystem, root = filesystem_and_path(self.root)
        deleted = freed = 0
        emptied: set[str] = set()
        for name in sorted(names):
            selector = pyarrow.fs.FileSelector(f"{root}/{name}", recursive=True, allow_not_found=True)
            for info in filesystem.get_file_info(selector):
                relative = info.path[len(root) + 1:]
                if info.type != pyarrow.fs.FileType.File or f"/{DELTA_LOG}/" in f"/{relative}":
                    continue
                folder = relative.rsplit("/", 1)[0]
                if relative in needed or (not relative.endswith(".parquet") and folder in kept_folders) \
                        or any(relative.startswith(f"{path}/") for path in kept_folders if path.split("/")[0] in NOT_TABLES):
                    continue
                filesystem.delete_file(info.path)
                deleted, freed = deleted + 1, freed + info.size
                emptied.add(info.path.rsplit("/", 1)[0])
        for folder in sorted(emptied, key=len, reverse=True):  # run folders left empty, deepest first
            if not filesystem.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True)):
                filesystem.delete_dir(folder)
        self.runs.mark_vacuumed(kept[-1].number)
        logger.info("vacuum %s: deleted %d files (%d bytes); runs %d-%d kept", self.root, deleted, freed,
                    kept[-1].number, kept[0].number)
        return deleted, freed

    def _own_job(self, what: str) -> _Job:
        job = _HELD.get(self.root)
        if job is None:
            raise WarehouseError(f"{what} of {self.root} must run under the writer lock (writer_lock)")
        if self.runs.current() is None:
            raise WarehouseError(f"warehouse {self.root} has no published Delta runs; nothing to {what}")
        return job

    def recover(self) -> None:
        """Finish an interrupted Parquet publish, drop Parquet runs that never reached it."""
        staging = f"{self.root}/{_STAGING}"
        if not self._exists(staging):
            return
        for status in self._fs.listStatus(self._path(staging)):
            run = status.getPath().getName()
            journal = f"{staging}/{run}/{_PUBLISH}"
            if status.isDirectory() and self._exists(journal):
                logger.warning("finishing the interrupted publish of run %s", run)
                self._roll_forward(run, json.loads(self._read_text(journal)))
            else:
                logger.info("removing unfinished run %s", run)
                self._fs.delete(status.getPath(), True)

    def _roll_forward(self, run: str, names: list[str]) -> None:
        run_dir = f"{self.root}/{_STAGING}/{run}"
        self._fs.mkdirs(self._path(f"{run_dir}/_old"))
        for name in names:
            staged, final = f"{run_dir}/{name}", self.table_uri(name)
            if not self._exists(staged):
                continue  # already published before the interruption
            if self._exists(final):
                self._fs.mkdirs(self._path(f"{run_dir}/_old/{name}").getParent())
                self._rename(final, f"{run_dir}/_old/{name}")
            self._fs.mkdirs(self._path(final).getParent())
            self._rename(staged, final)
        self._fs.delete(self._path(run_dir), True)

    # -- what each stage last published (the rebuild's records) --------------------
    def record_stage(self, stage: str, *, fingerprint: str, outputs: list[str]) -> None:
        """Record that ``stage`` published ``outputs`` (their current versions) from inputs with
        ``fingerprint``; written after the publish, so a crash in between only repeats the stage."""
        record = {"stage": stage, "fingerprint": fingerprint,
                  "versions": {name: self.version(name) for name in outputs},
                  "recorded": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        final = f"{self.root}/{_STAGE_RECORDS}/{stage}.json"
        draft = f"{final}.{uuid.uuid4().hex[:8]}"
        self._write_text(draft, json.dumps(record, indent=2, sort_keys=True))
        if self._exists(final):
            self._fs.delete(self._path(final), False)
        self._rename(draft, final)

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        """What :meth:`record_stage` last wrote for ``stage``, or None."""
        uri = f"{self.root}/{_STAGE_RECORDS}/{stage}.json"
        if not self._exists(uri):
            return None
        try:
            return json.loads(self._read_text(uri))
        except (ValueError, WarehouseError):
            logger.warning("warehouse %s: the record of stage %s is unreadable; it will run again", self.root, stage)
            return None

    def current_record(self, stage: str, *, fingerprint: str) -> dict[str, Any] | None:
        """The record of ``stage`` when it last ran on inputs with ``fingerprint`` and what it
        published then is still what is published now (no other job replaced it since); else None."""
        record = self.stage_record(stage)
        if record is None or record.get("fingerprint") != fingerprint or not record.get("versions"):
            return None
        current = all(version is not None and self.version(name) == version
                      for name, version in record["versions"].items())
        return record if current else None

    # -- the writer lock (see the module doc) -------------------------------------
    def _take_lock(self, command: str) -> str:
        lock = f"{self.root}/{LOCK_FILE}"
        token = uuid.uuid4().hex
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "command": command, "token": token,
                  "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        for _ in range(3):
            if self._create_new(lock, json.dumps(holder)):
                return token
            other = self._job_record(lock)
            if other is None:  # released meanwhile
                continue
            if not other:
                raise WarehouseError(
                    f"warehouse {self.root}: its writer lock {lock} holds no job's record (it should name the host, "
                    f"pid and command of the job writing); if no job is writing to this warehouse, delete that file")
            if other.get("host") == holder["host"] and not _process_alive(int(other.get("pid", -1))):
                self._move_aside_stale(lock, other)
                continue
            raise WarehouseError(
                f"warehouse {self.root}: another job is writing to it: {other.get('command', '?')} on host "
                f"{other.get('host', '?')}, pid {other.get('pid', '?')}, since {other.get('started', '?')} "
                f"(lock {lock}; delete it only if that job is gone)")
        raise WarehouseError(f"warehouse {self.root}: could not take the writer lock {lock}")

    def _create_new(self, uri: str, text: str) -> bool:
        """Write ``uri`` only if it does not exist: ``O_EXCL`` on a local or mounted folder
        (Hadoop's local create checks, then opens), the file system's own create elsewhere
        (atomic on HDFS)."""
        if uri.startswith("file:"):
            try:
                descriptor = os.open(local_path(uri), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            except OSError as exc:
                raise WarehouseError(f"warehouse {self.root}: cannot write {uri}: {exc.strerror}") from None
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(text)
            return True
        try:
            stream = self._fs.create(self._path(uri), False)
        except Exception as exc:  # py4j wraps FileAlreadyExistsException
            if "FileAlreadyExists" in _java_message(exc) or "already exists" in _java_message(exc) \
                    or self._exists(uri):
                return False
            raise WarehouseError(f"warehouse {self.root}: cannot write {uri}: {_java_message(exc)}") from None
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        return True

    def _job_record(self, lock: str) -> dict[str, Any] | None:
        """The JSON record of a job in ``lock`` (the writer lock, a scratch owner): None when the file
        is gone, {} when it names no job."""
        for _ in range(20):  # a holder that just created the file may not have written it yet
            try:
                text = self._read_text(lock)
            except Exception:  # gone (released), or unreadable
                return None if not self._exists(lock) else {}
            if text.strip():
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    return {}
            time.sleep(0.05)
        return {}

    def _move_aside_stale(self, lock: str, stale: dict[str, Any]) -> None:
        aside = f"{lock}.stale-{uuid.uuid4().hex[:8]}"
        if not self._fs.rename(self._path(lock), self._path(aside)):
            return  # another newcomer moved it first
        if (self._job_record(aside) or {}).get("token") != stale.get("token"):  # moved a fresh lock: put it back
            self._fs.rename(self._path(aside), self._path(lock))
            return
        self._fs.delete(self._path(aside), False)
        logger.warning("warehouse %s: took over the writer lock of %s (pid %s on %s, since %s), which is no "
                       "longer running", self.root, stale.get("command"), stale.get("pid"), stale.get("host"),
                       stale.get("started"))

    def check_lock(self) -> None:
        """Refuse to go on when the writing job of this process no longer holds the warehouse's lock
        (``WH/_LOCK`` deleted, or taken by another job, while it ran): what it wrote is not committed."""
        job = _HELD.get(self.root)
        if job is None:
            return
        lock = f"{self.root}/{LOCK_FILE}"
        holder = self._job_record(lock)
        if holder is None or holder.get("token") != job.token:
            now = "it is gone" if holder is None else (f"it now names {holder.get('command', '?')}, pid "
                                                       f"{holder.get('pid', '?')} on {holder.get('host', '?')}")
            raise WarehouseError(f"warehouse {self.root}: this {job.command} lost its writer lock {lock} while it "
                                 f"ran ({now}); nothing more was committed or published: run it again")

    def _drop_lock(self, token: str) -> None:
        lock = f"{self.root}/{LOCK_FILE}"
        holder = self._job_record(lock)
        if holder and holder.get("token") == token:
            self._fs.delete(self._path(lock), False)

    # -- file-system helpers -----------------------------------------------------
    def _exists(self, uri: str) -> bool:
        return bool(self._fs.exists(self._path(uri)))

    def _rename(self, src: str, dst: str) -> None:
        if not self._fs.rename(self._path(src), self._path(dst)):
            raise WarehouseError(f"could not rename {src} to {dst}")

    def _write_text(self, uri: str, text: str) -> None:
        stream = self._fs.create(self._path(uri), True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()

    def _read_text(self, uri: str) -> str:
        if not self._exists(uri):
            raise WarehouseError(f"{uri}: missing")
        jvm = self.spark.sparkContext._jvm
        stream = self._fs.open(self._path(uri))
        try:
            data = jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
        finally:
            stream.close()
        return bytes(data).decode("utf-8")


@contextlib.contextmanager
def writer_lock(spark: SparkSession, warehouse: str, *, command: str, create: bool = False,
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
    store = Warehouse(spark, warehouse, create=create)
    job = _HELD.get(store.root)
    if job:
        job.depth += 1
    else:
        token = store._take_lock(command)
        try:
            job = _HELD[store.root] = _start_job(store.runs, token=token, command=command)
            job.config = config or {}
        except BaseException:
            store._drop_lock(token)
            raise
    try:
        yield
        if job.depth == 1 and job.changed:
            store.check_lock()
            store.runs.publish(job.applied_to(store.runs.current() or EMPTY))
            store.runs.drop_draft()
            logger.info("published run %d of %s: %s", job.base + 1, store.root, ", ".join(dict.fromkeys(job.changed)))
    finally:
        job.depth -= 1
        if job.depth == 0:
            del _HELD[store.root]
            store._drop_lock(job.token)


def _start_job(runs: RunLog, *, token: str, command: str) -> _Job:
    current = runs.current() or EMPTY
    job = _Job(token=token, command=command, base=current.number)
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
    return job


def _restore_newest_versions(root: str, expected: dict[str, TableVersion]) -> None:
    """Make each table's newest Delta version the one this job starts from again, for readers that
    open the Delta tables directly: an interrupted job may have committed versions nobody published."""
    for name, entry in expected.items():
        if latest_version(f"{root}/{name}") not in (entry.version, None):
            restore(f"{root}/{name}", entry.version, name=name,
                    properties={"deepcrate.command": "undo a version an interrupted job left unpublished"})
            logger.warning("warehouse %s: table %s: undid a version an interrupted job committed", root, name)


def _job_command(root: str) -> str:
    job = _HELD.get(root)
    return job.command if job else "publish"


def _relative(root: str, uri: str) -> str:
    return filesystem_and_path(uri)[1][len(filesystem_and_path(root)[1]) + 1:]


def _run_folder(run: str, name: str) -> str:
    """Where ``run`` writes ``name``, under the root: a folder of the table per run; a model's
    version folder is already unique."""
    return name if "/" in name else f"{name}/{run}"


def _data_files(folder_uri: str, *, prefix: str) -> tuple[list[DataFile], pa.Schema | None]:
    """The Parquet files directly in ``folder_uri`` (paths as ``prefix/<file>``) with their row
    counts from the footers, and the first one's schema."""
    filesystem, path = filesystem_and_path(folder_uri)
    infos = sorted((i for i in filesystem.get_file_info(pyarrow.fs.FileSelector(path))
                    if i.type == pyarrow.fs.FileType.File and i.base_name.endswith(".parquet")
                    and not i.base_name.startswith(("_", "."))), key=lambda i: i.base_name)
    files, schema = [], None
    for info in infos:
        footer = pq.read_metadata(info.path, filesystem=filesystem)
        schema = schema or footer.schema.to_arrow_schema()
        files.append(DataFile(path=f"{prefix}/{info.base_name}".lstrip("/"), size=info.size,
                              modified_ms=int(info.mtime.timestamp() * 1000), rows=footer.num_rows))
    return files, schema


def holds_writer_lock(*, create: bool = False) -> Callable[[Stage], Stage]:
    """Decorate a stage ``f(spark, *, warehouse, ...)`` to run under :func:`writer_lock`."""
    def decorate(stage: Stage) -> Stage:
        @functools.wraps(stage)
        def locked(spark, *args, warehouse: str, **kwargs):
            with writer_lock(spark, warehouse, command=stage.__name__, create=create, config=kwargs.get("config")):
                return stage(spark, *args, warehouse=warehouse, **kwargs)
        return locked  # type: ignore[return-value]
    return decorate


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _java_message(exc: Exception) -> str:
    java = getattr(exc, "java_exception", None)
    return str(java.getMessage()) if java is not None else str(exc)
