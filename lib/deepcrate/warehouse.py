"""The warehouse: a folder of Parquet tables, each written aside and then published.

Layout::

    WH/<table>/                  a published table (Parquet files, _SUCCESS, _deepcrate.json)
    WH/_staging/<run>/<table>/   a table being written
    WH/_staging/<run>/_PUBLISH   written just before the renames: the run's tables are complete

A job writes every table of a run under ``_staging``, then publishes them with
renames. A crash before ``_PUBLISH`` leaves the published tables untouched (the next
job deletes the half-written run); a crash during the renames is rolled forward by
the next job. File-system calls go through Hadoop's FileSystem API, so the same code
serves local folders, HDFS and object stores. One job writes to a warehouse at a time.

With ``table_format="delta"`` every staged table is converted to Delta in place
(``CONVERT TO DELTA``) before it is published. Each published table is then one Delta
commit whose files are exactly the Parquet files in its folder, so readers that
open the Parquet files directly (training, the index) see the same rows as Spark.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from deepcrate.errors import WarehouseError

logger = logging.getLogger(__name__)

METADATA_FILE = "_deepcrate.json"
NOT_TABLES = {"models", "index"}  # folders of the warehouse that hold files, not a table
TABLE_FORMATS = ("parquet", "delta")
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
_STAGING = "_staging"
_PUBLISH = "_PUBLISH"


def to_uri(location: str) -> str:
    """A local path becomes an absolute ``file:`` URI; URIs pass through."""
    if "://" in location or location.startswith("file:"):
        return location.rstrip("/")
    return "file:" + os.path.abspath(os.path.expanduser(location))


def local_path(uri: str) -> str:
    """The local path of a ``file:`` URI (``file:/x`` or ``file:///x``)."""
    return "/" + uri[len("file:"):].lstrip("/")


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

    def read(self, name: str) -> DataFrame:
        if not self._exists(f"{self.root}/{name}/_SUCCESS"):
            raise WarehouseError(f"warehouse {self.root}: no table {name!r} (has: {self.tables()})")
        if self._exists(f"{self.root}/{name}/_delta_log"):
            check_delta(self.spark)
            return self.spark.read.format("delta").load(self.table_uri(name))
        return self.spark.read.parquet(self.table_uri(name))

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

    def write_metadata(self, uri: str, metadata: dict[str, Any]) -> None:
        self._write_text(f"{uri}/{METADATA_FILE}", json.dumps(metadata, indent=2, sort_keys=True))

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
