"""Locations: local paths, Hadoop-style ``file:`` URIs and the pyarrow file system behind them."""
from __future__ import annotations

import os

import pyarrow.fs


def to_uri(location: str) -> str:
    """A local path becomes an absolute ``file:`` URI; URIs pass through."""
    if "://" in location or location.startswith("file:"):
        return location.rstrip("/")
    return "file:" + os.path.abspath(os.path.expanduser(location))


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
