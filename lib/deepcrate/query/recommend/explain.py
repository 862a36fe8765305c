"""Why a song was recommended: the best-matching passages of seed and song, and what the two share; and
how recommendations are printed."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from deepcrate.audio.musical import compatible_camelot, weak_key, weak_tempo
from deepcrate.query.output import write_json, write_table
from deepcrate.query.recommend.catalogue import Catalogue, Seed
from deepcrate.storage.schemas import Table
from deepcrate.vectors.similarity import normalise

logger = logging.getLogger(__name__)


def explain(catalogue: Catalogue, seeds: Sequence[Seed], results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with ``why``: for each song, the pair of slices (one of a seed, one of the
    song) with the highest cosine, and what the two share (tempo, key, genre)."""
    ids = [catalogue.songs.index[s.position] for s in seeds if s.position is not None] + results["song_id"].tolist()
    wanted = pc.field("song_id").isin(ids)
    vectors = catalogue.tables.read(Table.SLICE_EMBEDDINGS, columns=["song_id", "slice_idx", "embedding"],
                               where=wanted).to_pandas()
    offsets = catalogue.tables.read(Table.SLICES, columns=["song_id", "slice_idx", "offset_s"], where=wanted).to_pandas()
    slices = vectors.merge(offsets, on=["song_id", "slice_idx"]).sort_values(["song_id", "slice_idx"])
    genres = catalogue.tables.read(Table.SONG_EMBEDDINGS, columns=["song_id", "genre_probabilities"],
                              where=wanted).to_pandas().set_index("song_id")["genre_probabilities"]
    length = catalogue.slice_seconds()
    by_song = {song: (normalise(np.stack(group["embedding"].to_numpy()).astype(np.float32)),
                      group["offset_s"].to_numpy()) for song, group in slices.groupby("song_id")}
    sides = []
    for seed in seeds:
        if seed.position is not None:
            song_id = catalogue.songs.index[seed.position]
            song = catalogue.songs.iloc[seed.position]
            sides.append((seed.label, *by_song.get(song_id, (None, None)), _probabilities(genres.get(song_id)),
                          song["tempo_bpm"], song["camelot"]))
        else:
            sides.append((seed.label, seed.slices, seed.slice_offsets, seed.genres, seed.tempo_bpm, seed.camelot))
    explained = []
    for row in results.itertuples():
        song_vectors, song_offsets = by_song.get(row.song_id, (None, None))
        best = None
        for label, seed_vectors, seed_offsets, seed_genres, tempo, code in sides:
            if seed_vectors is None or song_vectors is None:
                continue
            cosines = seed_vectors @ song_vectors.T
            i, j = np.unravel_index(int(np.argmax(cosines)), cosines.shape)
            if best is None or cosines[i, j] > best["similarity"]:
                best = {"seed": label, "seed_passage": [float(seed_offsets[i]), float(seed_offsets[i] + length)],
                        "passage": [float(song_offsets[j]), float(song_offsets[j] + length)],
                        "similarity": round(float(cosines[i, j]), 4),
                        "shared": shared_traits(tempo=tempo, code=code, genres=seed_genres,
                                                other_tempo=row.tempo_bpm, other_code=row.camelot,
                                                other_genres=_probabilities(genres.get(row.song_id)))}
        explained.append(best)
    return results.assign(why=explained)



def write_results(results: pd.DataFrame, *, out: TextIO, fmt: str, seeds: Sequence[Seed], k: int | None = None) -> None:
    """A readable table, or JSON (one object with the seeds and the list); says so when fewer
    than ``k`` songs passed the filters."""
    if k is not None and 0 < len(results) < k:
        logger.warning("only %d songs pass the filters (asked for %d)", len(results), k)
    if fmt == "json":
        write_json(results.to_dict(orient="records"), out)
        return
    described = [f"{s.label!r}" + (f" ({_musical(s)})" if s.tempo_bpm or s.camelot else "") for s in seeds]
    out.write(f"songs like {', '.join(described)}:\n")
    if results.empty:
        out.write("(no song passes the filters)\n")
        return
    explained = results["why"].tolist() if "why" in results.columns else None
    results = results.drop(columns=["why"], errors="ignore")
    shown = musical_shown(results.drop(columns=["song_id"]).assign(similarity=results["similarity"].round(4))).fillna("")
    notes = None if explained is None else [
        [f"why: {describe_match(why, title=title or os.path.basename(str(path))) if why else 'no slice embeddings to compare'}"]
        for why, title, path in zip(explained, shown["title"], shown["path"])]
    write_table(list(shown.columns), shown.itertuples(index=False, name=None), out, width=None, notes=notes, count=False)
    if k is not None and len(results) < k:
        out.write(f"(only {len(results)} of the {k} asked for pass the filters)\n")


def shared_traits(*, tempo: Any, code: Any, genres: dict[str, float] | None, other_tempo: Any, other_code: Any,
                  other_genres: dict[str, float] | None) -> list[str]:
    """What two songs share, in words: their tempi, their keys, their likeliest genres."""
    traits = []
    if known(tempo) and known(other_tempo):
        ratio = min((abs(float(other_tempo) * f - float(tempo)) / float(tempo), f) for f in (1.0, 2.0, 0.5))
        speed = {1.0: "", 2.0: " (at double tempo)", 0.5: " (at half tempo)"}[ratio[1]]
        traits.append(f"tempo {float(tempo):.1f} and {float(other_tempo):.1f} BPM: {100 * ratio[0]:.1f}% apart{speed}")
    if isinstance(code, str) and isinstance(other_code, str):
        relation = ("the same key" if code == other_code else "compatible keys"
                    if other_code in compatible_camelot(code) else "keys that clash")
        traits.append(f"{relation} ({code} and {other_code})")
    if genres and other_genres:
        top, other_top = max(genres, key=genres.get), max(other_genres, key=other_genres.get)
        traits.append(f"both mostly {top} ({genres[top]:.2f} and {other_genres[top]:.2f})" if top == other_top
                      else f"mostly {top} ({genres[top]:.2f}) and mostly {other_top} ({other_genres[other_top]:.2f})")
    return traits


def known(value: Any) -> bool:
    """Whether a value of a nullable column (None, NaN, or a value) is there."""
    return value is not None and not pd.isna(value)


def _probabilities(value: Any) -> dict[str, float] | None:
    """A ``genre_probabilities`` map column's value (a list of pairs, as pyarrow gives it) as a dict."""
    if value is None or len(value) == 0:
        return None
    return {str(k): float(v) for k, v in (value.items() if isinstance(value, dict) else value)}


def _clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


def describe_match(why: dict[str, Any], *, title: str) -> str:
    """'0:45–0:50 of SEED ↔ 1:10–1:15 of TITLE (cosine 0.97); the same key (8A and 8A); ...'"""
    (a, b), (c, d) = why["seed_passage"], why["passage"]
    match = (f"{_clock(a)}–{_clock(b)} of {why['seed']} ↔ {_clock(c)}–{_clock(d)} of {title} "
             f"(cosine {why['similarity']:.2f})")
    return "; ".join([match, *why["shared"]])


def musical_shown(table: pd.DataFrame) -> pd.DataFrame:
    """A table's tempo and key as a reader sees them: the tempo as ``bpm`` to a tenth, a weak estimate
    marked so (its confidence under ``WEAK_TEMPO_CONFIDENCE`` or ``WEAK_KEY_CONFIDENCE``), and the
    confidences themselves left to JSON."""
    bpm = [f"{t:.1f}{' (weak)' if weak_tempo(c) else ''}" if known(t) else ""
           for t, c in zip(table["tempo_bpm"], table["tempo_confidence"])]
    key = [f"{k}{' (weak)' if weak_key(c) else ''}" if isinstance(k, str) else k
           for k, c in zip(table["key"], table["key_confidence"])]
    return (table.assign(tempo_bpm=bpm, key=key).drop(columns=["tempo_confidence", "key_confidence"])
            .rename(columns={"tempo_bpm": "bpm"}))


def _musical(seed: Seed) -> str:
    tempo = f"{seed.tempo_bpm:.1f} BPM{' (weak)' if weak_tempo(seed.tempo_confidence) else ''}" if seed.tempo_bpm else ""
    code = f"{seed.camelot}{' (weak)' if weak_key(seed.key_confidence) else ''}" if seed.camelot else ""
    return ", ".join(part for part in (tempo, code) if part)
