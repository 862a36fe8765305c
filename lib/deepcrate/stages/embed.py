"""Embed every slice on the Spark executors with a trained model; average the vectors per song.

A model whose head learnt on stored pretrained features (musicnn, ``train.fine_tune=head``)
is applied as its head alone to the ``pretrained_features`` table: two matrix products
per slice in numpy (:mod:`deepcrate.models.feature_head`), the head's weights a broadcast of
a few hundred KB. Any other model runs on the slices: the model file travels to the
executors as a broadcast (a few MB), so executors need no access to the warehouse's
model folder; each Python worker loads it once and keeps it for every later batch and
task (Spark reuses its Python workers).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark import TaskContext
from pyspark.sql import SparkSession

from deepcrate.config import Settings
from deepcrate.errors import ModelError, WarehouseError
from deepcrate.models.inference import embed_images, worker_model
from deepcrate.models.pretrained_runtime import from_bytes
from deepcrate.models.store import MODELS, ModelFolder, open_model
from deepcrate.spark.faults import fail_if_injected
from deepcrate.spark.progress import Progress
from deepcrate.spark.session import live_count, session_conf
from deepcrate.spark.task_warnings import TaskWarnings
from deepcrate.stages.pipeline import Outcome, RebuildContext, Stage
from deepcrate.storage.schemas import Table
from deepcrate.storage.spark_schemas import spark_schema
from deepcrate.storage.table_metadata import EmbeddingsMetadata
from deepcrate.storage.warehouse import Warehouse
from deepcrate.storage.writer_lock import holds_writer_lock

logger = logging.getLogger(__name__)

@dataclass
class EmbedSummary:
    model_version: str
    slices: int
    songs: int
    model_loads: int
    seconds: float  # the whole job
    pass_seconds: float  # reading, embedding and writing the slices (no set-up, no per-song means)
    embedded: int = 0  # slices this run embedded (fewer than ``slices`` when incremental)
    from_features: bool = False  # the head applied to stored pretrained features

    def lines(self) -> list[str]:
        kept = f" ({self.slices - self.embedded} kept from the last run)" if self.embedded < self.slices else ""
        how = ("the head applied to the stored pretrained features" if self.from_features else
               f"the model was loaded {self.model_loads} times, once per Python worker")
        return [
            f"embedded {self.embedded} slices with model {self.model_version} in {self.seconds:.1f} s "
            f"({self.embedded / max(self.seconds, 1e-9):.0f} slices/s; {how})",
            f"tables: slice_embeddings ({self.slices} slices{kept}), song_embeddings ({self.songs} songs)",
        ]


@holds_writer_lock()
def embed(
    spark: SparkSession,
    *,
    warehouse: str,
    settings: Settings,
    model: str | None = None,
    incremental: bool = False,
) -> EmbedSummary:
    """Write ``slice_embeddings`` and ``song_embeddings`` for every slice of ``WH/slices``.

    Songs of every split, labelled or not, are embedded.

    Parameters
    ----------
    incremental : bool
        When the published embeddings come from the same model, keep those of songs
        still in ``songs`` and embed only the songs that have none.

    Raises
    ------
    ModelError
        When the model was trained on other spectrogram settings than the slices'.
    """
    started = time.monotonic()
    store = Warehouse(spark, warehouse)
    if not store.exists(Table.SLICES):
        raise WarehouseError(f"warehouse {store.root}: no slices table; run deepcrate ingest first")
    folder = open_model(store, model)
    spectrogram = store.metadata(Table.SLICES).spectrogram
    folder.check_settings(spectrogram, what="the slices table")
    options = settings.embed
    batch_size = int(options.batch_size)
    loads = spark.sparkContext.accumulator(0)
    done, task_warnings = live_count(spark), TaskWarnings(spark.sparkContext)
    if folder.features is not None:
        slices = _stored_features(store, folder)
        embed_batches = _head_embedder(spark.sparkContext.broadcast(folder.feature_head()),
                                       width=folder.features["width"], done=done, task_warnings=task_warnings)
    else:
        folder.load_keras()  # fail here, with a clear message, rather than on every executor
        _check_executors_have_keras(spark)
        with open(os.path.join(folder.path, "model.keras"), "rb") as stream:
            payload = spark.sparkContext.broadcast(stream.read())
        embed_batches = _embedder(payload, version=folder.version, shape=(spectrogram.n_rows, spectrogram.slice_frames),
                                  batch_size=batch_size, loads=loads, done=done, task_warnings=task_warnings)
        slices = store.read(Table.SLICES, columns=["song_id", "slice_idx", "spectrogram"])
    songs = store.read(Table.SONGS, columns=["song_id", "n_slices"])
    kept = _embeddings_to_keep(store, version=folder.version, songs=songs) if incremental else None
    if kept is not None:
        kept_slices, kept_songs = kept
        kept_ids = kept_songs.select("song_id")
        slices = slices.join(kept_ids, "song_id", "left_anti")
        songs = songs.join(kept_ids, "song_id", "left_anti")
    total = int(songs.agg({"n_slices": "sum"}).first()[0] or 0)
    if kept is not None:
        logger.info("incremental embed: %d songs kept, %d slices to embed", kept_ids.count(), total)
    run = store.begin_run()
    metadata = EmbeddingsMetadata(model_version=folder.version, labels=list(folder.labels))
    pass_started = time.monotonic()
    with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(batch_size)}), \
            Progress(label="slices embedded", total=total, done=done,
                     interval_s=float(options.progress_interval_s)):
        frame = slices.mapInPandas(embed_batches, schema=spark_schema(Table.SLICE_EMBEDDINGS))
        if kept is not None:
            frame = kept_slices.unionByName(frame, allowMissingColumns=True)  # kept from before "pretrained"
        store.write_table(run, Table.SLICE_EMBEDDINGS, frame, metadata=metadata)
    task_warnings.log(stage="embed")
    pass_seconds = time.monotonic() - pass_started
    logger.info("slice embeddings written in %.1f s", pass_seconds)

    labels, version = list(folder.labels), folder.version
    new_slices = store.read_staged(run, Table.SLICE_EMBEDDINGS)
    if kept is not None:
        new_slices = new_slices.join(kept_ids, "song_id", "left_anti")
    songs_frame = (new_slices.repartition("song_id").sortWithinPartitions("song_id")
                   .mapInPandas(_song_vectors(labels=labels, version=version), schema=spark_schema(Table.SONG_EMBEDDINGS)))
    if kept is not None:
        songs_frame = kept_songs.unionByName(songs_frame, allowMissingColumns=True)
    store.write_table(run, Table.SONG_EMBEDDINGS, songs_frame, metadata=metadata)
    logger.info("song embeddings written in %.1f s", time.monotonic() - pass_started - pass_seconds)
    n_slices = store.read_staged(run, Table.SLICE_EMBEDDINGS).count()
    n_songs = store.read_staged(run, Table.SONG_EMBEDDINGS).count()
    published = [Table.SLICE_EMBEDDINGS, Table.SONG_EMBEDDINGS]
    if not store.exists(f"{MODELS}/{folder.version}"):  # a model from elsewhere: the warehouse keeps what it used
        store.stage_folder(run, folder.path, f"{MODELS}/{folder.version}")
        published.append(f"{MODELS}/{folder.version}")
    store.publish(run, published)
    return EmbedSummary(model_version=version, slices=n_slices, songs=n_songs, model_loads=loads.value,
                        seconds=time.monotonic() - started, pass_seconds=pass_seconds, embedded=total,
                        from_features=folder.features is not None)


def _stored_features(store: Warehouse, folder: ModelFolder):
    """The ``pretrained_features`` rows (song_id, slice_idx, features) ``folder``'s head reads.

    Raises
    ------
    WarehouseError
        No such table, or slices without features (the table is older than the slices).
    ModelError
        A table of other networks than the model's head learnt on.
    """
    if not store.exists(Table.PRETRAINED_FEATURES):
        raise WarehouseError(f"warehouse {store.root}: no pretrained_features table (model {folder.version} "
                             "applies its head to them): run deepcrate features first, or rebuild")
    metadata = store.metadata(Table.PRETRAINED_FEATURES)
    folder.check_features(metadata, where=f"warehouse {store.root}")
    features = store.read(Table.PRETRAINED_FEATURES, columns=["song_id", "slice_idx", "features"])
    if metadata.slices_run is not None and metadata.slices_run == store.version(Table.SLICES):
        return features  # computed for every slice of these very slices
    keys = ["song_id", "slice_idx"]
    missing = store.read(Table.SLICES, columns=keys).join(features.select(*keys), keys, "left_anti").count()
    if missing:
        raise WarehouseError(f"warehouse {store.root}: {missing} slices have no pretrained features (the table "
                             "is older than the slices): run deepcrate features, or rebuild")
    return features


def _check_executors_have_keras(spark: SparkSession) -> None:
    """A Keras model runs on the executors: one task looks for Keras there, so that an environment
    packed without TensorFlow (the product's defaults need none) is refused in one line, before
    any slice is read."""
    if not spark.sparkContext.parallelize([0], 1).map(lambda _: importlib.util.find_spec("keras") is not None).first():
        raise ModelError("the executors' Python has no TensorFlow, and this model embeds with Keras on them: "
                         "ship an environment packed with it (docs/cluster.md: make package-tensorflow)")


def _embeddings_to_keep(store: Warehouse, *, version: str, songs):
    """(slice_embeddings, song_embeddings) of the published songs still in ``songs``, or None."""
    names = (Table.SLICE_EMBEDDINGS, Table.SONG_EMBEDDINGS)
    if not all(store.exists(n) for n in names):
        return None
    previous = store.metadata(Table.SONG_EMBEDDINGS).model_version
    if previous != version:
        logger.info("embedding every song: the published embeddings come from model %s", previous)
        return None
    current = songs.select("song_id")
    return tuple(store.read(n).join(current, "song_id", "left_semi") for n in names)


def _embedder(payload, *, version: str, shape: tuple[int, int], batch_size: int, loads, done,
              task_warnings: TaskWarnings):
    def embed_batches(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        with task_warnings.captured():
            task = TaskContext.get()
            model = worker_model(version, payload, loads=loads, threads=task.cpus() if task else None)
        for frame in frames:
            images = np.frombuffer(b"".join(frame["spectrogram"]), dtype=np.uint8).reshape(len(frame), *shape)
            with task_warnings.captured():
                embeddings, probabilities, pretrained = embed_images(model, images, batch_size=batch_size)
            done.add(len(frame))
            yield _slice_rows(frame, embeddings, probabilities, pretrained)
            fail_if_injected("embed")

    return embed_batches


def _head_embedder(head, *, width: int, done, task_warnings: TaskWarnings):
    def embed_batches(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            features = from_bytes(list(frame["features"]), width=width, where="pretrained_features")
            with task_warnings.captured():
                embeddings, probabilities = head.value(features)
            done.add(len(frame))
            yield _slice_rows(frame, embeddings, probabilities, features)
            fail_if_injected("embed")

    return embed_batches


def _slice_rows(frame: pd.DataFrame, embeddings: np.ndarray, probabilities: np.ndarray,
                pretrained: np.ndarray | None) -> pd.DataFrame:
    """``slice_embeddings`` rows of a batch (``pretrained`` None: a model without pretrained layers)."""
    return pd.DataFrame({
        "song_id": frame["song_id"].to_numpy(),
        "slice_idx": frame["slice_idx"].to_numpy(),
        "embedding": list(embeddings),
        "genre_probabilities": list(probabilities),
        "pretrained": list(pretrained) if pretrained is not None else [None] * len(frame),
    })


def _song_vectors(*, labels: list[str], version: str):
    """Per song, the mean of its slice embeddings and of its slice probabilities (no predicted
    genre when the model has no genre head), from batches of slices sorted by song.

    Vectorised over each Arrow batch (one numpy reduction per batch, not a pandas call per
    song); a song whose slices straddle two batches carries its sums over to the next.
    """
    names = ("embedding", "genre_probabilities", "pretrained")

    def songs_of(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        carried: tuple[str, dict[str, np.ndarray | None], int] | None = None
        for frame in batches:
            if frame.empty:
                continue
            ids = frame["song_id"].to_numpy()
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            counts = np.diff(np.r_[starts, len(ids)])
            sums = {name: _sums(frame[name], starts) for name in names}
            if carried is not None and carried[0] == ids[0]:  # the carried song goes on in this batch
                for name in names:
                    if sums[name] is not None:
                        sums[name][0] += carried[1][name]
                counts[0] += carried[2]
            elif carried is not None:
                yield _song_rows([carried[0]], {n: None if v is None else v[None] for n, v in carried[1].items()},
                                 np.array([carried[2]]), labels=labels, version=version)
            last = len(starts) - 1  # may go on in the next batch
            carried = (ids[starts[last]], {n: None if v is None else v[last] for n, v in sums.items()},
                       int(counts[last]))
            if last:
                yield _song_rows(ids[starts[:last]], {n: None if v is None else v[:last] for n, v in sums.items()},
                                 counts[:last], labels=labels, version=version)
        if carried is not None:
            yield _song_rows([carried[0]], {n: None if v is None else v[None] for n, v in carried[1].items()},
                             np.array([carried[2]]), labels=labels, version=version)

    return songs_of


def _sums(column: pd.Series, starts: np.ndarray) -> np.ndarray | None:
    """Per song (rows from each of ``starts``), the sum of a column of vectors, in float64; None
    for a column of nulls (``pretrained`` of a model without pretrained layers)."""
    values = column.to_numpy()
    if values[0] is None:
        return None
    return np.add.reduceat(np.stack(values).astype(np.float64), starts, axis=0)


def _song_rows(song_ids, sums: dict[str, np.ndarray | None], counts: np.ndarray, *, labels: list[str],
               version: str) -> pd.DataFrame:
    divide = counts[:, None].astype(np.float64)
    probabilities = sums["genre_probabilities"] / divide
    pretrained = sums["pretrained"]
    return pd.DataFrame({
        "song_id": list(song_ids),
        "embedding": list((sums["embedding"] / divide).astype(np.float32)),
        "predicted_genre": [labels[int(row.argmax())] for row in probabilities] if labels else [None] * len(counts),
        "genre_probabilities": [{g: float(p) for g, p in zip(labels, row)} for row in probabilities],
        "n_slices": counts.astype(np.int32),
        "model_version": version,
        "pretrained": list((pretrained / divide).astype(np.float32)) if pretrained is not None else [None] * len(counts),
    })


class EmbedStage(Stage):
    """Rebuild stage: embeds the songs that have no embedding from this model (all with ``--force``)."""

    name = "embed"
    after = ("ingest", "features", "train")
    writes = (Table.SLICE_EMBEDDINGS, Table.SONG_EMBEDDINGS)

    def run(self, context: RebuildContext, *, fingerprint: str) -> Outcome:
        summary = embed(context.spark, warehouse=context.warehouse, settings=context.settings,
                        model=context.model_folder.path, incremental=not context.force)
        return Outcome(f"{summary.embedded} slices embedded")


STAGE = EmbedStage()
