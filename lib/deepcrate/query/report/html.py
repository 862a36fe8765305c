"""The report's HTML: one self-contained page (its style and script inlined from ``assets/``)."""
from __future__ import annotations

import base64
import html
import json
import os
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from deepcrate.audio.musical import weak_key, weak_tempo
from deepcrate.query.report.page import REJECTS_LISTED, RUNS_LISTED, SPLITS, UNLABELLED, ReportPage
from deepcrate.storage.run_log import RunRecord
from deepcrate.storage.schemas import EVALUATION_METHODS
from deepcrate.uris import local_path

_METRICS = (("songs", "songs"), ("song_accuracy", "song accuracy"), ("precision_at_5", "P@5"),
            ("precision_at_10", "P@10"), ("map_at_5", "MAP@5"), ("map_at_10", "MAP@10"))


def render_report(page: ReportPage) -> str:
    """The whole HTML page: the map's data as JSON in the page, the tables as HTML."""
    asset = resources.files("deepcrate.query.report") / "assets"
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
    """Tempo (tenths of a BPM, 0: unknown), key (an index into ``keys``, 255: unknown) and which of the
    two are weak estimates (1: the tempo, 2: the key, 3: both), packed."""
    tempo = pd.to_numeric(songs["tempo_bpm"], errors="coerce").fillna(0).to_numpy()
    names = [f"{k} ({c})" if isinstance(k, str) else None for k, c in zip(songs["key"], songs["camelot"])]
    keys = sorted({n for n in names if n})
    code = {name: i for i, name in enumerate(keys)}
    weak = [weak_tempo(t) | weak_key(k) << 1 for t, k in zip(songs["tempo_confidence"], songs["key_confidence"])]
    return {"bpm": _b64(np.clip(np.round(tempo * 10), 0, 65535).astype("<u2")), "keys": keys,
            "key": _b64(np.array([code.get(n, 255) for n in names], dtype=np.uint8)),
            "weak": _b64(np.array(weak, dtype=np.uint8))}


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
