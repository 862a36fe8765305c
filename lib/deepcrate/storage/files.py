"""The driver's own file work through one layer, ``pyarrow.fs``: local folders, mounted folders, HDFS and
object stores alike.

Spark writes the tables' files through Hadoop and delta-rs commits them; everything else
the warehouse does to files (its lock, run and stage records, scratch, copies of model
folders, rollback and vacuum) goes through these functions. Each takes a URI as
:func:`deepcrate.uris.to_uri` gives it (``file:/x`` for a local path).
"""
from __future__ import annotations

import os

import pyarrow.fs
from pyarrow.fs import FileInfo, FileSelector, FileType

from deepcrate.errors import WarehouseError, first_line
from deepcrate.uris import filesystem_and_path, local_path


def exists(uri: str) -> bool:
    """Whether a file or folder is at ``uri``."""
    filesystem, path = filesystem_and_path(uri)
    return filesystem.get_file_info(path).type != FileType.NotFound


def read_text(uri: str) -> str:
    """The UTF-8 text of file ``uri``."""
    filesystem, path = filesystem_and_path(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read().decode("utf-8")
    except FileNotFoundError:
        raise WarehouseError(f"{uri}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WarehouseError(f"{uri}: cannot be read: {first_line(exc)}") from None


def write_text(uri: str, text: str) -> None:
    """Write (or overwrite) file ``uri``, making its folder when missing."""
    filesystem, path = filesystem_and_path(uri)
    try:
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(text.encode("utf-8"))
    except OSError as exc:
        raise WarehouseError(f"{uri}: cannot be written: {first_line(exc)}") from None


def create_new(uri: str, text: str) -> bool:
    """Write file ``uri`` only if nothing is there; False when something is.

    Atomic on a local folder and a shared POSIX mount (``O_EXCL``). Elsewhere (HDFS through
    pyarrow, object stores) it checks, then writes: two writers starting within the same
    moment could both succeed.
    """
    if uri.startswith("file:"):
        try:
            descriptor = os.open(local_path(uri), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise WarehouseError(f"{uri}: cannot be written: {exc.strerror}") from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
        return True
    if exists(uri):
        return False
    write_text(uri, text)
    return True


def move(source: str, target: str) -> bool:
    """Rename file or folder ``source`` to ``target`` (on one file system); False when ``source`` is gone."""
    filesystem, source_path = filesystem_and_path(source)
    try:
        filesystem.move(source_path, filesystem_and_path(target)[1])
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise WarehouseError(f"could not move {source} to {target}: {first_line(exc)}") from None
    return True


def delete(uri: str) -> None:
    """Delete file or folder ``uri`` (a folder with everything in it); nothing there is fine."""
    filesystem, path = filesystem_and_path(uri)
    kind = filesystem.get_file_info(path).type
    if kind == FileType.Directory:
        filesystem.delete_dir(path)
    elif kind == FileType.File:
        filesystem.delete_file(path)


def make_folder(uri: str) -> None:
    """Make folder ``uri`` and its parents."""
    filesystem, path = filesystem_and_path(uri)
    try:
        filesystem.create_dir(path, recursive=True)
    except OSError as exc:
        raise WarehouseError(f"{uri}: cannot be made: {first_line(exc)}") from None


def listing(uri: str, *, recursive: bool = False) -> list[FileInfo]:
    """What is in folder ``uri`` (everything below it when ``recursive``), sorted by path; empty when missing."""
    filesystem, path = filesystem_and_path(uri)
    infos = filesystem.get_file_info(FileSelector(path, recursive=recursive, allow_not_found=True))
    return sorted(infos, key=lambda info: info.path)


def copy_folder(source: str, target: str) -> None:
    """Copy folder ``source`` with everything in it to ``target``, across file systems."""
    source_fs, source_path = filesystem_and_path(source)
    target_fs, target_path = filesystem_and_path(target)
    try:
        target_fs.create_dir(target_path, recursive=True)
        pyarrow.fs.copy_files(source_path, target_path, source_filesystem=source_fs, destination_filesystem=target_fs)
    except OSError as exc:
        raise WarehouseError(f"could not copy {source} to {target}: {first_line(exc)}") from None
