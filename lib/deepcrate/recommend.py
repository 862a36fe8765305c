"""The user-facing query: songs that sound like one or more seeds, with filters.

Runs without Spark (pyarrow reads the tables, FAISS answers), so a query takes a
second or two; ``--file`` adds TensorFlow to embed a song that is not in the catalogue.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import pandas as pd

from deepcrate.audio import DecodeLimits
from deepcrate.errors import AudioError, InputError, ModelError, WarehouseError, first_line
from deepcrate.model_store import MODELS, read_model_folder
from deepcrate.schemas import Table
from deepcrate.slicing import slice_audio_file
from deepcrate.uris import local_path, to_uri
from deepcrate.vector_index import INDEX, IndexSettings, load_index, neighbours
from deepcrate.vectors import normalise
from deepcrate.warehouse import ArrowTables

logger = logging.getLogger(__name__)

SONG_COLUMNS = ["song_id", "path", "genre", "artist", "title", "release_date"]


@dataclass(frozen=True)
class Filters:
    """Which songs may be recommended."""

    exclude_seed_artists: bool = False
    released_before: dt.date | None = None
    released_after: dt.date | None = None
    genre: str | None = None


@dataclass
class Seed:
    label: str  # what the user typed, or the file
    vector: np.ndarray  # unit length
    position: int | None = None  # in the index, for catalogue songs
    artist: str | None = None


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
        self.root = to_uri(warehouse)
        self.config = config
        self.settings = IndexSettings.from_config(config)
        if not self.root.startswith("file:"):
            raise InputError(f"recommend reads local warehouses; copy {self.root} locally first")
        self.tables = ArrowTables.current(self.root)
        for needed, stage in ((Table.SONGS, "ingest"), (Table.SONG_EMBEDDINGS, "embed"), (INDEX, "index")):
            if not self.tables.exists(needed):
                raise WarehouseError(f"warehouse {self.root}: no {needed}; run deepcrate {stage} first")
        songs = self.tables.read(Table.SONGS, columns=SONG_COLUMNS).to_pandas()
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
        return Seed(label=text, vector=vector, position=position, artist=self.songs.iloc[position]["artist"])

    def file_seed(self, path: str) -> Seed:
        """Decode, slice and embed a file that need not be in the catalogue, with the catalogue's model."""
        from deepcrate.inference import embed_images, worker_model

        folder = read_model_folder(local_path(self.tables.folder(f"{MODELS}/{self.model_version}")))
        try:
            with open(path, "rb") as stream:
                data = stream.read()
        except OSError as exc:
            raise InputError(f"--file {path}: {exc.strerror}") from None
        limits = DecodeLimits.from_config(self.config)
        try:
            sliced = slice_audio_file(data, name=os.path.basename(path), settings=folder.spectrogram, limits=limits)
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
        embeddings, _, _ = embed_images(model, images, batch_size=int(self.config["embed"]["batch_size"]))
        vector = normalise(embeddings.mean(axis=0, dtype=np.float64).astype(np.float32)[None, :])[0]
        return Seed(label=path, vector=vector)

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
                         "release_date": song["release_date"], "path": song["path"],
                         "song_id": self.songs.index[position]})
        return pd.DataFrame(rows, columns=["rank", "similarity", "title", "artist", "genre", "release_date",
                                           "path", "song_id"])

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
        return None if allowed.all() else allowed

def write_results(results: pd.DataFrame, *, out: TextIO, fmt: str, seeds: Sequence[Seed]) -> None:
    """A readable table, or JSON (one object with the seeds and the list)."""
    if fmt == "json":
        records = [{k: (v.isoformat() if isinstance(v, (dt.date, pd.Timestamp)) else
                        None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
                   for row in results.to_dict(orient="records")]
        json.dump({"seeds": [s.label for s in seeds], "recommendations": records}, out, indent=2, default=str)
        out.write("\n")
        return
    out.write(f"songs like {', '.join(repr(s.label) for s in seeds)}:\n")
    if results.empty:
        out.write("(no song passes the filters)\n")
        return
    shown = results.drop(columns=["song_id"]).assign(similarity=results["similarity"].round(4)).fillna("")
    widths = {c: max(len(c), *(len(str(v)) for v in shown[c])) for c in shown.columns}
    out.write("  ".join(c.ljust(widths[c]) for c in shown.columns).rstrip() + "\n")
    out.write("  ".join("-" * widths[c] for c in shown.columns) + "\n")
    for _, row in shown.iterrows():
        out.write("  ".join(str(row[c]).ljust(widths[c]) for c in shown.columns).rstrip() + "\n")


def parse_date(text: str, *, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected a date like 2010-06-30") from None
