"""The user-facing query: songs that sound like one or more seeds, with filters.

Runs without Spark (pyarrow reads the tables, FAISS answers), so a query takes a
second or two; ``--file`` adds TensorFlow to embed a song that is not in the catalogue.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from deepcrate.audio.decode import DecodeLimits
from deepcrate.audio.mfcc import SAMPLE_RATE as MFCC_RATE
from deepcrate.audio.musical import KEY_CHOICES, compatible_camelot, musical_facts, tempo_mixes
from deepcrate.audio.slicing import slice_audio_file
from deepcrate.config import EmbedSettings
from deepcrate.errors import AudioError, InputError, ModelError, WarehouseError, first_line
from deepcrate.models.store import MODELS, read_model_folder
from deepcrate.query.output import write_json, write_m3u, write_table
from deepcrate.storage.arrow_tables import ArrowTables
from deepcrate.storage.schemas import Table
from deepcrate.uris import local_path, to_uri, warehouse_uri
from deepcrate.vectors.faiss_index import INDEX, IndexSettings, load_index, neighbours
from deepcrate.vectors.similarity import normalise

logger = logging.getLogger(__name__)

SONG_COLUMNS = ["song_id", "path", "genre", "artist", "title", "release_date", "duration_s"]
MUSICAL_COLUMNS = ["tempo_bpm", "key", "camelot"]  # ingest's tempo and key (older warehouses lack them)
PLAYLIST_BREADTH = 50  # a playlist's next song is among the current song's this many nearest
RESULT_COLUMNS = ["rank", "similarity", "title", "artist", "genre", "tempo_bpm", "key", "camelot", "release_date",
                  "path", "song_id"]


@dataclass(frozen=True)
class Mixable:
    """Songs a DJ can mix after the seed: tempo within ``bpm_range`` % (at the same, double or
    half tempo) and a key that ``key`` allows (``compatible``: the Camelot neighbours)."""

    bpm_range: float = 6.0
    key: str = "compatible"

    def __post_init__(self) -> None:
        if not 0 < self.bpm_range <= 50:
            raise InputError(f"--bpm-range {self.bpm_range}: give a percentage between 0 and 50")
        if self.key not in KEY_CHOICES:
            raise InputError(f"--key {self.key!r}: choose one of {', '.join(KEY_CHOICES)}")

    def allowed(self, songs: pd.DataFrame, *, tempo: float | None, code: str | None) -> np.ndarray:
        """Which of ``songs`` (with ``tempo_bpm`` and ``camelot``) mix with a song of ``tempo`` and ``code``."""
        if tempo is None:
            raise InputError("--mixable: the seed has no tempo (no clear beat); drop --mixable or pick another seed")
        allowed = np.array([t is not None and not pd.isna(t) and tempo_mixes(float(t), tempo, percent=self.bpm_range)
                            for t in songs["tempo_bpm"]], dtype=bool)
        if self.key != "any":
            if code is None:
                raise InputError("--mixable: the seed has no clear key; add --key any, or pick another seed")
            allowed &= songs["camelot"].isin(compatible_camelot(code, rule=self.key)).to_numpy()
        return allowed


@dataclass(frozen=True)
class Filters:
    """Which songs may be recommended."""

    exclude_seed_artists: bool = False
    released_before: dt.date | None = None
    released_after: dt.date | None = None
    genre: str | None = None
    mixable: Mixable | None = None  # relative to the first seed


@dataclass
class Seed:
    label: str  # what the user typed, or the file
    vector: np.ndarray  # unit length
    position: int | None = None  # in the index, for catalogue songs
    artist: str | None = None
    tempo_bpm: float | None = None
    camelot: str | None = None
    slices: np.ndarray | None = None  # a file seed's slice vectors (unit length), for --explain
    slice_offsets: np.ndarray | None = None  # their starts, seconds
    genres: dict[str, float] | None = None  # a file seed's mean genre probabilities


class Catalogue:
    """A warehouse opened for queries: the song metadata, the index, the model version.

    Parameters
    ----------
    warehouse : str
        A local folder (or a URI pyarrow can open) that ``deepcrate index`` wrote to.
    config : dict
        The resolved config (``index`` and ``ingest`` sections).
    """

    def __init__(self, warehouse: str, *, config: dict[str, Any]) -> None:
        self.root = warehouse_uri(warehouse)
        self.config = config
        self.settings = IndexSettings.from_config(config)
        self.tables = ArrowTables.local(self.root, reader="recommend")
        for needed, stage in ((Table.SONGS, "ingest"), (Table.SONG_EMBEDDINGS, "embed"), (INDEX, "index")):
            if not self.tables.exists(needed):
                raise WarehouseError(f"warehouse {self.root}: no {needed}; run deepcrate {stage} first")
        self.has_musical = self.tables.has_columns(Table.SONGS, MUSICAL_COLUMNS)
        songs = self.tables.read_pandas(Table.SONGS, columns=SONG_COLUMNS, optional=MUSICAL_COLUMNS)
        predicted = self.tables.read(Table.SONG_EMBEDDINGS, columns=["song_id", "predicted_genre"]).to_pandas()
        self.songs = songs.merge(predicted, on="song_id", how="inner").set_index("song_id")
        self.loaded = load_index(local_path(self.tables.folder(INDEX)), settings=self.settings,
                                 expected_songs=len(predicted))
        self.positions = pd.Series(np.arange(len(self.loaded.ids)), index=self.loaded.ids)
        missing = set(self.loaded.ids) - set(self.songs.index)
        if missing:
            raise WarehouseError(f"the index lists {len(missing)} songs that songs/song_embeddings do not; "
                                 f"rebuild it with deepcrate index")
        self.songs = self.songs.loc[self.loaded.ids]  # row i = index position i
        self.model_version = self.loaded.description.get("model_version")

    # -- seeds -------------------------------------------------------------------------
    def resolve(self, text: str) -> str:
        """The song_id ``text`` names: an id, a path or file name, or a title (case-insensitive).

        Raises
        ------
        InputError
            When nothing matches, or a title or file name matches several songs.
        """
        if text in self.positions.index:
            return text
        songs = self.songs
        for column, matches in (
            ("path", songs["path"] == to_uri(text)),
            ("file name", songs["path"].map(lambda p: os.path.basename(p)) == os.path.basename(text)),
            ("title", songs["title"].fillna("").str.casefold() == text.casefold()),
            ("artist - title", (songs["artist"].fillna("") + " - " + songs["title"].fillna("")).str.casefold()
             == text.casefold()),
        ):
            found = songs.index[matches.to_numpy()]
            if len(found) == 1:
                return str(found[0])
            if len(found) > 1:
                listed = "; ".join(f"{sid} ({songs.at[sid, 'artist'] or '?'} - {songs.at[sid, 'title'] or '?'}, "
                                   f"{os.path.basename(songs.at[sid, 'path'])})" for sid in found[:5])
                more = f" and {len(found) - 5} more" if len(found) > 5 else ""
                raise InputError(f"{text!r} matches {len(found)} songs by {column}: {listed}{more}; "
                                 f"give a song_id or a path instead")
        raise InputError(f"no song matches {text!r} (tried song_id, path, file name, title, 'artist - title')")

    def song_seed(self, text: str) -> Seed:
        song_id = self.resolve(text)
        position = int(self.positions[song_id])
        vector = normalise(self.loaded.index.reconstruct(position)[None, :])[0]
        song = self.songs.iloc[position]
        return Seed(label=text, vector=vector, position=position, artist=song["artist"],
                    tempo_bpm=None if pd.isna(song["tempo_bpm"]) else float(song["tempo_bpm"]),
                    camelot=song["camelot"] if isinstance(song["camelot"], str) else None)

    def file_seed(self, path: str) -> Seed:
        """Decode, slice and embed a file that need not be in the catalogue, with the catalogue's model."""
        from deepcrate.models.inference import embed_images, worker_model

        folder = read_model_folder(local_path(self.tables.folder(f"{MODELS}/{self.model_version}")))
        try:
            with open(path, "rb") as stream:
                data = stream.read()
        except OSError as exc:
            raise InputError(f"--file {path}: {exc.strerror}") from None
        limits = DecodeLimits.from_config(self.config)
        try:
            sliced = slice_audio_file(data, name=os.path.basename(path), settings=folder.spectrogram, limits=limits,
                                      keep_native=True)
        except AudioError as exc:
            raise InputError(f"--file {path}: {exc.message}") from None
        shape = (folder.spectrogram.n_rows, folder.spectrogram.slice_frames)
        images = np.frombuffer(b"".join(sliced.slices), dtype=np.uint8).reshape(len(sliced.slices), *shape)
        with open(os.path.join(folder.path, "model.keras"), "rb") as stream:
            payload = stream.read()
        try:
            model = worker_model(folder.version, payload)
        except Exception as exc:  # a truncated zip, or a layer Keras' safe mode refuses to deserialise
            raise ModelError(f"model {folder.path}: model.keras cannot be loaded ({type(exc).__name__}: "
                             f"{first_line(exc)}); rebuild it with "
                             f"deepcrate train") from None
        embeddings, probabilities, _ = embed_images(model, images, batch_size=EmbedSettings.from_config(self.config).batch_size)
        vector = normalise(embeddings.mean(axis=0, dtype=np.float64).astype(np.float32)[None, :])[0]
        # at ingest's rate, so that the file's tempo and key compare with the catalogue's
        facts = musical_facts(sliced.audio.at_rate(MFCC_RATE), sample_rate=MFCC_RATE)
        return Seed(label=path, vector=vector, tempo_bpm=facts.tempo_bpm, camelot=facts.camelot,
                    slices=normalise(embeddings), genres=dict(zip(folder.labels, probabilities.mean(axis=0).tolist())),
                    slice_offsets=np.arange(len(embeddings)) * folder.spectrogram.slice_hop_seconds)

    # -- the query ---------------------------------------------------------------------
    def recommend(self, seeds: Sequence[Seed], *, k: int, filters: Filters) -> pd.DataFrame:
        """The ``k`` songs nearest the mean of the seeds, never a seed itself nor a duplicate of one."""
        if not seeds:
            raise InputError("give at least one --song or --file")
        query = normalise(np.mean([s.vector for s in seeds], axis=0)[None, :])
        allowed = self._allowed(seeds, filters)
        exclude = {s.position for s in seeds if s.position is not None}
        found = neighbours(self.loaded.index, query, k=k, exclude=[exclude], allowed=allowed,
                           duplicate_similarity=self.settings.duplicate_similarity)[0]
        rows = []
        for rank, (position, similarity) in enumerate(found, start=1):
            song = self.songs.iloc[position]
            rows.append({"rank": rank, "similarity": similarity, "title": song["title"],
                         "artist": song["artist"], "genre": song["genre"] or song["predicted_genre"],
                         "tempo_bpm": song["tempo_bpm"], "key": song["key"], "camelot": song["camelot"],
                         "release_date": song["release_date"], "path": song["path"],
                         "song_id": self.songs.index[position]})
        return pd.DataFrame(rows, columns=RESULT_COLUMNS)

    def playlist(self, start: Seed, end: Seed, *, length: int, mixable: Mixable | None = None,
                 breadth: int = PLAYLIST_BREADTH) -> pd.DataFrame:
        """Catalogue songs from ``start`` to ``end``, about ``length`` in all: each the one of the
        previous song's ``breadth`` nearest (mixable with it, when asked) that is closest to a point
        moving from ``start``'s sound to ``end``'s; no song twice.

        More than ``length`` songs when ``end`` is not yet among the last one's nearest; an
        :class:`InputError` when no such path exists within ``3 * length`` songs.
        """
        if start.position is None or end.position is None:
            raise InputError("a playlist runs between two catalogue songs (--from and --to)")
        if start.position == end.position:
            raise InputError("--from and --to name the same song")
        if length < 2:
            raise InputError(f"--length {length}: a playlist has at least its two ends")
        if mixable is not None:
            self._require_musical()
        index, songs = self.loaded.index, self.songs
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
                              duplicate_similarity=self.settings.duplicate_similarity)[0]
            by_position = dict(near)
            if end.position in by_position and len(path) >= length - 1:
                path.append(end.position)
                similarities.append(by_position[end.position])
                break
            if len(path) >= 3 * length:
                raise InputError(f"no path from {start.label!r} to {end.label!r} within {3 * length} songs "
                                 f"(each step among the previous song's {breadth} nearest"
                                 f"{', mixable' if mixable else ''}); try a longer --length"
                                 f"{' or without --mixable' if mixable else ''}")
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
                         "genre": song["genre"] or song["predicted_genre"], "tempo_bpm": song["tempo_bpm"],
                         "key": song["key"], "camelot": song["camelot"], "duration_s": song["duration_s"],
                         "path": song["path"], "song_id": songs.index[position]})
        return pd.DataFrame(rows)

    def explain(self, seeds: Sequence[Seed], results: pd.DataFrame) -> pd.DataFrame:
        """``results`` with ``why``: for each song, the pair of slices (one of a seed, one of the
        song) with the highest cosine, and what the two share (tempo, key, genre)."""
        ids = [self.songs.index[s.position] for s in seeds if s.position is not None] + results["song_id"].tolist()
        wanted = pc.field("song_id").isin(ids)
        vectors = self.tables.read(Table.SLICE_EMBEDDINGS, columns=["song_id", "slice_idx", "embedding"],
                                   where=wanted).to_pandas()
        offsets = self.tables.read(Table.SLICES, columns=["song_id", "slice_idx", "offset_s"], where=wanted).to_pandas()
        slices = vectors.merge(offsets, on=["song_id", "slice_idx"]).sort_values(["song_id", "slice_idx"])
        genres = self.tables.read(Table.SONG_EMBEDDINGS, columns=["song_id", "genre_probabilities"],
                                  where=wanted).to_pandas().set_index("song_id")["genre_probabilities"]
        length = self._slice_seconds()
        by_song = {song: (normalise(np.stack(group["embedding"].to_numpy()).astype(np.float32)),
                          group["offset_s"].to_numpy()) for song, group in slices.groupby("song_id")}
        sides = []
        for seed in seeds:
            if seed.position is not None:
                song_id = self.songs.index[seed.position]
                song = self.songs.iloc[seed.position]
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

    def _slice_seconds(self) -> float:
        return self.tables.metadata(Table.SLICES).spectrogram.slice_seconds

    def _require_musical(self) -> None:
        if not self.has_musical:
            raise InputError(f"--mixable: the songs of {self.root} have no tempo and key (an ingest older than "
                             f"them); run deepcrate ingest or rebuild again")

    def _allowed(self, seeds: Sequence[Seed], filters: Filters) -> np.ndarray | None:
        songs = self.songs
        allowed = np.ones(len(songs), dtype=bool)
        if filters.exclude_seed_artists:
            artists = {s.artist.casefold() for s in seeds if s.artist}
            if not artists:
                logger.warning("--exclude-artist: the seeds have no artist; nothing is excluded")
            allowed &= ~songs["artist"].fillna("").str.casefold().isin(artists).to_numpy()
        dates = pd.to_datetime(songs["release_date"])
        if filters.released_before:
            allowed &= (dates < pd.Timestamp(filters.released_before)).fillna(False).to_numpy(dtype=bool)
        if filters.released_after:
            allowed &= (dates > pd.Timestamp(filters.released_after)).fillna(False).to_numpy(dtype=bool)
        if filters.genre:
            genre = songs["genre"].fillna(songs["predicted_genre"])
            if not (genre == filters.genre).any():
                known = ", ".join(sorted(genre.dropna().unique()))
                raise InputError(f"--genre {filters.genre!r}: no such genre in the catalogue (has: {known})")
            allowed &= (genre == filters.genre).to_numpy()
        if filters.mixable:
            self._require_musical()
            allowed &= filters.mixable.allowed(songs, tempo=seeds[0].tempo_bpm, code=seeds[0].camelot)
        return None if allowed.all() else allowed

def write_results(results: pd.DataFrame, *, out: TextIO, fmt: str, seeds: Sequence[Seed], k: int | None = None) -> None:
    """A readable table, or JSON (one object with the seeds and the list); says so when fewer
    than ``k`` songs passed the filters."""
    if k is not None and 0 < len(results) < k:
        logger.warning("only %d songs pass the filters (asked for %d)", len(results), k)
    if fmt == "json":
        write_json(results.to_dict(orient="records"), out)
        return
    described = [f"{s.label!r}" + (f" ({_musical(s.tempo_bpm, s.camelot)})" if s.tempo_bpm or s.camelot else "")
                 for s in seeds]
    out.write(f"songs like {', '.join(described)}:\n")
    if results.empty:
        out.write("(no song passes the filters)\n")
        return
    explained = results["why"].tolist() if "why" in results.columns else None
    results = results.drop(columns=["why"], errors="ignore")
    shown = (results.drop(columns=["song_id"])
             .assign(similarity=results["similarity"].round(4),
                     tempo_bpm=[f"{t:.1f}" if t is not None and not pd.isna(t) else "" for t in results["tempo_bpm"]])
             .rename(columns={"tempo_bpm": "bpm"}).fillna(""))
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
    if _known(tempo) and _known(other_tempo):
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


def _known(value: Any) -> bool:
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


def _musical(tempo: float | None, code: str | None) -> str:
    return ", ".join(part for part in (f"{tempo:.1f} BPM" if tempo else "", code or "") if part)


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
    shown = steps.drop(columns=["song_id", "duration_s"]).assign(
        similarity=["" if v is None or pd.isna(v) else f"{v:.4f}" for v in steps["similarity"]],
        tempo_bpm=[f"{t:.1f}" if _known(t) else "" for t in steps["tempo_bpm"]],
    ).rename(columns={"tempo_bpm": "bpm", "similarity": "to previous"}).fillna("")
    out.write(f"a playlist of {len(steps)} songs:\n")
    write_table(list(shown.columns), shown.itertuples(index=False, name=None), out, width=None, count=False)


def parse_date(text: str, *, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected a date like 2010-06-30") from None
