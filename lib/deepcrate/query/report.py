"""``deepcrate report``: the catalogue as one self-contained HTML page to look at and listen to.

The page holds a map of the song embeddings (every song a point, coloured by genre;
hover names it, a click plays it and lists its recommendations, each playable), how good
the recommendations are (the ``evaluation`` table, the confusion matrix, the training
curves), and the catalogue itself (genres and splits, durations, rejects, the runs that
wrote the warehouse). It needs no server, no CDN and no Spark: pyarrow reads the tables,
the page's own script draws the map on a canvas from compactly embedded arrays
(about 150 bytes a song with 10 recommendations), so 100,000 songs stay under 20 MB.

Whatever the warehouse lacks (embeddings, an evaluation, a model, audio files that
moved) the page says, instead of failing.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from deepcrate.errors import InputError, ModelError, WarehouseError
from deepcrate.models.store import MODELS, read_model_folder
from deepcrate.storage.arrow_tables import ArrowTables
from deepcrate.storage.run_log import RunLog, RunRecord
from deepcrate.storage.schemas import EVALUATION_METHODS, Table
from deepcrate.uris import filesystem_and_path, local_path, warehouse_uri
from deepcrate.vectors.projection import project

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
UNLABELLED = "(unlabelled)"
REJECTS_LISTED = 50  # paths shown per reject reason; the count is always whole
RUNS_LISTED = 20
_METRICS = (("songs", "songs"), ("song_accuracy", "song accuracy"), ("precision_at_5", "P@5"),
            ("precision_at_10", "P@10"), ("map_at_5", "MAP@5"), ("map_at_10", "MAP@10"))


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


@dataclass
class ReportSummary:
    path: str
    songs: int
    projection: str
    size_bytes: int
    missing: list[str]

    def lines(self) -> list[str]:
        lines = [f"report written: {self.path} ({self.songs} songs, {self.size_bytes / 1e6:.1f} MB"
                 + (f"; map: {self.projection})" if self.projection else ")")]
        lines += [f"  not shown: {reason}" for reason in self.missing]
        return lines


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_report(warehouse: str, *, out: str, audio_base: str | None = None, projection: str = "auto") -> ReportSummary:
    """Write the report of ``warehouse`` to the local file ``out`` (replaced whole, never half-written).

    Parameters
    ----------
    warehouse : str
        A local warehouse folder (or ``file:`` URI).
    out : str
        The HTML file to write; audio links are relative to its folder unless ``audio_base`` is given.
    audio_base : str, optional
        A URL or path under which the audio folder's files are found (the songs' common folder
        is replaced by it), for a report served beside the music.
    projection : str
        ``auto``, ``umap``, ``tsne`` or ``pca`` (:func:`deepcrate.vectors.projection.project`).
    """
    out = os.path.abspath(os.path.expanduser(out))
    if os.path.isdir(out):
        raise WarehouseError(f"report {out}: is a folder; give the HTML file to write")
    try:  # the place is tried before the page is built (a projection can take minutes)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        draft = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=os.path.dirname(out), prefix=".report-",  # noqa: SIM115 (closed below, after the page is built)
                                            suffix=".html", delete=False)
    except OSError as exc:
        raise InputError(f"report {out}: cannot be written there ({exc.strerror})") from None
    try:
        with draft:
            page = read_report_page(warehouse, out_dir=os.path.dirname(out), audio_base=audio_base,
                                    projection=projection)
            text = render_report(page)
            draft.write(text)
        os.chmod(draft.name, 0o666 & ~_umask())  # a page for people: the mode any program's output gets
        os.replace(draft.name, out)
    except OSError as exc:
        raise InputError(f"report {out}: cannot be written there ({exc.strerror})") from None
    finally:
        if os.path.exists(draft.name):
            os.unlink(draft.name)
    return ReportSummary(path=out, songs=len(page.songs), projection=page.projection,
                         size_bytes=len(text.encode("utf-8")), missing=page.missing)


# -- reading the warehouse ------------------------------------------------------------
def read_report_page(warehouse: str, *, out_dir: str, audio_base: str | None = None,
                     projection: str = "auto") -> ReportPage:
    """Read what the page shows from the current run of ``warehouse``."""
    root = warehouse_uri(warehouse)
    if not root.startswith("file:"):
        raise WarehouseError(f"report reads local warehouses; copy {root} locally first")
    filesystem, path = filesystem_and_path(root)
    if filesystem.get_file_info(path).type.name != "Directory":
        raise WarehouseError(f"warehouse {root}: no such folder")
    tables = ArrowTables.current(root)
    if not tables.exists(Table.SONGS):
        raise WarehouseError(f"warehouse {root}: no songs; run deepcrate ingest (or rebuild) first")
    missing: list[str] = []
    present = set(tables.dataset(Table.SONGS).schema.names)
    songs = tables.read(Table.SONGS, columns=["song_id", "path", "genre", "artist", "title", "split", "duration_s",
                                              *[c for c in ("tempo_bpm", "key", "camelot") if c in present]]).to_pandas()
    for column in ("tempo_bpm", "key", "camelot"):  # an ingest older than tempo and key
        if column not in songs:
            songs[column] = None
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


# -- the page -------------------------------------------------------------------------
def render_report(page: ReportPage) -> str:
    """The whole HTML page: the map's data as JSON in the page, the tables as HTML."""
    asset = resources.files("deepcrate.query") / "report_assets"
    body = "\n".join([
        f"<header><h1>deepcrate report</h1><p class=\"where\">{_e(local_path(page.warehouse))} &middot; "
        f"written {_e(page.generated)}"
        + (f" &middot; model {_e(page.model_version)}" if page.model_version else "") + "</p></header>",
        _missing_section(page.missing),
        _map_section(page),
        _quality_section(page),
        _catalogue_section(page),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>deepcrate report: {_e(os.path.basename(local_path(page.warehouse)))}</title>"
        f"<style>{(asset / 'page.css').read_text(encoding='utf-8')}</style></head>\n<body>\n{body}\n"
        f"<script id=\"report-data\" type=\"application/json\">{_json_for_script(_map_data(page))}</script>\n"
        f"<script>{(asset / 'page.js').read_text(encoding='utf-8')}</script>\n</body></html>\n"
    )


def _map_data(page: ReportPage) -> dict[str, Any]:
    """The songs and their recommendations for the page's script, packed: numbers as base64 arrays."""
    songs = page.songs
    genres = sorted(songs["genre"].dropna().unique().tolist())
    code = {genre: i for i, genre in enumerate(genres)}
    folder_index: dict[str, int] = {}  # the songs' URLs share few folders: each is stored once
    folder_of_song = [folder_index.setdefault(url.rpartition("/")[0] + "/" * ("/" in url), len(folder_index))
                      for url in songs["url"]]
    data: dict[str, Any] = {
        "count": len(songs),
        "ids": songs["song_id"].tolist(),
        "titles": [_text(v) for v in songs["title"]],
        "artists": [_text(v) for v in songs["artist"]],
        "genres": genres,
        "genre": [code.get(v, -1) for v in songs["genre"]],
        "predicted": [v if isinstance(v, str) else "" for v in songs["predicted_genre"]],
        **_musical_data(songs),
        "test": [i for i, split in enumerate(songs["split"]) if split == "test"],
        "folders": list(folder_index),
        "folder": folder_of_song,
        "files": [url.rpartition("/")[2] for url in songs["url"]],
        "lost": np.flatnonzero(~songs["found"].to_numpy(dtype=bool)).tolist(),
        "projection": page.projection,
        "k": 0,
    }
    if page.points is not None:
        mapped = ~np.isnan(page.points[:, 0])
        grid = np.where(mapped[:, None], np.round(np.nan_to_num(page.points) * 65534), 65535).astype("<u2")
        data["x"], data["y"] = _b64(grid[:, 0]), _b64(grid[:, 1])
    if page.neighbours is not None and page.neighbours.shape[1]:
        data["k"] = int(page.neighbours.shape[1])
        data["neighbours"] = _b64(page.neighbours.astype("<i4").ravel())
        data["similarity"] = _b64(np.round(page.similarity * 10000).astype("<i2").ravel())
    return data


def _missing_section(missing: list[str]) -> str:
    if not missing:
        return ""
    items = "".join(f"<li>{_e(reason)}</li>" for reason in missing)
    return f"<section id=\"missing\" class=\"notice\"><h2>Not shown</h2><ul>{items}</ul></section>"


def _map_section(page: ReportPage) -> str:
    if page.points is None:
        return ("<section id=\"map-section\"><h2>The map</h2><p class=\"empty\">No song embeddings yet: "
                "run deepcrate embed to draw the map.</p><div id=\"map-missing\"></div></section>")
    return (
        "<section id=\"map-section\"><h2>The map</h2>"
        f"<p class=\"note\">Every song is a point: a 2-D projection of its embedding by "
        f"<b id=\"projection\">{_e(page.projection)}</b>, coloured by genre; songs of the test split have a "
        "dark ring. Hover a point to name it, click it to play it and see what it recommends.</p>"
        "<div class=\"map-row\"><div class=\"map-box\"><canvas id=\"map\" width=\"800\" height=\"640\">"
        "</canvas><div id=\"tooltip\" hidden></div></div>"
        "<aside id=\"side\"><input id=\"search\" type=\"search\" placeholder=\"find a song by title or artist\" "
        "autocomplete=\"off\"><ol id=\"search-results\"></ol><div id=\"song\"><p class=\"empty\">Click a point or "
        "search for a song.</p></div></aside></div><ul id=\"legend\"></ul></section>"
    )


def _quality_section(page: ReportPage) -> str:
    parts = ["<section id=\"quality\"><h2>How good is it</h2>"]
    if page.evaluation is None or page.evaluation.empty:
        parts.append("<p class=\"empty\">No evaluation yet: run deepcrate evaluate.</p>")
    else:
        parts.append(_evaluation_tables(page.evaluation))
    parts.append(_confusion_table(page.songs))
    if page.history:
        parts.append("<h3>Training</h3><div class=\"charts\">" + _training_charts(page.history) + "</div>")
    if page.model_settings:
        rows = "".join(f"<tr><th>{_e(key)}</th><td>{_e(_setting(value))}</td></tr>"
                       for key, value in sorted(page.model_settings.items()))
        parts.append(f"<h3>The model: {_e(page.model_version)}</h3><table class=\"settings\">{rows}</table>")
    return "".join(parts) + "</section>"


def _evaluation_tables(evaluation: pd.DataFrame) -> str:
    order = {method: i for i, method in enumerate(EVALUATION_METHODS)}
    methods = sorted(evaluation["method"].unique(), key=lambda m: (order.get(m, len(order)), m))
    overall = evaluation[evaluation["genre"].isna()].set_index("method")
    head = "".join(f"<th>{label}</th>" for _, label in _METRICS)
    rows = "".join(
        f"<tr><th>{_e(method)}</th>"
        + "".join(_metric_cell(overall.loc[method, metric] if method in overall.index else None,
                               method=method, genre="", metric=metric) for metric, _ in _METRICS) + "</tr>"
        for method in methods)
    version = _e(", ".join(sorted(evaluation["model_version"].unique())))
    parts = [f"<h3>The test split, every genre (model {version})</h3>",
             "<p class=\"note\">P@k: the share of the k nearest songs that have the query's genre; model: the "
             "learnt embedding; mfcc and timbre: classic features; random and ideal: the floor and the ceiling.</p>",
             f"<table id=\"evaluation\" class=\"numbers\"><tr><th>method</th>{head}</tr>{rows}</table>"]
    per_genre = evaluation[evaluation["genre"].notna()]
    if not per_genre.empty:
        genres = sorted(per_genre["genre"].unique())
        by = per_genre.set_index(["genre", "method"])
        head = "".join(f"<th>{_e(m)}</th>" for m in methods)
        rows = "".join(
            f"<tr><th>{_e(genre)}</th><td>{int(by.loc[(genre, methods[0]), 'songs']) if (genre, methods[0]) in by.index else ''}</td>"
            + "".join(_metric_cell(by.loc[(genre, m), "precision_at_10"] if (genre, m) in by.index else None,
                                   method=m, genre=genre, metric="precision_at_10") for m in methods) + "</tr>"
            for genre in genres)
        parts.append("<h3>P@10 per genre</h3><table id=\"evaluation-genres\" class=\"numbers\">"
                     f"<tr><th>genre</th><th>songs</th>{head}</tr>{rows}</table>")
    return "".join(parts)


def _metric_cell(value: Any, *, method: str, genre: str, metric: str) -> str:
    shown = "–" if value is None or pd.isna(value) else (str(int(value)) if metric == "songs" else f"{value:.3f}")
    return (f"<td data-method=\"{_e(method)}\" data-genre=\"{_e(genre)}\" data-metric=\"{metric}\">"
            f"{shown}</td>")


def _confusion_table(songs: pd.DataFrame) -> str:
    test = songs[(songs["split"] == "test") & songs["genre"].notna() & songs["predicted_genre"].notna()]
    if test.empty:
        return "<h3>Confusion</h3><p class=\"empty\">No labelled test songs with a predicted genre.</p>"
    labels = sorted(set(test["genre"]) | set(test["predicted_genre"]))
    counts = pd.crosstab(test["genre"], test["predicted_genre"]).reindex(index=labels, columns=labels, fill_value=0)
    head = "".join(f"<th class=\"vertical\"><span>{_e(label)}</span></th>" for label in labels)
    rows = []
    for genre, row in counts.iterrows():
        total = max(int(row.sum()), 1)
        cells = "".join(
            f"<td style=\"background:rgba(31,119,180,{count / total:.2f})\" class=\"{_shade(count / total)}\" "
            f"data-true=\"{_e(genre)}\" data-predicted=\"{_e(predicted)}\">{int(count) or ''}</td>"
            for predicted, count in row.items())
        rows.append(f"<tr><th>{_e(genre)}</th>{cells}</tr>")
    correct = int(sum(counts.loc[g, g] for g in labels))
    return ("<h3>Confusion (test songs: true genre by row, predicted by column)</h3>"
            f"<p class=\"note\">{correct} of {len(test)} test songs predicted right.</p>"
            f"<table id=\"confusion\" class=\"confusion\"><tr><th></th>{head}</tr>{''.join(rows)}</table>")


def _training_charts(history: dict[str, list[float]]) -> str:
    charts = [("loss", ["loss", "val_loss"]), ("accuracy", ["accuracy", "val_accuracy"]),
              ("validation songs' P@10", ["val_precision_at_10"])]
    return "".join(_line_chart(title, {name: history[name] for name in names if history.get(name)})
                   for title, names in charts if any(history.get(name) for name in names))


def _line_chart(title: str, series: dict[str, list[float]], *, width: int = 320, height: int = 200) -> str:
    """An inline SVG line chart: one line per series, epochs along x."""
    values = [v for vs in series.values() for v in vs if v is not None and np.isfinite(v)]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    high = high if high > low else low + 1
    longest = max(len(vs) for vs in series.values())
    left, bottom, top = 44, 24, 22
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c")

    def xy(i: int, v: float) -> str:
        x = left + (width - left - 8) * (i / max(longest - 1, 1))
        y = top + (height - top - bottom) * (1 - (v - low) / (high - low))
        return f"{x:.1f},{y:.1f}"

    lines, keys = [], []
    for n, (name, vs) in enumerate(series.items()):
        points = " ".join(xy(i, v) for i, v in enumerate(vs) if v is not None and np.isfinite(v))
        lines.append(f"<polyline fill=\"none\" stroke=\"{colours[n % 3]}\" stroke-width=\"2\" points=\"{points}\"/>")
        keys.append(f"<text x=\"{left + 4 + 120 * n}\" y=\"14\" fill=\"{colours[n % 3]}\">{_e(name)}</text>")
    return (f"<figure class=\"chart\"><svg width=\"{width}\" height=\"{height}\" role=\"img\" "
            f"aria-label=\"{_e(title)}\">"
            f"<line x1=\"{left}\" y1=\"{height - bottom}\" x2=\"{width - 8}\" y2=\"{height - bottom}\" class=\"axis\"/>"
            f"<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{height - bottom}\" class=\"axis\"/>"
            f"<text x=\"2\" y=\"{top + 4}\">{high:.3g}</text><text x=\"2\" y=\"{height - bottom}\">{low:.3g}</text>"
            f"<text x=\"{left}\" y=\"{height - 6}\">epoch 1</text>"
            f"<text x=\"{width - 60}\" y=\"{height - 6}\">{longest}</text>"
            + "".join(lines) + "".join(keys) + f"</svg><figcaption>{_e(title)}</figcaption></figure>")


def _catalogue_section(page: ReportPage) -> str:
    songs = page.songs
    genre = songs["genre"].fillna(UNLABELLED)
    counts = pd.crosstab(genre, songs["split"]).reindex(columns=list(SPLITS), fill_value=0)
    rows = "".join(
        f"<tr><th>{_e(g)}</th>" + "".join(f"<td data-genre=\"{_e(g)}\" data-split=\"{s}\">{int(row[s])}</td>"
                                          for s in SPLITS)
        + f"<td>{int(row.sum())}</td><td>{_duration(songs.loc[genre == g, 'duration_s'].mean())}</td></tr>"
        for g, row in counts.iterrows())
    totals = "".join(f"<td>{int(counts[s].sum())}</td>" for s in SPLITS)
    duration = songs["duration_s"]
    parts = [
        "<section id=\"catalogue\"><h2>The catalogue</h2>",
        f"<table id=\"genres\" class=\"numbers\"><tr><th>genre</th>{''.join(f'<th>{s}</th>' for s in SPLITS)}"
        f"<th>songs</th><th>mean length</th></tr>{rows}<tr class=\"total\"><th>all</th>{totals}"
        f"<td id=\"song-count\">{len(songs)}</td><td>{_duration(duration.mean())}</td></tr></table>",
        (f"<p>Lengths: shortest {_duration(duration.min())}, median {_duration(duration.median())}, longest "
         f"{_duration(duration.max())}; {duration.sum() / 3600:.1f} hours in all.</p>" if len(songs) else ""),
        _rejects_list(page.rejects),
        _runs_table(page.runs),
        "</section>",
    ]
    return "".join(parts)


def _rejects_list(rejects: pd.DataFrame) -> str:
    if rejects.empty:
        return "<h3>Rejected files</h3><p id=\"rejects\">None: every file became a song.</p>"
    items = []
    for reason, group in sorted(rejects.groupby("reason"), key=lambda item: (-len(item[1]), item[0])):
        listed = "".join(f"<li><code>{_e(local_path(p) if p.startswith('file:') else p)}</code>: {_e(m)}</li>"
                         for p, m in zip(group["path"].head(REJECTS_LISTED), group["message"].head(REJECTS_LISTED)))
        more = f"<li>and {len(group) - REJECTS_LISTED} more</li>" if len(group) > REJECTS_LISTED else ""
        items.append(f"<li><details><summary><b>{_e(reason)}</b>: <span data-reason=\"{_e(reason)}\">{len(group)}"
                     f"</span> files</summary><ul>{listed}{more}</ul></details></li>")
    return f"<h3>Rejected files</h3><ul id=\"rejects\">{''.join(items)}</ul>"


def _runs_table(runs: list[RunRecord]) -> str:
    if not runs:
        return "<h3>Runs</h3><p>No run records (a plain Parquet warehouse).</p>"
    last: dict[str, RunRecord] = {}
    for record in reversed(runs):  # oldest first: the newest change of each table wins
        for name in record.changed:
            last[name] = record
    stage_rows = "".join(f"<tr><th>{_e(name)}</th><td>{record.number}</td><td>{_e(record.time)}</td>"
                         f"<td>{_e(record.command)}</td><td>{record.tables[name].rows if name in record.tables else ''}"
                         f"</td></tr>" for name, record in sorted(last.items()))
    run_rows = "".join(f"<tr><td>{r.number}</td><td>{_e(r.time)}</td><td>{_e(r.command)}</td>"
                       f"<td>{_e(', '.join(r.changed) or 'nothing')}</td></tr>" for r in runs[:RUNS_LISTED])
    return ("<h3>What last changed each table</h3><table id=\"last-changes\"><tr><th>table or folder</th><th>run</th>"
            f"<th>time</th><th>command</th><th>rows</th></tr>{stage_rows}</table>"
            f"<h3>Runs, newest first</h3><table id=\"runs\"><tr><th>run</th><th>time</th><th>command</th>"
            f"<th>changed</th></tr>{run_rows}</table>")


# -- small helpers --------------------------------------------------------------------
def _musical_data(songs: pd.DataFrame) -> dict[str, Any]:
    """Tempo (tenths of a BPM, 0: unknown) and key (an index into ``keys``, 255: unknown), packed."""
    tempo = pd.to_numeric(songs["tempo_bpm"], errors="coerce").fillna(0).to_numpy()
    names = [f"{k} ({c})" if isinstance(k, str) else None for k, c in zip(songs["key"], songs["camelot"])]
    keys = sorted({n for n in names if n})
    code = {name: i for i, name in enumerate(keys)}
    return {"bpm": _b64(np.clip(np.round(tempo * 10), 0, 65535).astype("<u2")), "keys": keys,
            "key": _b64(np.array([code.get(n, 255) for n in names], dtype=np.uint8))}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _duration(seconds: float) -> str:
    if seconds is None or pd.isna(seconds):
        return "–"
    minutes, rest = divmod(round(float(seconds)), 60)
    return f"{minutes}:{rest:02d}"


def _shade(share: float) -> str:
    return "light" if share > 0.5 else "dark"  # the text's colour on a cell this dark


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _json_for_script(value: Any) -> str:
    """JSON that cannot end the ``<script>`` holding it, whatever the song titles say."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
