"""A playlist from one catalogue song to another, through near neighbours; and how it is printed."""
from __future__ import annotations

import logging
import os
from typing import TextIO

import numpy as np
import pandas as pd

from deepcrate.errors import InputError
from deepcrate.query.output import write_json, write_m3u, write_table
from deepcrate.query.recommend.catalogue import PLAYLIST_BREADTH, Catalogue, Mixable, Seed
from deepcrate.query.recommend.explain import musical_shown
from deepcrate.storage.schemas import MUSICAL_COLUMNS
from deepcrate.uris import local_path
from deepcrate.vectors.faiss_index import neighbours
from deepcrate.vectors.similarity import normalise

logger = logging.getLogger(__name__)


def playlist(catalogue: Catalogue, start: Seed, end: Seed, *, length: int, mixable: Mixable | None = None,
             breadth: int = PLAYLIST_BREADTH) -> pd.DataFrame:
    """Catalogue songs from ``start`` to ``end``, about ``length`` in all: each the one of the
    previous song's ``breadth`` nearest (mixable with it, when asked) that is closest to a point
    moving from ``start``'s sound to ``end``'s; no song twice.

    More than ``length`` songs when ``end`` is not yet among the last one's nearest; an
    :class:`InputError` when no such path exists within ``3 * length`` songs.
    """
    if start.position is None or end.position is None:
        raise InputError("a playlist runs between two catalogue songs")
    if start.position == end.position:
        raise InputError("a playlist's start and end are the same song")
    if length < 2:
        raise InputError(f"length {length}: a playlist has at least its two ends")
    if mixable is not None:
        catalogue.require_musical()
    index, songs = catalogue.loaded.index, catalogue.songs
    path, used = [start.position], {start.position, end.position}
    similarities = [None]
    while True:
        current = path[-1]
        here = normalise(index.reconstruct(current)[None, :])
        allowed = None
        if mixable is not None:
            song = songs.iloc[current]
            allowed = mixable.allowed(songs, tempo=None if pd.isna(song["tempo_bpm"]) else float(song["tempo_bpm"]),
                                      code=song["camelot"] if isinstance(song["camelot"], str) else None)
            allowed[end.position] = True  # the user chose the end: it need only be near
        near = neighbours(index, here, k=min(breadth, len(songs) - 1), exclude=[{current}], allowed=allowed,
                          duplicate_similarity=catalogue.settings.index.duplicate_similarity)[0]
        by_position = dict(near)
        if end.position in by_position and len(path) >= length - 1:
            path.append(end.position)
            similarities.append(by_position[end.position])
            break
        if len(path) >= 3 * length:
            raise InputError(f"no path from {start.label!r} to {end.label!r} within {3 * length} songs "
                             f"(each step among the previous song's {breadth} nearest"
                             f"{', mixable' if mixable else ''}); try a longer playlist"
                             f"{' or one that need not be mixable' if mixable else ''}")
        share = min(len(path) / (length - 1), 1.0)  # how far along from start's sound to end's
        target = normalise(((1 - share) * start.vector + share * end.vector)[None, :])[0]
        candidates = [p for p, _ in near if p not in used]
        if not candidates:
            if end.position in by_position:  # nothing new nearby: finish early rather than repeat
                path.append(end.position)
                similarities.append(by_position[end.position])
                break
            raise InputError(f"no path from {start.label!r} to {end.label!r}: the songs near "
                             f"{songs.iloc[current]['title'] or songs.index[current]!r} are all used")
        vectors = normalise(np.stack([index.reconstruct(p) for p in candidates]))
        pick = candidates[int(np.argmax(vectors @ target))]
        path.append(pick)
        similarities.append(by_position[pick])
        used.add(pick)
    if len(path) > length:
        logger.warning("the playlist has %d songs, not %d: %r was not yet among the nearest songs",
                       len(path), length, end.label)
    rows = []
    for step, (position, similarity) in enumerate(zip(path, similarities), start=1):
        song = songs.iloc[position]
        rows.append({"step": step, "similarity": similarity, "title": song["title"], "artist": song["artist"],
                     "genre": song["genre"] or song["predicted_genre"],
                     **{column: song[column] for column in MUSICAL_COLUMNS}, "duration_s": song["duration_s"],
                     "path": song["path"], "song_id": songs.index[position]})
    return pd.DataFrame(rows)



def write_playlist(steps: pd.DataFrame, *, out: TextIO, fmt: str) -> None:
    """A playlist as a table, JSON, or M3U (extended) that DJ software opens."""
    if fmt == "m3u":
        write_m3u(((" - ".join(str(v) for v in (row.artist, row.title) if isinstance(v, str))
                    or os.path.basename(row.path), row.duration_s,
                    local_path(row.path) if row.path.startswith("file:") else row.path)
                   for row in steps.itertuples()), out)
        return
    if fmt == "json":
        write_json(steps.to_dict(orient="records"), out)
        return
    shown = musical_shown(steps.drop(columns=["song_id", "duration_s"]).assign(
        similarity=["" if v is None or pd.isna(v) else f"{v:.4f}" for v in steps["similarity"]],
    )).rename(columns={"similarity": "to previous"}).fillna("")
    out.write(f"a playlist of {len(steps)} songs:\n")
    write_table(list(shown.columns), shown.itertuples(index=False, name=None), out, width=None, count=False)


