"""Locations: local paths, Hadoop-style ``file:`` URIs and the pyarrow file system behind them."""
from __future__ import annotations

import os
import re

import pyarrow.fs

from deepcrate.errors import WarehouseError


def to_uri(location: str) -> str:
    """A local path becomes an absolute ``file:`` URI; URIs pass through."""
    if "://" in location or location.startswith("file:"):
        return location.rstrip("/")
    return "file:" + os.path.abspath(os.path.expanduser(location))


def warehouse_uri(location: str) -> str:
    """:func:`to_uri` for a warehouse folder, refused in one line where delta-rs cannot open it.

    delta-rs 1.6 decodes a local table's path once when it writes and twice when it reads,
    so a folder named ``w%41`` would be written as itself and read as ``wA``. A ``%`` before two
    hex digits is therefore refused; spaces, unicode, ``#``, ``?`` and other ``%`` work.
    """
    uri = to_uri(location)
    if uri.startswith("file:") and re.search(r"%[0-9A-Fa-f]{2}", uri):
        raise WarehouseError(f"warehouse {local_path(uri)}: a folder whose path holds '%' followed by two hex digits "
                             f"cannot be used (the Delta library reads it as an escaped character); rename it")
    return uri


def local_path(uri: str) -> str:
    """The local path of a ``file:`` URI (``file:/x`` or ``file:///x``)."""
    return "/" + uri[len("file:"):].lstrip("/")


def filesystem_and_path(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """``file:/x`` (Hadoop style, one slash) is a local path; other URIs go to pyarrow."""
    if uri.startswith("file:"):
        return pyarrow.fs.LocalFileSystem(), local_path(uri)
    if "://" in uri:
        return pyarrow.fs.FileSystem.from_uri(uri)
    return pyarrow.fs.LocalFileSystem(), uri
