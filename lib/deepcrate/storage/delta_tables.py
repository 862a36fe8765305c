"""Delta tables through delta-rs (the ``deltalake`` package): no JVM jars.

Spark's executors write a table's Parquet files into a folder of the table
(``WH/<table>/<run>/``); the driver then commits exactly those files as one Delta
version that replaces the previous one. The Delta log is the list of files each version
reads, so a reader never globs the folder (which keeps the files of older versions
until ``vacuum``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

from deepcrate.errors import WarehouseError, first_line
from deepcrate.uris import filesystem_and_path, local_path

DELTA_LOG = "_delta_log"


@dataclass(frozen=True)
class DataFile:
    """One Parquet file of a table version, as the Delta log records it."""

    path: str  # relative to the table's folder
    size: int
    modified_ms: int
    rows: int


def delta_location(uri: str) -> str:
    """The location delta-rs opens for a Hadoop-style URI (``file:/x`` -> ``/x``, ``s3a://`` -> ``s3://``)."""
    if uri.startswith("file:"):
        return local_path(uri)
    if uri.startswith("s3a://"):
        return "s3://" + uri[len("s3a://"):]
    return uri


def folder_files(folder_uri: str, *, prefix: str) -> tuple[list[DataFile], pa.Schema | None]:
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


def commit_files(table_uri: str, files: list[DataFile], *, schema: pa.Schema, name: str,
                 properties: dict[str, str]) -> int:
    """Commit ``files`` as the next version of the table at ``table_uri`` (created when new);
    they replace every file of the version before. Returns the new version.

    Raises
    ------
    WarehouseError
        Another writer committed to the table since this one read it, or the log is unusable.
    """
    actions = [AddAction(f.path, f.size, {}, f.modified_ms, True, json.dumps({"numRecords": f.rows}))
               for f in files]
    commit = CommitProperties(custom_metadata=properties)
    location = delta_location(table_uri)
    schema = pa.schema([field.remove_metadata() for field in schema]).remove_metadata()
    try:
        try:
            table = DeltaTable(location)
        except TableNotFoundError:
            create_table_with_add_actions(location, DeltaSchema.from_arrow(schema), actions, mode="error",
                                          name=name, commit_properties=commit)
            return 0
        table.create_write_transaction(actions, mode="overwrite", schema=schema, commit_properties=commit)
        table.update_incremental()
        return table.version()
    except CommitFailedError as exc:
        raise WarehouseError(f"table {name}: another job committed to {table_uri} while this one wrote it "
                             f"({first_line(exc)}); this job's version was not committed") from None
    except Exception as exc:  # DeltaError, or a plain Exception for a log delta-rs cannot parse
        raise WarehouseError(f"table {name}: cannot commit to its Delta log in {table_uri}: "
                             f"{first_line(exc)}") from None


def open_version(table_uri: str, version: int, *, name: str) -> DeltaTable:
    """The Delta table at ``table_uri`` as of ``version``.

    Raises
    ------
    WarehouseError
        The log is missing, lacks that version or cannot be parsed (one line, naming the table).
    """
    try:
        return DeltaTable(delta_location(table_uri), version=version)
    except Exception as exc:  # delta-rs raises plain Exception, not only DeltaError, for a log it cannot parse
        raise WarehouseError(f"table {name}: its Delta log in {table_uri} cannot be read at version "
                             f"{version}: {first_line(exc)}") from None


def committed_files(table_uri: str, version: int, *, name: str) -> list[str]:
    """The files version ``version`` of the table reads, as URIs in the style of ``table_uri``."""
    # Joined here from the log's relative paths: delta-rs's own file_uris() percent-encodes the
    # table's folder (a space becomes %20), which Spark would then read as those characters.
    actions = open_version(table_uri, version, name=name).get_add_actions(flatten=True)
    return [f"{table_uri.rstrip('/')}/{path}" for path in actions.column("path").to_pylist()]


def latest_version(table_uri: str) -> int | None:
    """The newest committed version, or None when the folder holds no Delta table."""
    try:
        return DeltaTable(delta_location(table_uri)).version()
    except TableNotFoundError:
        return None
    except Exception as exc:  # a truncated or corrupt log: delta-rs raises plain Exception (a Rust error)
        raise WarehouseError(f"table {table_uri.rstrip('/').rsplit('/', 1)[-1]}: its Delta log in {table_uri} "
                             f"cannot be read: {first_line(exc)}") from None


def restore(table_uri: str, version: int, *, name: str, properties: dict[str, str]) -> int:
    """Commit a new version that reads the same files as ``version`` did; returns the new version."""
    try:
        table = DeltaTable(delta_location(table_uri))
        table.restore(version, commit_properties=CommitProperties(custom_metadata=properties))
        table.update_incremental()
        return table.version()
    except Exception as exc:  # DeltaError, or a plain Exception for a log delta-rs cannot parse
        raise WarehouseError(f"table {name}: cannot restore version {version} in {table_uri}: "
                             f"{first_line(exc)}") from None
