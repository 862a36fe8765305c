"""The warehouse: a folder of tables, each write published atomically, every run kept.

Layout::

    WH/<table>/_delta_log/         the table's Delta log (delta-rs; no JVM jars)
    WH/<table>/<run>/              the Parquet files one job run wrote, and its _deepcrate.json
    WH/models/<version>/           a model folder; WH/index/<run>/ an index
    WH/_runs/<n>.json              published run n: the version of every table and folder
    WH/_stages/<stage>.json        what each stage last published, and from which inputs
                                   (:mod:`deepcrate.stages.pipeline`)
    WH/_LOCK                       the writer lock (:mod:`deepcrate.storage.writer_lock`)

A job writes each table's files into a new folder of the table, then commits them as the
table's next Delta version (:mod:`deepcrate.storage.delta_tables`). Readers never see those
versions until the job ends and writes the next run record (:mod:`deepcrate.storage.run_log`):
the one atomic step, after which every table of the run is current together. A reader
resolves every table through one record, so it never sees songs of one run beside
recommendations of another, and older runs stay readable (``as_of``) until vacuumed.

Spark writes the tables' files through Hadoop; the driver's own file work goes through
:mod:`deepcrate.storage.files` (pyarrow), so the same code serves local folders, HDFS and
object stores (docs/warehouse.md says what each guarantees). A warehouse in the earlier
plain-Parquet layout is converted by its first writing job (:mod:`deepcrate.storage.legacy`).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable

import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from deepcrate.errors import WarehouseError
from deepcrate.models.store import MODELS
from deepcrate.storage import files, legacy
from deepcrate.storage.arrow_tables import ArrowTables, resolve_view, verified_files
from deepcrate.storage.delta_tables import (
    DELTA_LOG,
    commit_files,
    folder_files,
)
from deepcrate.storage.run_log import EMPTY, NOT_TABLES, RunLog, RunRecord, TableVersion
from deepcrate.storage.schemas import Table
from deepcrate.storage.spark_schemas import validate
from deepcrate.storage.table_metadata import METADATA_FILE, TableMetadata, checked_metadata, metadata_class
from deepcrate.storage.writer_lock import check_lock, held_job, job_record, process_alive
from deepcrate.uris import filesystem_and_path, to_uri

logger = logging.getLogger(__name__)

_SCRATCH = "_scratch"  # a job's intermediate data, never published (see Warehouse.scratch_uri)
_OWNER_SUFFIX = ".owner"  # beside a run's scratch folder: the host and pid of the job that writes it
_FORMER_SCRATCH = "decoded"  # where ingest's scratch lay, never removed, before _SCRATCH
_DONE = "_SUCCESS"
# Spark writes a CRC with every Parquet page and checks it only when asked (an SQL option
# reaches the Hadoop conf of every file scan): a damaged page is then an error naming the file.
VERIFY_PAGES = "parquet.page.verify-checksum.enabled"
# pyarrow decodes a whole row group at once, so a reader holds one group per file it reads;
# Spark's default (128 MB, in practice one group per file) let training's readers grow with the
# catalogue (slices: 1.5 GB at 2,000 songs, 3.5 GB at 10,000: bench/slice_reader.py). Groups of
# 16 MB keep them flat (0.6 GB at both). No dictionary for the images or the features: they
# rarely repeat, and where they do (copies of one recording under several names) the
# dictionary hides their size from Parquet's row-group check, which then never cuts a group.
ROW_GROUP_BYTES = 16 * 2**20
# The song vectors' tables, which readers stream a row group at a time (evaluate, index): Spark's
# default row group (128 MB) would be decoded whole, and a catalogue of a few thousand songs fits in
# one 16 MB group, so the reader's memory would grow with the songs up to there. No dictionary: where
# rows repeat (copies of one recording), its small encoded size hides a group's size and no group is cut.
VECTOR_ROW_GROUP_BYTES = 4 * 2**20
_VECTOR_TABLE = {"parquet.block.size": str(VECTOR_ROW_GROUP_BYTES), "parquet.enable.dictionary": "false"}
WRITE_OPTIONS: dict[str, dict[str, str]] = {
    Table.SLICES: {"parquet.block.size": str(ROW_GROUP_BYTES), "parquet.enable.dictionary#spectrogram": "false"},
    Table.PRETRAINED_FEATURES: {"parquet.block.size": str(ROW_GROUP_BYTES),
                                "parquet.enable.dictionary#features": "false"},
    Table.MFCC_FEATURES: _VECTOR_TABLE,
    Table.SLICE_EMBEDDINGS: _VECTOR_TABLE,
    Table.SONG_EMBEDDINGS: _VECTOR_TABLE,
}


class Warehouse:
    """Tables under one root folder, read and written with Spark, published atomically.

    Parameters
    ----------
    spark : SparkSession
    root : str
        A local path or a Hadoop URI (``hdfs://``, ``s3a://``...).
    create : bool
        Create the folder when missing (writers); readers want ``False``.
    as_of : int, optional
        Read the tables as published run ``as_of`` left them (``deepcrate history``).

    Raises
    ------
    WarehouseError
        When the folder is missing or not writable, or run ``as_of`` is unknown.
    """

    def __init__(self, spark: SparkSession, root: str, *, create: bool = False, as_of: int | None = None) -> None:
        self.spark = spark
        self.root = files.warehouse_folder(root, create=create)
        # delta-rs refuses the INT96 timestamps Spark writes by default (FIELD-NOTES)
        spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        spark.conf.set(VERIFY_PAGES, "true")
        self.runs = RunLog(self.root)
        self._as_of = resolve_view(self.runs, as_of=as_of) if as_of is not None else None

    # -- which run a reader sees ---------------------------------------------------
    def view(self) -> RunRecord | None:
        """The run this object reads: the pinned ``as_of`` run; else the current run with what this
        process's writing job has committed so far; None before the first run."""
        if self._as_of is not None:
            return self._as_of
        current = self.runs.current()
        job = held_job(self.root)
        if job is None or not job.changed:
            return current
        return job.applied_to(current or EMPTY)

    # -- reading -----------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    def tables(self) -> list[str]:
        """Names of the published tables, sorted."""
        view = self.view()
        return sorted(view.tables) if view is not None else []

    def read(self, name: Table, *, columns: list[str] | None = None) -> DataFrame:
        """Published table ``name`` (its ``columns`` only, when given) as a Spark DataFrame."""
        return self._read(name, self.view(), columns=columns)

    def _read(self, name: str, view: RunRecord | None, *, columns: list[str] | None = None) -> DataFrame:
        if view is None or name not in view.tables:
            if view is None:
                legacy.refuse_unconverted(self.root)
            raise WarehouseError(f"warehouse {self.root}: no table {name!r} (has: {self.tables()})")
        files_read = verified_files(self.root, name, view.tables[name])
        schema = _spark_schema(files_read[0]) if files_read else None
        frame = (self.spark.read if schema is None else self.spark.read.schema(schema)).parquet(*files_read)
        return frame if columns is None else frame.select(*columns)

    @property
    def arrow(self) -> ArrowTables:
        """The same tables, read with pyarrow in this process."""
        return ArrowTables(self.root, self.view())

    def version(self, name: str) -> str | None:
        """The run that published ``name`` (None when it is missing or was published before runs were
        recorded); a model folder's version is its name."""
        view = self.view()
        if view is None or (name not in view.tables and name not in view.folders):
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
        if view is None:
            legacy.refuse_unconverted(self.root)
        published = self.tables()
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
        return metadata_class(name).from_json(files.read_text(f"{folder}/{METADATA_FILE}"),
                                              where=f"table {name} in {self.root}")

    def exists(self, name: str) -> bool:
        """Whether ``name`` (a table or folder under the root) is published."""
        view = self.view()
        return view is not None and (name in view.tables or name in view.folders)

    def list_folder(self, name: str) -> list[str]:
        """Names of the published sub-folders of ``name`` (e.g. the model versions), sorted."""
        view = self.view()
        return sorted(key.split("/", 1)[1] for key in (view.folders if view else {}) if key.startswith(f"{name}/"))

    def folder_uri(self, name: str) -> str:
        """The URI of published folder ``name`` (``index``, ``models/<version>``)."""
        return self.arrow.folder(name)

    def local_folder(self, name: str, *, scratch: str) -> str:
        """A local path holding the published folder ``name`` (a copy when the warehouse is remote)."""
        uri = self.folder_uri(name)
        if uri.startswith("file:"):
            return filesystem_and_path(uri)[1]
        target = os.path.join(scratch, name.replace("/", "_"))
        files.copy_folder(uri, to_uri(target))
        return target

    # -- writing -----------------------------------------------------------------
    def begin_run(self) -> str:
        """A fresh run id; the run's tables are written under :meth:`staging_uri`."""
        self._drop_left_scratch()
        return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]

    def scratch_uri(self, run: str, name: str) -> str:
        """Where ``run`` writes data it needs only while it runs (ingest's decoded files): never
        published, deleted by :meth:`drop_scratch`, or by a later job once this one's process is gone."""
        owner = f"{self.root}/{_SCRATCH}/{run}{_OWNER_SUFFIX}"
        if not files.exists(owner):
            files.write_text(owner, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        return f"{self.root}/{_SCRATCH}/{run}/{name}"

    def drop_scratch(self, run: str) -> None:
        """Delete what ``run`` wrote under :meth:`scratch_uri`."""
        files.delete(f"{self.root}/{_SCRATCH}/{run}")
        files.delete(f"{self.root}/{_SCRATCH}/{run}{_OWNER_SUFFIX}")
        if not files.listing(f"{self.root}/{_SCRATCH}"):
            files.delete(f"{self.root}/{_SCRATCH}")

    def _drop_left_scratch(self) -> None:
        """A job starts under the writer lock: scratch there is a dead job's, unless its process
        still runs on this host (a job whose lock file was deleted under it): that one is kept,
        and that job will find it lost its lock before it commits."""
        for info in files.listing(f"{self.root}/{_SCRATCH}"):
            run = info.base_name.removesuffix(_OWNER_SUFFIX)
            owner = job_record(f"{self.root}/{_SCRATCH}/{run}{_OWNER_SUFFIX}") or {}
            if owner.get("host") == socket.gethostname() and process_alive(int(owner.get("pid", -1))):
                logger.warning("warehouse %s: keeping the scratch of run %s: its job (pid %s) still runs",
                               self.root, run, owner.get("pid"))
                continue
            if info.base_name == run:
                logger.info("warehouse %s: deleting the scratch of run %s, left by a job that did not finish",
                            self.root, run)
            files.delete(f"{self.root}/{_SCRATCH}/{info.base_name}")
        former = f"{self.root}/{_FORMER_SCRATCH}"
        if files.exists(former) and not files.exists(f"{former}/{DELTA_LOG}"):
            logger.info("warehouse %s: deleting %s, left by a job that did not finish", self.root, _FORMER_SCRATCH)
            files.delete(former)

    def staging_uri(self, run: str, name: str) -> str:
        """Where ``run`` writes table or folder ``name`` before it is published."""
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
        files.write_text(f"{self.staging_uri(run, name)}/{METADATA_FILE}",
                         checked_metadata(name, metadata, run=run).to_json())

    def stage_folder(self, run: str, local_dir: str, name: str) -> None:
        """Copy a local folder (a model) into the run, to be published like a table.

        ``name`` may have several parts (``models/<version>``).
        """
        staged = self.staging_uri(run, name)
        files.copy_folder(to_uri(local_dir), staged)
        files.write_text(f"{staged}/{_DONE}", "")

    def publish(self, run: str, names: list[str]) -> None:
        """Commit the run's staged tables ``names``, each as a new version of its Delta table; readers
        see them when the writing job ends (:func:`~deepcrate.storage.writer_lock.writer_lock`), all at once."""
        for name in names:
            if not files.exists(f"{self.staging_uri(run, name)}/{_DONE}"):
                raise WarehouseError(f"run {run}: table {name} was not written completely")
        check_lock(self.root)
        tables: dict[str, TableVersion] = {}
        folders: dict[str, str] = {}
        for name in names:
            if name.split("/")[0] in NOT_TABLES:
                folders[name] = _run_folder(run, name)
            else:
                tables[name] = self._commit(name, run=run)
        self._add_to_job(tables, folders, names)

    def _commit(self, name: str, *, run: str) -> TableVersion:
        """Commit the Parquet files directly in ``WH/<name>/<run>`` as the next version of ``name``."""
        found, schema = folder_files(f"{self.table_uri(name)}/{run}", prefix=run)
        if not found:
            raise WarehouseError(f"run {run}: table {name} has no Parquet files")
        job = held_job(self.root)
        version = commit_files(self.table_uri(name), found, schema=schema, name=name,
                               properties={"deepcrate.run": run, "deepcrate.command": job.command if job else "publish"})
        return TableVersion(version=version, run=run, folder=run, rows=sum(f.rows for f in found))

    def _add_to_job(self, tables: dict[str, TableVersion], folders: dict[str, str], names: list[str]) -> None:
        job = held_job(self.root)
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


def _run_folder(run: str, name: str) -> str:
    """Where ``run`` writes ``name``, under the root: a folder of the table per run; a model's
    version folder is already unique."""
    return name if "/" in name else f"{name}/{run}"


_SPARK_SCHEMA_KEY = b"org.apache.spark.sql.parquet.row.metadata"


def _spark_schema(uri: str) -> StructType | None:
    """The schema Spark recorded in a Parquet file it wrote (None for another writer's file): given to
    the reader, it spares the Spark job that would infer it (seconds, on a reader's first query)."""
    filesystem, path = filesystem_and_path(uri)
    recorded = (pq.read_metadata(path, filesystem=filesystem).metadata or {}).get(_SPARK_SCHEMA_KEY)
    return StructType.fromJson(json.loads(recorded)) if recorded else None
