"""Embed every slice on the Spark executors with a trained model; average the vectors per song.

The model file travels to the executors as a broadcast (it is a few MB), so
executors need no access to the warehouse's model folder; each Python worker loads it
once and keeps it for every later batch and task (Spark reuses its Python workers).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from deepcrate.config import EmbedSettings
from deepcrate.errors import WarehouseError
from deepcrate.faults import fail_if_injected
from deepcrate.inference import embed_images, worker_model
from deepcrate.model_store import MODELS, open_model
from deepcrate.pipeline import Outcome, RebuildContext, Stage
from deepcrate.progress import Progress
from deepcrate.schemas import SLICE_EMBEDDINGS, SONG_EMBEDDINGS, Table
from deepcrate.session import live_count, session_conf
from deepcrate.table_metadata import EmbeddingsMetadata
from deepcrate.task_warnings import TaskWarnings
from deepcrate.warehouse import Warehouse, holds_writer_lock

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

    def lines(self) -> list[str]:
        kept = f" ({self.slices - self.embedded} kept from the last run)" if self.embedded < self.slices else ""
        return [
            f"embedded {self.embedded} slices with model {self.model_version} in {self.seconds:.1f} s "
            f"({self.embedded / max(self.seconds, 1e-9):.0f} slices/s; the model was loaded "
            f"{self.model_loads} times, once per Python worker)",
            f"tables: slice_embeddings ({self.slices} slices{kept}), song_embeddings ({self.songs} songs)",
        ]


@holds_writer_lock()
def embed(
    spark: SparkSession,
    *,
    warehouse: str,
    config: dict[str, Any],
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
    store = Warehouse(spark, warehouse, table_format=config["warehouse"]["table_format"])
    if not store.exists(Table.SLICES):
        raise WarehouseError(f"warehouse {store.root}: no slices table; run deepcrate ingest first")
    folder = open_model(store, model)
    settings = store.metadata(Table.SLICES).spectrogram
    folder.check_settings(settings, what="the slices table")
    folder.load_keras()  # fail here, with a clear message, rather than on every executor
    options = EmbedSettings.from_config(config)
    batch_size = int(options.batch_size)
    with open(os.path.join(folder.path, "model.keras"), "rb") as stream:
        payload = spark.sparkContext.broadcast(stream.read())
    loads = spark.sparkContext.accumulator(0)
    done, task_warnings = live_count(spark), TaskWarnings(spark.sparkContext)
    embed_batches = _embedder(payload, version=folder.version, shape=(settings.n_rows, settings.slice_frames),
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
        frame = slices.mapInPandas(embed_batches, schema=SLICE_EMBEDDINGS)
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
    songs_frame = new_slices.groupBy("song_id").applyInPandas(
        lambda group: _song_vector(group, labels=labels, version=version), schema=SONG_EMBEDDINGS)
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
                        seconds=time.monotonic() - started, pass_seconds=pass_seconds, embedded=total)


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
            model = worker_model(version, payload, loads=loads)
        for frame in frames:
            images = np.frombuffer(b"".join(frame["spectrogram"]), dtype=np.uint8).reshape(len(frame), *shape)
            with task_warnings.captured():
                embeddings, probabilities, pretrained = embed_images(model, images, batch_size=batch_size)
            done.add(len(frame))
            yield pd.DataFrame({
                "song_id": frame["song_id"].to_numpy(),
                "slice_idx": frame["slice_idx"].to_numpy(),
                "embedding": list(embeddings),
                "genre_probabilities": list(probabilities),
                "pretrained": list(pretrained) if pretrained is not None else [None] * len(frame),
            })
            fail_if_injected("embed")

    return embed_batches


def _song_vector(group: pd.DataFrame, *, labels: list[str], version: str) -> pd.DataFrame:
    """One song: the mean of its slice embeddings and of its slice probabilities
    (no predicted genre when the model has no genre head)."""
    embedding = np.stack(group["embedding"].to_numpy()).mean(axis=0, dtype=np.float64).astype(np.float32)
    probabilities = np.stack(group["genre_probabilities"].to_numpy()).mean(axis=0, dtype=np.float64)
    pretrained = group["pretrained"].to_numpy()
    pretrained = (np.stack(pretrained).mean(axis=0, dtype=np.float64).astype(np.float32)
                  if len(pretrained) and pretrained[0] is not None else None)
    return pd.DataFrame({
        "song_id": [group["song_id"].iloc[0]],
        "embedding": [embedding],
        "predicted_genre": [labels[int(probabilities.argmax())] if labels else None],
        "genre_probabilities": [{g: float(p) for g, p in zip(labels, probabilities)}],
        "n_slices": [len(group)],
        "model_version": [version],
        "pretrained": [pretrained],
    })


class EmbedStage(Stage):
    """Rebuild stage: embeds the songs that have no embedding from this model (all with ``--force``)."""

    name = "embed"
    after = ("ingest", "train")
    writes = (Table.SLICE_EMBEDDINGS, Table.SONG_EMBEDDINGS)

    def run(self, context: RebuildContext, *, fingerprint: str) -> Outcome:
        summary = embed(context.spark, warehouse=context.warehouse, config=context.config,
                        model=context.model_folder.path, incremental=not context.force)
        return Outcome(f"{summary.embedded} slices embedded")


STAGE = EmbedStage()
