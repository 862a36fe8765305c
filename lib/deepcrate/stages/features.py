"""The features stage: what the frozen pretrained networks make of every slice, computed once.

With ``train.model=musicnn`` and ``train.fine_tune=head`` (the default) the musicnn
towers never learn, so their features of a slice never change: this stage computes
them on the executors (OpenVINO, :mod:`deepcrate.models.pretrained_runtime`) into the
``pretrained_features`` table, and ``train`` (the head) and ``embed`` (the head applied
per slice) read that table instead of running the networks again. It is its own stage
rather than part of ingest because it depends on ``train.pretrained``, not on how
files are decoded, and because a catalogue trained with ``train.model=seed`` never
needs it.

Incremental at the slice level: a row is kept while its song is still in ``slices``
with the same pixels (``slice_hash``, Spark's ``xxhash64`` of the spectrogram) and the
table was written by the same networks (:meth:`Network.identity`); everything else
is computed. A rebuild that changes only ``train.*`` settings computes nothing here.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from deepcrate.config import Settings
from deepcrate.errors import WarehouseError
from deepcrate.models.pretrained_runtime import FEATURE_FORMAT, Network, export, to_bytes, worker_extractor
from deepcrate.spark.faults import fail_if_injected
from deepcrate.spark.progress import Progress
from deepcrate.spark.session import live_count, session_conf
from deepcrate.spark.task_warnings import TaskWarnings
from deepcrate.stages.pipeline import Outcome, RebuildContext, Stage
from deepcrate.storage.schemas import Table
from deepcrate.storage.spark_schemas import spark_schema
from deepcrate.storage.table_metadata import FeaturesMetadata
from deepcrate.storage.warehouse import Warehouse
from deepcrate.storage.writer_lock import holds_writer_lock

logger = logging.getLogger(__name__)


@dataclass
class FeaturesSummary:
    network: str
    slices: int  # rows of the table written
    computed: int  # of which this run computed
    loads: int  # network loads on the executors (once per Python worker)
    seconds: float

    def lines(self) -> list[str]:
        kept = self.slices - self.computed
        return [f"pretrained features of {self.computed} slices computed in {self.seconds:.1f} s "
                f"({self.computed / max(self.seconds, 1e-9):.0f} slices/s; the network was loaded {self.loads} "
                f"times, once per Python worker); {kept} kept from the last run",
                f"table: pretrained_features ({self.slices} slices, networks {self.network})"]


@holds_writer_lock()
def compute_features(spark: SparkSession, *, warehouse: str, settings: Settings,
                     incremental: bool = True) -> FeaturesSummary:
    """Write ``pretrained_features`` for every slice of ``WH/slices``.

    Parameters
    ----------
    incremental : bool
        Keep the published rows whose slice is unchanged and whose networks are these;
        compute only the others. False: compute every slice.

    Raises
    ------
    WarehouseError
        No slices table.
    ConfigError
        The musicnn weights are not installed, or an unknown ``features.runtime``.
    """
    started = time.monotonic()
    store = Warehouse(spark, warehouse)
    if not store.exists(Table.SLICES):
        raise WarehouseError(f"warehouse {store.root}: no slices table; run deepcrate ingest first")
    options = settings.features
    # train.pretrained's networks, on the shape and levels of the published slices
    network = Network.on_slices(settings.train.pretrained, store.metadata(Table.SLICES).spectrogram)
    identity = network.identity()

    slices = (store.read(Table.SLICES, columns=["song_id", "slice_idx", "spectrogram"])
              .withColumn("slice_hash", F.xxhash64("spectrogram")))
    kept = _features_to_keep(store, identity=identity, slices=slices) if incremental else None
    todo = slices if kept is None else slices.join(kept.select("song_id", "slice_idx", "slice_hash"),
                                                   ["song_id", "slice_idx", "slice_hash"], "left_anti")
    total = todo.count()
    logger.info("pretrained features (%s, %s): %d slices to compute", identity, options.runtime, total)
    loads = spark.sparkContext.accumulator(0)
    done, task_warnings = live_count(spark), TaskWarnings(spark.sparkContext)
    payload = spark.sparkContext.broadcast(export(network, runtime=options.runtime) if total else b"")
    compute = _computer(payload, identity=identity, shape=network.image_shape, batch_size=options.batch_size,
                        loads=loads, done=done, task_warnings=task_warnings)
    run = store.begin_run()
    metadata = FeaturesMetadata(network=identity, checkpoints=network.checkpoints, width=network.width,
                                format=FEATURE_FORMAT, runtime=options.runtime,
                                slices_run=store.version(Table.SLICES))
    with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": str(options.batch_size)}), \
            Progress(label="slices' pretrained features", total=total, done=done,
                     interval_s=float(options.progress_interval_s)):
        frame = todo.select("song_id", "slice_idx", "slice_hash", "spectrogram").mapInPandas(
            compute, schema=spark_schema(Table.PRETRAINED_FEATURES))
        if kept is not None:
            frame = kept.unionByName(frame)
        store.write_table(run, Table.PRETRAINED_FEATURES, frame, metadata=metadata)
    task_warnings.log(stage="features")
    rows = store.read_staged(run, Table.PRETRAINED_FEATURES).count()
    store.publish(run, [Table.PRETRAINED_FEATURES])
    return FeaturesSummary(network=identity, slices=rows, computed=total, loads=loads.value,
                           seconds=time.monotonic() - started)


def _features_to_keep(store: Warehouse, *, identity: str, slices: DataFrame) -> DataFrame | None:
    """The published rows of slices still in ``slices`` with the same pixels, or None."""
    if not store.exists(Table.PRETRAINED_FEATURES):
        return None
    previous = store.metadata(Table.PRETRAINED_FEATURES)
    if previous.network != identity:
        logger.info("computing every slice: the published features come from networks %s", previous.network)
        return None
    current = slices.select("song_id", "slice_idx", "slice_hash")
    return store.read(Table.PRETRAINED_FEATURES).join(current, ["song_id", "slice_idx", "slice_hash"], "left_semi")


def _computer(payload, *, identity: str, shape: tuple[int, int], batch_size: int, loads, done,
              task_warnings: TaskWarnings):
    def compute(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import TaskContext

        context = TaskContext.get()
        for frame in frames:
            with task_warnings.captured():  # loaded on the first rows: a partition may have none
                extractor = worker_extractor(identity, payload, threads=context.cpus() if context else None,
                                             loads=loads)
            images = np.frombuffer(b"".join(frame["spectrogram"]), dtype=np.uint8).reshape(len(frame), *shape)
            with task_warnings.captured():
                features = extractor(images, batch_size=batch_size)
            done.add(len(frame))
            yield pd.DataFrame({"song_id": frame["song_id"].to_numpy(), "slice_idx": frame["slice_idx"].to_numpy(),
                                "slice_hash": frame["slice_hash"].to_numpy(), "features": to_bytes(features)})
            fail_if_injected("features")

    return compute


class FeaturesStage(Stage):
    """Rebuild stage: the pretrained features of the slices that have none from these networks."""

    name = "features"
    after = ("ingest",)
    writes = (Table.PRETRAINED_FEATURES,)

    def not_needed(self, context: RebuildContext) -> str | None:
        if context.model_folder is not None:  # --model: what that model was trained on decides
            if context.model_folder.features is None:
                return f"model {context.model_folder.version} reads the slices"
            return None
        train = context.settings.train
        if train.model != "musicnn":
            return f"train.model={train.model} learns from the slices"
        if not train.on_frozen_features:
            return f"train.fine_tune={train.fine_tune} trains the pretrained networks too"
        return None

    def settings(self, settings: Settings) -> Any:
        return [settings.train.pretrained, FEATURE_FORMAT]

    def run(self, context: RebuildContext, *, fingerprint: str) -> Outcome:
        settings = context.settings
        if context.model_folder is not None:  # the networks the given model was trained on
            settings = replace(settings, train=replace(settings.train,
                                                       pretrained=context.model_folder.features["checkpoints"]))
        summary = compute_features(context.spark, warehouse=context.warehouse, settings=settings,
                                   incremental=not context.force)
        return Outcome(f"{summary.computed} slices computed, {summary.slices - summary.computed} kept")


STAGE = FeaturesStage()
