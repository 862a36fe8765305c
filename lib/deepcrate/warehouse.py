"""The warehouse: a folder of Parquet tables, each written aside and then published.

Layout::

    WH/<table>/                  a published table (Parquet files, _SUCCESS, _deepcrate.json)
    WH/_staging/<run>/<table>/   a table being written
    WH/_staging/<run>/_PUBLISH   written just before the renames: the run's tables are complete

A job writes every table of a run under ``_staging``, then publishes them with
renames. A crash before ``_PUBLISH`` leaves the published tables untouched (the next
job deletes the half-written run); a crash during the renames is rolled forward by
the next job. File-system calls go through Hadoop's FileSystem API, so the same code
serves local folders, HDFS and object stores.

One job writes to a warehouse at a time: every writing stage holds ``WH/_LOCK`` (host,
pid, start time, command) for its whole run (:func:`writer_lock`; re-entrant, so a
rebuild holds it across its stages). The file is created only if absent, which is
atomic on a local folder, a shared POSIX mount and HDFS; a second writer is refused in
one line naming the holder. A lock whose holder was a process of this host that is
no longer alive is taken over (moved aside under a unique name first, so two
newcomers cannot both take it). On object stores (S3, GCS) creating a file only if
absent is not atomic through Hadoop: there the lock only tells writers apart that
start seconds apart, and one writer at a time is the operator's job.

With ``table_format="delta"`` every staged table is converted to Delta in place
(``CONVERT TO DELTA``) before it is published. Each published table is then one Delta
commit whose files are exactly the Parquet files in its folder, so readers that
open the Parquet files directly (training, the index) see the same rows as Spark.
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
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs
from pyspark.sql import DataFrame, SparkSession

from deepcrate.errors import WarehouseError
from deepcrate.schemas import Table, validate
from deepcrate.slice_reader import SliceTable
from deepcrate.uris import filesystem_and_path, local_path, to_uri

logger = logging.getLogger(__name__)

METADATA_FILE = "_deepcrate.json"
NOT_TABLES = {"models", "index"}  # folders of the warehouse that hold files, not a table
TABLE_FORMATS = ("parquet", "delta")
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
_STAGING = "_staging"
_PUBLISH = "_PUBLISH"
LOCK_FILE = "_LOCK"
_STAGE_RECORDS = "_stages"  # WH/_stages/<stage>.json: what each stage last published, and from which inputs
_HELD: dict[str, list] = {}  # warehouse root -> [lock token, depth]: the locks this process holds
Stage = TypeVar("Stage", bound=Callable[..., Any])


class ArrowTables:
    """The published tables of a warehouse read with pyarrow: no Spark, no JVM.

    For the readers that run outside Spark (``recommend``, training's input pipeline) and
    the stages that read a few columns into the driver.
    """

    def __init__(self, root: str) -> None:
        self.root = to_uri(root)

    def exists(self, name: str) -> bool:
        filesystem, path = filesystem_and_path(f"{self.root}/{name}/_SUCCESS")
        return filesystem.get_file_info(path).type == pyarrow.fs.FileType.File

    def dataset(self, name: Table) -> ds.Dataset:
        """The Parquet files of published table ``name`` as one pyarrow dataset."""
        if not self.exists(name):
            raise WarehouseError(f"warehouse {self.root}: no table {name!r}")
        filesystem, path = filesystem_and_path(f"{self.root}/{name}")
        try:
            return ds.dataset(path, format="parquet", filesystem=filesystem)
        except (OSError, pa.ArrowInvalid) as exc:
            raise WarehouseError(f"table {name} in {self.root}: cannot be read: {exc}") from None

    def read(self, name: Table, *, columns: list[str] | None = None, where: ds.Expression | None = None) -> pa.Table:
        """Columns ``columns`` (all when None) of the rows matching ``where``."""
        dataset = self.dataset(name)
        try:
            return dataset.to_table(columns=columns, filter=where)
        except (OSError, pa.ArrowInvalid) as exc:
            raise WarehouseError(f"table {name} in {self.root}: cannot be read: {exc}") from None

    def slice_table(self, *, image_shape: tuple[int, int]) -> SliceTable:
        """The ``slices`` table as training streams it (:class:`~deepcrate.slice_reader.SliceTable`)."""
        return SliceTable(self.dataset(Table.SLICES), image_shape=image_shape, uri=f"{self.root}/{Table.SLICES}")


class Warehouse:
    """Tables under one root folder, published atomically.

    Parameters
    ----------
    spark : SparkSession
    root : str
        A local path or a Hadoop URI (``hdfs://``, ``s3a://``...).
    create : bool
        Create the folder when missing (writers); readers want ``False``.
    table_format : {"parquet", "delta"}
        The format tables are published in (``warehouse.table_format``).

    Raises
    ------
    WarehouseError
        When the folder is missing or not writable, or Delta is asked for without its jars.
    """

    def __init__(self, spark: SparkSession, root: str, *, create: bool = False,
                 table_format: str = "parquet") -> None:
        self.spark = spark
        self.root = to_uri(root)
        if table_format not in TABLE_FORMATS:
            raise WarehouseError(f"warehouse.table_format must be one of {TABLE_FORMATS}, got {table_format!r}")
        if table_format == "delta":
            check_delta(spark)
        self.table_format = table_format
        jvm = spark.sparkContext._jvm
        self._path = jvm.org.apache.hadoop.fs.Path
        try:
            self._fs = self._path(self.root).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
            if create:
                self._fs.mkdirs(self._path(self.root))
                probe = f"{self.root}/{_STAGING}/.write-probe-{uuid.uuid4().hex}"
                self._fs.create(self._path(probe)).close()
                self._fs.delete(self._path(probe), False)
        except Exception as exc:  # py4j wraps the Java IOException
            raise WarehouseError(f"warehouse {self.root}: not writable: {_java_message(exc)}") from None
        if not self._exists(self.root):
            raise WarehouseError(f"warehouse {self.root}: no such folder")

    # -- reading -----------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        return f"{self.root}/{name}"

    def tables(self) -> list[str]:
        """Names of the published tables, sorted."""
        names = []
        for status in self._fs.listStatus(self._path(self.root)):
            name = status.getPath().getName()
            if (status.isDirectory() and not name.startswith(("_", ".")) and name not in NOT_TABLES
                    and self._exists(f"{self.root}/{name}/_SUCCESS")):
                names.append(name)
        return sorted(names)

    def read(self, name: Table, *, columns: list[str] | None = None) -> DataFrame:
        """Published table ``name`` (its ``columns`` only, when given) as a Spark DataFrame."""
        if not self._exists(f"{self.root}/{name}/_SUCCESS"):
            raise WarehouseError(f"warehouse {self.root}: no table {name!r} (has: {self.tables()})")
        if self._exists(f"{self.root}/{name}/_delta_log"):
            check_delta(self.spark)
            frame = self.spark.read.format("delta").load(self.table_uri(name))
        else:
            frame = self.spark.read.parquet(self.table_uri(name))
        return frame if columns is None else frame.select(*columns)

    @property
    def arrow(self) -> ArrowTables:
        """The same published tables, read with pyarrow in this process."""
        return ArrowTables(self.root)

    def version(self, name: str) -> str | None:
        """The run that published ``name`` (None when it is missing or was published before runs were
        recorded); a model folder's version is its name."""
        if not self.exists(name):
            return None
        if name.startswith("models/"):
            return name.split("/", 1)[1]
        return self.metadata(name).get("run")

    def register(self) -> list[str]:
        """Register every published table as a Spark SQL view of the same name."""
        names = self.tables()
        for name in names:
            self.read(name).createOrReplaceTempView(name)
        return names

    def metadata(self, name: str) -> dict[str, Any]:
        """The ``_deepcrate.json`` written with table ``name``."""
        return json.loads(self._read_text(f"{self.table_uri(name)}/{METADATA_FILE}"))

    # -- writing -----------------------------------------------------------------
    def begin_run(self) -> str:
        """A fresh run id; the run's tables are written under :meth:`staging_uri`."""
        self.recover()
        return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]

    def staging_uri(self, run: str, name: str) -> str:
        return f"{self.root}/{_STAGING}/{run}/{name}"

    def write_table(self, run: str, name: Table, frame: DataFrame, *, metadata: dict[str, Any] | None = None) -> None:
        """Check ``frame`` against the schema of ``name`` and write it, with ``metadata``, into ``run``."""
        uri = self.staging_uri(run, name)
        validate(frame, table=name).write.mode("overwrite").parquet(uri)
        self._write_metadata(run, name, metadata)

    def write_table_files(self, run: str, name: Table, local_dir: str, *,
                          metadata: dict[str, Any] | None = None) -> None:
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
        return ArrowTables(f"{self.root}/{_STAGING}/{run}")

    def _write_metadata(self, run: str, name: Table, metadata: dict[str, Any] | None) -> None:
        record = {**(metadata or {}), "table": str(name), "run": run}
        self._write_text(f"{self.staging_uri(run, name)}/{METADATA_FILE}",
                         json.dumps(record, indent=2, sort_keys=True, default=str))

    def stage_folder(self, run: str, local_dir: str, name: str) -> None:
        """Copy a local folder (a model) into the run, to be published like a table.

        ``name`` may have several parts (``models/<version>``).
        """
        staged = self.staging_uri(run, name)
        self._fs.mkdirs(self._path(staged).getParent())
        self._fs.copyFromLocalFile(False, True, self._path(to_uri(local_dir)), self._path(staged))
        self._fs.create(self._path(f"{staged}/_SUCCESS"), True).close()

    def local_folder(self, name: str, *, scratch: str) -> str:
        """A local path holding the published folder ``name`` (a copy when the warehouse is remote)."""
        uri = self.table_uri(name)
        if uri.startswith("file:"):
            return local_path(uri)
        target = os.path.join(scratch, name.replace("/", "_"))
        self._fs.copyToLocalFile(False, self._path(uri), self._path(to_uri(target)), True)
        return target

    def exists(self, name: str) -> bool:
        """Whether ``name`` (a table or folder under the root) is published."""
        return self._exists(f"{self.table_uri(name)}/_SUCCESS")

    def list_folder(self, name: str) -> list[str]:
        """Names of the sub-folders of ``name`` (e.g. the model versions), sorted."""
        uri = self.table_uri(name)
        if not self._exists(uri):
            return []
        return sorted(s.getPath().getName() for s in self._fs.listStatus(self._path(uri)) if s.isDirectory())

    def publish(self, run: str, names: list[str]) -> None:
        """Replace the published tables ``names`` with the run's staged ones."""
        for name in names:
            if not self._exists(f"{self.staging_uri(run, name)}/_SUCCESS"):
                raise WarehouseError(f"run {run}: table {name} was not written completely")
        if self.table_format == "delta":
            for name in names:
                if name.split("/")[0] not in NOT_TABLES:
                    self.spark.sql(f"CONVERT TO DELTA parquet.`{self.staging_uri(run, name)}`")
        self._write_text(f"{self.root}/{_STAGING}/{run}/{_PUBLISH}", json.dumps(names))
        self._roll_forward(run, names)
        logger.info("published %s to %s", ", ".join(names), self.root)

    def recover(self) -> None:
        """Finish an interrupted publish, drop runs that never reached it."""
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
            staged, final = self.staging_uri(run, name), self.table_uri(name)
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
            other = self._lock_holder(lock)
            if other is None:  # released meanwhile
                continue
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

    def _lock_holder(self, lock: str) -> dict[str, Any] | None:
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
        if (self._lock_holder(aside) or {}).get("token") != stale.get("token"):  # moved a fresh lock: put it back
            self._fs.rename(self._path(aside), self._path(lock))
            return
        self._fs.delete(self._path(aside), False)
        logger.warning("warehouse %s: took over the writer lock of %s (pid %s on %s, since %s), which is no "
                       "longer running", self.root, stale.get("command"), stale.get("pid"), stale.get("host"),
                       stale.get("started"))

    def _drop_lock(self, token: str) -> None:
        lock = f"{self.root}/{LOCK_FILE}"
        holder = self._lock_holder(lock)
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
def writer_lock(spark: SparkSession, warehouse: str, *, command: str, create: bool = False) -> Iterator[None]:
    """Hold the warehouse's writer lock (``WH/_LOCK``) for the block; re-entrant in one process.

    Raises
    ------
    WarehouseError
        Another live process holds it (the message names its host, pid, start time and
        command), or the folder is missing (``create=False``) or not writable.
    """
    store = Warehouse(spark, warehouse, create=create)
    held = _HELD.get(store.root)
    if held:
        held[1] += 1
    else:
        token = store._take_lock(command)
        held = _HELD[store.root] = [token, 1]
    try:
        yield
    finally:
        held[1] -= 1
        if held[1] == 0:
            del _HELD[store.root]
            store._drop_lock(held[0])


def holds_writer_lock(*, create: bool = False) -> Callable[[Stage], Stage]:
    """Decorate a stage ``f(spark, *, warehouse, ...)`` to run under :func:`writer_lock`."""
    def decorate(stage: Stage) -> Stage:
        @functools.wraps(stage)
        def locked(spark, *args, warehouse: str, **kwargs):
            with writer_lock(spark, warehouse, command=stage.__name__, create=create):
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


def check_delta(spark: SparkSession) -> None:
    """Raise a :class:`WarehouseError` saying what to add when Delta Lake is not usable."""
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    try:
        spark.sparkContext._jvm.java.lang.Class.forName(DELTA_EXTENSION)
        has_jars = True
    except Exception:  # py4j wraps ClassNotFoundException
        has_jars = False
    if has_jars and DELTA_EXTENSION in extensions:
        return
    missing = "the Delta Lake jars are not on Spark's classpath" if not has_jars else \
        f"spark.sql.extensions does not name {DELTA_EXTENSION}"
    raise WarehouseError(
        f"warehouse.table_format is delta but {missing}. Add them to the job, e.g. spark-submit "
        f"--packages io.delta:delta-spark_2.13:<the version for Spark {spark.version}> (or --jars "
        f"delta-spark_2.13-<v>.jar,delta-storage-<v>.jar) --conf spark.sql.extensions={DELTA_EXTENSION} "
        f"--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog; "
        f"or keep the default, warehouse.table_format: parquet"
    )


def _java_message(exc: Exception) -> str:
    java = getattr(exc, "java_exception", None)
    return str(java.getMessage()) if java is not None else str(exc)
