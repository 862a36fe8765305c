"""What the report shows, read from a warehouse with pyarrow: no Spark (:func:`read_report_page`)."""
from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from deepcrate.errors import ModelError, WarehouseError
from deepcrate.models.store import MODELS, read_model_folder
from deepcrate.storage.arrow_tables import ArrowTables
from deepcrate.storage.run_log import RunLog, RunRecord
from deepcrate.storage.schemas import MUSICAL_COLUMNS, Table
from deepcrate.uris import local_path
from deepcrate.vectors.projection import project

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
UNLABELLED = "(unlabelled)"
REJECTS_LISTED = 50  # paths shown per reject reason; the count is always whole
RUNS_LISTED = 20


@dataclass
class ReportPage:
    """Everything the page shows, read from a warehouse (:func:`read_report_page`)."""

    warehouse: str
    songs: pd.DataFrame  # song_id, artist, title, genre, split, duration_s, predicted_genre, url, found
    points: np.ndarray | None = None  # (songs, 2) in [0, 1]; None: no embeddings
    projection: str = ""
    neighbours: np.ndarray | None = None  # (songs, k) row positions in ``songs``, -1 where none
    similarity: np.ndarray | None = None  # (songs, k)
    evaluation: pd.DataFrame | None = None
    model_version: str | None = None
    model_settings: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason", "message"]))
    runs: list[RunRecord] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # what the page says it cannot show, and why
    generated: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


# -- reading the warehouse ------------------------------------------------------------
def read_report_page(warehouse: str, *, out_dir: str, audio_base: str | None = None,
                     projection: str = "auto") -> ReportPage:
    """Read what the page shows from the current run of ``warehouse``."""
    tables = ArrowTables.local(warehouse, reader="report")
    root = tables.root
    if not tables.exists(Table.SONGS):
        raise WarehouseError(f"warehouse {root}: no songs; run deepcrate ingest (or rebuild) first")
    missing: list[str] = []
    songs = tables.read_pandas(Table.SONGS, columns=["song_id", "path", "genre", "artist", "title", "split", "duration_s"],
                               optional=MUSICAL_COLUMNS)  # an ingest older than tempo and key lacks them
    songs = songs.sort_values("song_id", kind="stable").reset_index(drop=True)
    page = ReportPage(warehouse=root, songs=songs, missing=missing, runs=RunLog(root).history())
    if tables.exists(Table.REJECTS):
        page.rejects = tables.read(Table.REJECTS).to_pandas()
    songs["url"], songs["found"] = _audio_links(songs["path"], out_dir=out_dir, audio_base=audio_base)
    lost = songs.loc[~songs["found"], "path"].map(local_path).tolist()
    if lost:
        missing.append(f"{len(lost)} songs' audio files are not where the catalogue says (moved or deleted?), "
                       f"so they cannot be played: {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}")
    _read_embeddings(page, tables, projection=projection)
    _read_recommendations(page, tables)
    if tables.exists(Table.EVALUATION):
        page.evaluation = tables.read(Table.EVALUATION).to_pandas()
    else:
        missing.append("no evaluation table: run deepcrate evaluate (or rebuild) to see how good the "
                       "recommendations are")
    _read_model(page, tables)
    return page


def _read_embeddings(page: ReportPage, tables: ArrowTables, *, projection: str) -> None:
    songs = page.songs
    songs["predicted_genre"] = None
    if not tables.exists(Table.SONG_EMBEDDINGS):
        page.missing.append("no song embeddings: run deepcrate embed (or rebuild) to draw the map")
        return
    embedded = tables.read(Table.SONG_EMBEDDINGS, columns=["song_id", "embedding", "predicted_genre",
                                                           "model_version"]).to_pandas()
    embedded = songs[["song_id"]].merge(embedded, on="song_id", how="inner")
    page.model_version = str(embedded["model_version"].iloc[0]) if len(embedded) else None
    songs["predicted_genre"] = songs["song_id"].map(embedded.set_index("song_id")["predicted_genre"])
    position = pd.Series(np.arange(len(songs)), index=songs["song_id"])
    points = np.full((len(songs), 2), np.nan)
    if len(embedded):
        vectors = np.stack(embedded["embedding"].to_numpy()).astype(np.float32)
        mapped, page.projection = project(vectors, method=projection)
        points[position[embedded["song_id"]].to_numpy()] = mapped
    page.points = points
    unmapped = len(songs) - len(embedded)
    if unmapped:
        page.missing.append(f"{unmapped} songs have no embedding yet (run deepcrate embed): they are not on the map")


def _read_recommendations(page: ReportPage, tables: ArrowTables) -> None:
    if not tables.exists(Table.RECOMMENDATIONS):
        page.missing.append("no recommendations table: run deepcrate index (or rebuild)")
        return
    recs = tables.read(Table.RECOMMENDATIONS).to_pandas()
    k = int(recs["rank"].max()) if len(recs) else 0
    position = pd.Series(np.arange(len(page.songs)), index=page.songs["song_id"])
    rows = position.reindex(recs["song_id"]).to_numpy()
    columns = position.reindex(recs["neighbor_id"]).to_numpy()
    known = ~(np.isnan(rows) | np.isnan(columns))
    neighbours = np.full((len(page.songs), k), -1, dtype=np.int32)
    similarity = np.zeros((len(page.songs), k))
    ranks = recs["rank"].to_numpy()[known] - 1
    neighbours[rows[known].astype(int), ranks] = columns[known].astype(int)
    similarity[rows[known].astype(int), ranks] = recs["similarity"].to_numpy()[known]
    page.neighbours, page.similarity = neighbours, similarity


def _read_model(page: ReportPage, tables: ArrowTables) -> None:
    version = page.model_version
    if version is None and tables.view is not None:
        versions = sorted(name.split("/", 1)[1] for name in tables.view.folders if name.startswith(f"{MODELS}/"))
        version = versions[-1] if versions else None
    if version is None:
        page.missing.append("no trained model: run deepcrate train (or rebuild)")
        return
    try:
        folder = read_model_folder(local_path(tables.folder(f"{MODELS}/{version}")))
    except ModelError as exc:
        page.missing.append(f"model {version}: {exc}")
        return
    page.model_version = version
    page.model_settings = {**folder.train, "labels": folder.labels, "spectrogram": folder.spectrogram.preset}
    page.history = folder.history()


def _audio_links(paths: pd.Series, *, out_dir: str, audio_base: str | None) -> tuple[list[str], np.ndarray]:
    """Each song's audio as a URL the page can play, and whether its local file is there."""
    local = [local_path(uri) if uri.startswith("file:") else None for uri in paths]
    if audio_base:
        known = [p for p in local if p is not None]
        common = os.path.commonpath([os.path.dirname(p) for p in known]) if known else "/"
        base = audio_base.rstrip("/")
        urls = [f"{base}/{quote(os.path.relpath(p, common))}" if p is not None else uri
                for p, uri in zip(local, paths)]
        return urls, np.ones(len(urls), dtype=bool)  # served elsewhere: not ours to check
    urls = [quote(os.path.relpath(p, out_dir)) if p is not None else uri for p, uri in zip(local, paths)]
    found = np.array([p is None or os.path.isfile(p) for p in local], dtype=bool)
    return urls, found
