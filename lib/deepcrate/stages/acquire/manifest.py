"""A URL manifest read and planned: which file each row becomes (``Download``), named safely."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepcrate.errors import InputError

METADATA_COLUMNS = ["genre", "artist", "title", "label", "catalogue_number", "release_date"]
AUDIO_EXTENSIONS = (".mp3", ".ogg", ".flac", ".wav")
MAX_NAME_BYTES = 150

# statuses of the downloads table
DOWNLOADED, PRESENT, FAILED, DUPLICATE = "downloaded", "present", "failed", "duplicate"
INCOMPLETE = "partial"  # the body ended, but the audio in it is cut short: fetched again by the next run


@dataclass

class Download:
    """One manifest row: where it goes and how it went (a row of ``downloads``)."""

    url: str
    path: str | None  # relative to the audio folder
    metadata: dict[str, str] = field(default_factory=dict)
    status: str = ""
    http_status: int | None = None
    bytes: int | None = None
    attempts: int = 0
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "metadata"}


# -- the manifest ----------------------------------------------------------------------


def read_url_manifest(manifest: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV or JSON-lines manifest with a ``url`` column, values as stripped strings.

    JSON lines are recognised by a first non-blank character ``{``.

    Raises
    ------
    InputError
        Unreadable file, a bad JSON line, or no ``url`` column.
    """
    path = Path(manifest)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"manifest {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"manifest {path}: cannot be read as UTF-8: {exc}") from None
    if text.lstrip().startswith("{"):
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise InputError(f"manifest {path}: line {number} is not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise InputError(f"manifest {path}: line {number} is not a JSON object")
            rows.append(value)
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))  # keeps newlines inside quoted fields
    rows = [{_column(k): "" if v is None else str(v).strip() for k, v in row.items() if k is not None}
            for row in rows]
    if not rows:
        raise InputError(f"manifest {path}: no rows")
    if "url" not in rows[0]:
        raise InputError(f"manifest {path}: needs a 'url' column, has {sorted(rows[0])}")
    return rows


def plan_downloads(rows: Iterable[dict[str, str]]) -> list[Download]:
    """Assign every row its file name, deterministically from the manifest order.

    ``<genre>/<artist - title>.<ext>`` (or the URL's file name without artist and
    title), sanitised; a name already taken gets `` (2)``, `` (3)``... A URL seen
    before is a duplicate; a URL that is not http(s) fails at once.
    """
    downloads, taken, seen = [], set(), {}
    for row in rows:
        url = row.get("url", "")
        metadata = {k: v for k, v in row.items() if k != "url"}
        item = Download(url=url, path=None, metadata=metadata)
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https") or not urllib.parse.urlsplit(url).netloc:
            item.status, item.error = FAILED, f"not an http(s) URL: {url!r}"
        elif url in seen:
            item.status, item.path = DUPLICATE, seen[url].path
            item.error = "the same URL as an earlier row"
        else:
            item.path = _unique(_relative_path(url, metadata), taken)
            taken.add(item.path.casefold())
            seen[url] = item
        downloads.append(item)
    return downloads


def safe_name(text: str, *, fallback: str = "track") -> str:
    """A file or folder name that is safe on every file system and cannot escape its folder.

    NFC-normalised; control characters, path separators and characters Windows
    refuses become spaces or are dropped; no leading dots (hidden files, ``..``);
    at most :data:`MAX_NAME_BYTES` bytes of UTF-8.
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    text = re.sub(r'[/\\:*?"<>|]+', " ", text)
    text = re.sub(r"\s+", " ", text).lstrip(". ")
    text = text.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore").rstrip(" .")
    return text or fallback


def _relative_path(url: str, metadata: dict[str, str]) -> str:
    genre = safe_name(metadata.get("genre", ""), fallback="unlabelled")
    url_name = urllib.parse.unquote(os.path.basename(urllib.parse.urlsplit(url).path))
    stem, ext = os.path.splitext(url_name)
    ext = ext.lower() if ext.lower() in AUDIO_EXTENSIONS else ".mp3"
    artist, title = metadata.get("artist", ""), metadata.get("title", "")
    name = " - ".join(part for part in (artist, title) if part) or stem
    return f"{genre}/{safe_name(name)}{ext}"


def _unique(path: str, taken: set[str]) -> str:
    stem, ext = os.path.splitext(path)
    candidate, n = path, 1
    while candidate.casefold() in taken:  # case-insensitive: safe on macOS and Windows shares too
        n += 1
        candidate = f"{stem} ({n}){ext}"
    return candidate


def _column(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")
