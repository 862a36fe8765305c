"""The driver's own file work through one layer, ``pyarrow.fs``: local folders, mounted folders, HDFS and
object stores alike.

Spark writes the tables' files through Hadoop and delta-rs commits them; everything else
the warehouse does to files (its lock, run and stage records, scratch, copies of model
folders, rollback and vacuum) goes through these functions. Each takes a URI as
:func:`deepcrate.uris.to_uri` gives it (``file:/x`` for a local path).
"""
from __future__ import annotations

import os
import uuid

import pyarrow.fs
from pyarrow.fs import FileInfo, FileSelector, FileType

from deepcrate.errors import WarehouseError, first_line
from deepcrate.uris import filesystem_and_path, local_path, warehouse_uri


def warehouse_folder(warehouse: str, *, create: bool = False) -> str:
    """The URI of warehouse folder ``warehouse``; with ``create``, made when missing and checked writable.

    Raises
    ------
    WarehouseError
        The folder is missing (``create=False``) or not writable.
    """
    root = warehouse_uri(warehouse)
    shown = local_path(root) if root.startswith("file:") else root  # as the user typed it
    if create:
        try:
            make_folder(root)
            probe = f"{root}/.write-probe-{uuid.uuid4().hex}"
            write_text(probe, "")
            delete(probe)
        except WarehouseError as exc:
            raise WarehouseError(f"warehouse {shown}: not writable: {exc}") from None
    filesystem, path = filesystem_and_path(root)
    if filesystem.get_file_info(path).type != FileType.Directory:
        raise WarehouseError(f"warehouse {shown}: no such folder")
    return root


def exists(uri: str) -> bool:
    """Whether a file or folder is at ``uri``."""
    filesystem, path = filesystem_and_path(uri)
    return filesystem.get_file_info(path).type != FileType.NotFound


def read_text(uri: str) -> str:
    """The UTF-8 text of file ``uri``."""
    text = read_text_if_any(uri)
    if text is None:
        raise WarehouseError(f"{uri}: missing")
    return text


def read_text_if_any(uri: str) -> str | None:
    """The UTF-8 text of file ``uri``, or None when there is no such file."""
    filesystem, path = filesystem_and_path(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read().decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        if filesystem.get_file_info(path).type == FileType.NotFound:
            return None
        raise WarehouseError(f"{uri}: cannot be read: {first_line(exc)}") from None


def write_text(uri: str, text: str) -> None:
    """Write (or replace) file ``uri``, making its folder when missing. Written beside it first, then
    renamed over it: a reader sees the old text or the new, never a part (where renames are atomic)."""
    filesystem, path = filesystem_and_path(uri)
    folder, name = path.rsplit("/", 1)
    draft = f"{folder}/.{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        filesystem.create_dir(folder, recursive=True)
        with filesystem.open_output_stream(draft) as stream:
            stream.write(text.encode("utf-8"))
        filesystem.move(draft, path)
    except OSError as exc:
        raise WarehouseError(f"{uri}: cannot be written: {first_line(exc)}") from None


def create_new(uri: str, text: str) -> bool:
    """Write file ``uri`` only if nothing is there; False when something is.

    On a local folder or a shared POSIX mount the text is written to a draft and hard-linked
    to the name: atomic, and the file appears complete. Elsewhere (HDFS through pyarrow,
    object stores) it checks, then writes: two writers starting within the same moment
    could both succeed.
    """
    if not uri.startswith("file:"):
        if exists(uri):
            return False
        write_text(uri, text)
        return True
    path = local_path(uri)
    draft = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(draft, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(draft)
    except OSError as exc:
        raise WarehouseError(f"{uri}: cannot be written: {exc.strerror or exc}") from None
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
