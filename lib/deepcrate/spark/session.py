"""The Spark session every job runs in, built from the ``spark`` config section."""
from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark import SparkContext
from pyspark.sql import SparkSession

from deepcrate.config import SparkSettings
from deepcrate.errors import ConfigError, spark_error_line
from deepcrate.spark.progress import LiveCount

logger = logging.getLogger(__name__)

# Local files through Hadoop's raw file system: its default (checksummed) one opens a ".x.crc"
# beside every file it reads, and a name with a colon ("Artist: Title.mp3") cannot become that
# path (URISyntaxException), which failed the whole ingest. Parquet and the Delta log carry
# their own integrity checks; the tables also lose their .crc clutter.
LOCAL_FILES = {"spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem"}


def under_spark_submit() -> bool:
    """True when spark-submit launched this driver (it then owns master and Python)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def ensure_utf8_locale() -> None:
    """Make the JVM spell file names in UTF-8.

    Without a UTF-8 locale, Java decodes file names as ASCII and a song called
    "café.mp3" cannot be opened. Must run before the JVM starts.
    """
    # The locale in effect is the first set of LC_ALL, LC_CTYPE, LANG.
    effective = next((os.environ[v] for v in ("LC_ALL", "LC_CTYPE", "LANG") if os.environ.get(v)), "")
    if not re.search(r"utf-?8", effective, re.IGNORECASE):
        os.environ["LC_ALL"] = "C.UTF-8"


def spark_session(section: SparkSettings, *, quiet: bool = False) -> SparkSession:
    """Get or create the session the ``spark`` settings describe.

    In local mode the session stays on loopback and its Python workers run this
    interpreter, so a project virtualenv works without being activated. With ``quiet``, a JVM
    started here writes its own output (start-up notices, Spark's log) to a file instead of
    the terminal; its last words are quoted if it fails to start.
    """
    ensure_utf8_locale()
    builder = SparkSession.builder.appName(section.app_name)
    for key, value in section.options.items():
        builder = builder.config(key, _conf_value(value))
    if not under_spark_submit():
        master = section.master
        builder = builder.master(master)
        if master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            # The spark.pyspark.python option is not honoured here in local mode; the
            # environment variable is.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            builder = builder.config("spark.driver.host", "127.0.0.1").config(
                "spark.driver.bindAddress", "127.0.0.1"
            )
    # Executors on a cluster decode file names too.
    builder = builder.config("spark.executorEnv.LC_ALL", "C.UTF-8")
    for key, value in LOCAL_FILES.items():
        if key not in section.options:
            builder = builder.config(key, value)
    if "spark.sql.warehouse.dir" not in section.options:
        # Spark's catalog makes its default database folder (./spark-warehouse) the first time a
        # statement looks at it (SHOW TABLES): deepcrate keeps no tables there, so it goes to a
        # folder of its own that is removed at exit, never into the user's current folder.
        builder = builder.config("spark.sql.warehouse.dir", _scratch_catalog_folder())
    starts_jvm = SparkContext._active_spark_context is None and not under_spark_submit()
    with _jvm_output(to_file=quiet and starts_jvm) as jvm_log:
        try:
            spark = builder.getOrCreate()
        except Exception as exc:  # the JVM exits early: a bad master, too little memory, no Java
            if "INVALID_CONF_VALUE" in str(exc):  # an option refused by a session that was already running
                raise ConfigError(f"spark.options: {spark_error_line(exc)}") from None
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            said = f"the JVM said: {_last_words(jvm_log)}" if jvm_log else "the JVM's own message, if any, is above"
            raise ConfigError(f"Spark did not start (spark.master {section.master!r}, spark.options "
                              f"{section.options}): {reason}; {said}") from None
    try:  # Spark checks SQL options only when the session's settings are first read: here, not mid-job
        for key, value in section.options.items():
            if key.startswith("spark.sql.") and key != "spark.sql.warehouse.dir":
                spark.conf.set(key, _conf_value(value))
    except Exception as exc:
        raise ConfigError(f"spark.options: {spark_error_line(exc)}") from None
    spark.sparkContext.setLogLevel(section.log_level)
    logger.info("Spark %s, master %s", spark.version, spark.sparkContext.master)
    return spark


@contextmanager
def _jvm_output(*, to_file: bool) -> Iterator[str | None]:
    """While the block starts the JVM, point this process's stdout and stderr at a log file, which
    the JVM inherits for good (its "Using incubator modules", log4j and native-library notices,
    Spark's own log, its unified logging); ours are restored after, so the JVM never holds the
    answer's stdout (a pipe reading it ends when this process does). Yields the file's path
    (None: left as it was)."""
    if not to_file:
        yield None
        return
    descriptor, path = tempfile.mkstemp(prefix="deepcrate-spark-", suffix=".log")
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    for fd in saved:
        os.dup2(descriptor, fd)
    os.close(descriptor)
    try:
        yield path
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def _last_words(log: str) -> str:
    """The line of the JVM's log that says why it stopped (an exception's), else its last line."""
    with open(log, encoding="utf-8", errors="replace") as lines:
        said = [line.strip() for line in lines if line.strip()]
    reasons = [line for line in said if "Exception" in line or "Error" in line]
    return (reasons or said or ["nothing"])[0]


def _scratch_catalog_folder() -> str:
    folder = tempfile.mkdtemp(prefix="deepcrate-catalog-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _conf_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def live_count(spark: SparkSession) -> LiveCount:
    """A count tasks add to that the driver sees move while they run (:class:`~deepcrate.spark.progress.LiveCount`)."""
    return LiveCount(spark.sparkContext.accumulator(0), driver_host=spark.conf.get("spark.driver.host", None))


@contextmanager
def session_conf(spark: SparkSession, values: dict[str, str]) -> Iterator[None]:
    """Set SQL options for one stage and restore the session's own afterwards."""
    previous = {key: spark.conf.get(key, None) for key in values}
    for key, value in values.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
