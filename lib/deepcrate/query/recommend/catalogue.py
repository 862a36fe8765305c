"""A warehouse opened for queries without Spark: songs, the index, seeds, and the nearest songs to them.

pyarrow reads the tables and FAISS answers, so a query takes a second or two; a seed file
(``file_seed``) adds TensorFlow to embed a song that is not in the catalogue.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from deepcrate.audio.mfcc import SAMPLE_RATE as MFCC_RATE
from deepcrate.audio.musical import KEY_CHOICES, compatible_camelot, musical_facts, tempo_mixes
from deepcrate.audio.slicing import slice_audio_file
from deepcrate.config import Settings
from deepcrate.errors import AudioError, InputError, ModelError, WarehouseError, first_line
from deepcrate.models.store import MODELS, read_model_folder
from deepcrate.storage.arrow_tables import ArrowTables
from deepcrate.storage.schemas import MUSICAL_COLUMNS, Table
from deepcrate.uris import local_path, to_uri, warehouse_uri
from deepcrate.vectors.faiss_index import INDEX, load_index, neighbours
from deepcrate.vectors.similarity import normalise

logger = logging.getLogger(__name__)

SONG_COLUMNS = ["song_id", "path", "genre", "artist", "title", "release_date", "duration_s"]
PLAYLIST_BREADTH = 50  # a playlist's next song is among the current song's this many nearest
RESULT_COLUMNS = ["rank", "similarity", "title", "artist", "genre", "tempo_bpm", "tempo_confidence", "key", "camelot",
                  "key_confidence", "release_date", "path", "song_id"]


@dataclass(frozen=True)
class Mixable:
    """Songs a DJ can mix after the seed: tempo within ``bpm_range`` % (at the same, double or
    half tempo) and a key that ``key`` allows (``compatible``: the Camelot neighbours)."""

    bpm_range: float = 6.0
    key: str = "compatible"

    def __post_init__(self) -> None:
        if not 0 < self.bpm_range <= 50:
            raise InputError(f"bpm range {self.bpm_range}: give a percentage between 0 and 50")
        if self.key not in KEY_CHOICES:
            raise InputError(f"key rule {self.key!r}: choose one of {', '.join(KEY_CHOICES)}")

    def allowed(self, songs: pd.DataFrame, *, tempo: float | None, code: str | None) -> np.ndarray:
        """Which of ``songs`` (with ``tempo_bpm`` and ``camelot``) mix with a song of ``tempo`` and ``code``."""
        if tempo is None:
            raise InputError("mixable: the seed has no tempo (no clear beat); ask without mixable, or pick another seed")
        allowed = np.array([t is not None and not pd.isna(t) and tempo_mixes(float(t), tempo, percent=self.bpm_range)
                            for t in songs["tempo_bpm"]], dtype=bool)
        if self.key != "any":
            if code is None:
                raise InputError("mixable: the seed has no clear key; let any key mix, or pick another seed")
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
    tempo_confidence: float | None = None
    key_confidence: float | None = None
    slices: np.ndarray | None = None  # a file seed's slice vectors (unit length), for --explain
    slice_offsets: np.ndarray | None = None  # their starts, seconds
    genres: dict[str, float] | None = None  # a file seed's mean genre probabilities


class Catalogue:
    """A warehouse opened for queries: the song metadata, the index, the model version.

    Parameters
    ----------
    warehouse : str
        A local folder (or a URI pyarrow can open) that ``deepcrate index`` wrote to.
    settings : Settings
        The resolved settings (``index``, ``ingest`` and ``embed`` sections).
    """

    def __init__(self, warehouse: str, *, settings: Settings) -> None:
        self.root = warehouse_uri(warehouse)
        self.settings = settings
        self.tables = ArrowTables.local(self.root, reader="recommend")
        for needed, stage in ((Table.SONGS, "ingest"), (Table.SONG_EMBEDDINGS, "embed"), (INDEX, "index")):
            if not self.tables.exists(needed):
                raise WarehouseError(f"warehouse {self.root}: no {needed}; run deepcrate {stage} first")
        self.has_musical = self.tables.has_columns(Table.SONGS, MUSICAL_COLUMNS)
        songs = self.tables.read_pandas(Table.SONGS, columns=SONG_COLUMNS, optional=MUSICAL_COLUMNS)
        predicted = self.tables.read(Table.SONG_EMBEDDINGS, columns=["song_id", "predicted_genre"]).to_pandas()
        self.songs = songs.merge(predicted, on="song_id", how="inner").set_index("song_id")
        self.loaded = load_index(local_path(self.tables.folder(INDEX)), settings=self.settings.index,
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
                    camelot=song["camelot"] if isinstance(song["camelot"], str) else None,
                    tempo_confidence=song["tempo_confidence"], key_confidence=song["key_confidence"])

    def file_seed(self, path: str) -> Seed:
        """Decode, slice and embed a file that need not be in the catalogue, with the catalogue's model."""
        from deepcrate.models.inference import embed_images, worker_model

        folder = read_model_folder(local_path(self.tables.folder(f"{MODELS}/{self.model_version}")))
        try:
            with open(path, "rb") as stream:
                data = stream.read()
        except OSError as exc:
            raise InputError(f"file {path}: {exc.strerror}") from None
        try:
            sliced = slice_audio_file(data, name=os.path.basename(path), settings=folder.spectrogram,
                                      limits=self.settings.ingest.limits, keep_native=True)
        except AudioError as exc:
            raise InputError(f"file {path}: {exc.message}") from None
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
        embeddings, probabilities, _ = embed_images(model, images, batch_size=self.settings.embed.batch_size)
        vector = normalise(embeddings.mean(axis=0, dtype=np.float64).astype(np.float32)[None, :])[0]
        # at ingest's rate, so that the file's tempo and key compare with the catalogue's
        facts = musical_facts(sliced.audio.at_rate(MFCC_RATE), sample_rate=MFCC_RATE)
        return Seed(label=path, vector=vector, tempo_bpm=facts.tempo_bpm, camelot=facts.camelot,
                    tempo_confidence=facts.tempo_confidence, key_confidence=facts.key_confidence,
                    slices=normalise(embeddings), genres=dict(zip(folder.labels, probabilities.mean(axis=0).tolist())),
                    slice_offsets=np.arange(len(embeddings)) * folder.spectrogram.slice_hop_seconds)

    # -- the query ---------------------------------------------------------------------
    def recommend(self, seeds: Sequence[Seed], *, k: int, filters: Filters) -> pd.DataFrame:
        """The ``k`` songs nearest the mean of the seeds, never a seed itself nor a duplicate of one."""
        if not seeds:
            raise InputError("no seeds: give at least one catalogue song or audio file")
        query = normalise(np.mean([s.vector for s in seeds], axis=0)[None, :])
        allowed = self._allowed(seeds, filters)
        exclude = {s.position for s in seeds if s.position is not None}
        found = neighbours(self.loaded.index, query, k=k, exclude=[exclude], allowed=allowed,
                           duplicate_similarity=self.settings.index.duplicate_similarity)[0]
        rows = []
        for rank, (position, similarity) in enumerate(found, start=1):
            song = self.songs.iloc[position]
            rows.append({"rank": rank, "similarity": similarity, "title": song["title"],
                         "artist": song["artist"], "genre": song["genre"] or song["predicted_genre"],
                         **{column: song[column] for column in MUSICAL_COLUMNS},
                         "release_date": song["release_date"], "path": song["path"],
                         "song_id": self.songs.index[position]})
        return pd.DataFrame(rows, columns=RESULT_COLUMNS)

    def slice_seconds(self) -> float:
        return self.tables.metadata(Table.SLICES).spectrogram.slice_seconds

    def require_musical(self) -> None:
        if not self.has_musical:
            raise InputError(f"mixable: the songs of {self.root} have no tempo and key (an ingest older than "
                             f"them); run deepcrate ingest or rebuild again")

    def _allowed(self, seeds: Sequence[Seed], filters: Filters) -> np.ndarray | None:
        songs = self.songs
        allowed = np.ones(len(songs), dtype=bool)
        if filters.exclude_seed_artists:
            artists = {s.artist.casefold() for s in seeds if s.artist}
            if not artists:
                logger.warning("excluding the seeds' artists: the seeds have no artist; nothing is excluded")
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
                raise InputError(f"genre {filters.genre!r}: no such genre in the catalogue (has: {known})")
            allowed &= (genre == filters.genre).to_numpy()
        if filters.mixable:
            self.require_musical()
            allowed &= filters.mixable.allowed(songs, tempo=seeds[0].tempo_bpm, code=seeds[0].camelot)
        return None if allowed.all() else allowed


def parse_date(text: str, *, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected a date like 2010-06-30") from None
