"""What is in the audio folder, and what the manifest says about it (driver side)."""
from __future__ import annotations

import csv
import logging
import os
import re
import unicodedata
from pathlib import PurePosixPath

import pandas as pd
from pyspark.sql import SparkSession

from deepcrate.errors import InputError
from deepcrate.storage.schemas import SONGS
from deepcrate.uris import to_uri

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ["genre", "artist", "title", "release_date"]


def normalise_path(uri: str) -> str:
    """One spelling per file, so manifest rows and listed files meet (NFC, '/')."""
    return unicodedata.normalize("NFC", uri.replace("\\", "/"))


def list_files(spark: SparkSession, audio_uri: str) -> pd.DataFrame:
    """Every file under ``audio_uri``, recursively: ``path`` (as Spark spells it), ``length``
    (bytes), ``modified`` (milliseconds since the epoch) and ``problem`` (why an entry
    cannot be opened, e.g. a broken symlink or a symlink loop; else None).

    Includes what Spark's own file listing leaves out (empty files, hidden names, entries
    that cannot be opened), so that those files can be reported instead of silently
    dropped. Local folders are walked directly (a symlinked folder is not followed, and
    is reported); other file systems through Hadoop's FileSystem API.

    Raises
    ------
    InputError
        When ``audio_uri`` is not a folder or holds no files.
    """
    if audio_uri.startswith("file:"):
        root = audio_uri[len("file:") :]
        if not os.path.isdir(root):
            raise InputError(f"audio folder {audio_uri}: no such folder")
        rows = []
        for folder, folders, names in os.walk(root):
            linked = [name for name in folders if os.path.islink(os.path.join(folder, name))]
            for name in sorted(names + linked):
                path = os.path.join(folder, name)
                target = f" -> {os.readlink(path)}" if os.path.islink(path) else ""
                if name in linked:  # Spark's listing would follow it, possibly round in a loop
                    rows.append(("file:" + path, 0, 0, f"{path}{target}: a symlink to a folder, not followed "
                                 "(link the files instead, or ingest that folder itself)"))
                    continue
                try:
                    stat = os.stat(path)
                except OSError as exc:
                    rows.append(("file:" + path, 0, 0, f"{path}{target}: cannot be opened: {exc.strerror or exc}"))
                    continue
                rows.append(("file:" + path, stat.st_size, stat.st_mtime_ns // 1_000_000, None))
    else:
        jvm = spark.sparkContext._jvm
        path = jvm.org.apache.hadoop.fs.Path(audio_uri)
        fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        if not fs.isDirectory(path):
            raise InputError(f"audio folder {audio_uri}: no such folder")
        rows, files = [], fs.listFiles(path, True)
        while files.hasNext():
            status = files.next()
            rows.append((status.getPath().toString(), status.getLen(), status.getModificationTime(), None))
    if not rows:
        raise InputError(f"audio folder {audio_uri}: holds no files")
    return pd.DataFrame(rows, columns=["path", "length", "modified", "problem"]).sort_values("path", ignore_index=True)


def skipped_by_spark(uri: str, *, audio_uri: str) -> bool:
    """True for the names Spark's file listing hides (``.x``, ``_x``, in any folder level)."""
    parts = uri[len(audio_uri) :].strip("/").split("/")
    return any(
        part.startswith(".") or (part.startswith("_") and "=" not in part) or part.endswith("._COPYING_")
        for part in parts
    )


def folder_genre(uri: str, *, audio_uri: str) -> str | None:
    """The parent folder's name, or None for a file directly in the audio folder."""
    relative = PurePosixPath(uri[len(audio_uri) :].lstrip("/"))
    return relative.parent.name or None


def read_manifest(manifest: str, *, audio_uri: str) -> pd.DataFrame:
    """Read a manifest CSV into one row per file, indexed by the file's URI.

    Columns: ``path`` (relative to the audio folder, or absolute), then optional
    ``genre``, ``artist``, ``title``, ``release_date`` and any extra columns, which
    are kept as strings with names made SQL-friendly.

    Raises
    ------
    InputError
        When the file is unreadable or has no ``path`` column.
    """
    try:
        _check_field_counts(manifest)
        # index_col=False: when rows hold more fields than the header, pandas would take the first
        # column as the index and shift every label one column left (the check above refuses that)
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False, encoding="utf-8", index_col=False)
    except FileNotFoundError:
        raise InputError(f"manifest {manifest}: no such file") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"manifest {manifest}: is empty (it needs a header line with a 'path' column)") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise InputError(f"manifest {manifest}: cannot be read as UTF-8 CSV: {exc}") from None
    names = [_column_name(c) for c in table.columns]
    for name in dict.fromkeys(names):
        same = [str(c) for c, n in zip(table.columns, names) if n == name]
        if len(same) > 1:
            raise InputError(f"manifest {manifest}: columns {', '.join(repr(c) for c in same)} all become column "
                             f"{name!r}; rename all but one")
    table.columns = names
    if "path" not in table.columns:
        raise InputError(f"manifest {manifest}: needs a 'path' column, has {list(table.columns)}")
    reserved = set(SONGS.names) - {"path", *LABEL_COLUMNS}
    clashes = sorted(reserved & set(table.columns))
    if clashes:
        raise InputError(f"manifest {manifest}: columns {clashes} are computed by ingest; rename them")
    for column in LABEL_COLUMNS:
        if column not in table.columns:
            table[column] = ""
    table = table.replace({"": None})
    table["uri"] = [_manifest_uri(p, audio_uri=audio_uri) for p in table["path"]]
    duplicated = table["uri"].duplicated(keep="first")
    if duplicated.any():
        logger.warning(
            "manifest %s: %d rows repeat an earlier path and are ignored (first: %s)",
            manifest, int(duplicated.sum()), table.loc[duplicated, "path"].iloc[0],
        )
        for _, rows in table[table["uri"].duplicated(keep=False)].groupby("uri", sort=False):
            listed = list(dict.fromkeys(rows["genre"]))
            if len(listed) > 1:
                logger.warning("manifest %s: %s is listed with genres %s; the first row's, %r, is kept",
                               manifest, rows["path"].iloc[0], listed, listed[0])
        table = table[~duplicated]
    dates = pd.to_datetime(table["release_date"], errors="coerce", format="mixed")
    unparsed = table["release_date"].notna() & dates.isna()
    if unparsed.any():
        logger.warning(
            "manifest %s: %d release dates are not dates and are left empty (first: %r)",
            manifest, int(unparsed.sum()), table.loc[unparsed, "release_date"].iloc[0],
        )
    table["release_date"] = dates.dt.date.astype(object).where(dates.notna(), None)
    extras = [c for c in table.columns if c not in ("path", "uri", *LABEL_COLUMNS)]
    return table.set_index("uri")[LABEL_COLUMNS + extras]


def _check_field_counts(manifest: str) -> None:
    """Refuse a row with more fields than the header names: its values would land in other columns."""
    with open(manifest, encoding="utf-8", newline="") as lines:
        rows = csv.reader(lines)
        header = next(rows, [])
        for row in rows:
            if len(row) > len(header):
                raise InputError(f"manifest {manifest}: line {rows.line_num} has {len(row)} fields, the header names "
                                 f"{len(header)} ({', '.join(header)}); quote a value that holds a comma")


def _manifest_uri(path: str | None, *, audio_uri: str) -> str:
    if not path:
        return ""
    path = path.replace("\\", "/")
    if "://" in path or path.startswith("file:") or os.path.isabs(path):
        return normalise_path(to_uri(path))
    while path.startswith("./"):
        path = path[2:]
    return normalise_path(f"{audio_uri}/{path}")


def _column_name(name: str) -> str:
    cleaned = re.sub(r"[^0-9a-zA-Z_]+", "_", str(name).strip().lower()).strip("_")
    return cleaned or "column"


def literal_glob(path: str) -> str:
    """``path`` with Hadoop's glob characters escaped: Spark globs every path it loads."""
    return re.sub(r"([\\\[\]{}*?])", r"\\\1", path)
