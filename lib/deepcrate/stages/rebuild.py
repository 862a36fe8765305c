"""The full catalogue rebuild: every stage in :data:`STAGES`, in order, in one job.

Each stage declares what its output depends on (:mod:`deepcrate.stages.pipeline`); the
warehouse records, for each stage, the fingerprint of those inputs and the versions
of what it published. A rebuild skips a stage whose record matches, so a rebuild after
a crash continues at the stage that did not finish (training resumes from its last
epoch), and a rebuild with nothing new is a no-op. When the audio folder changed,
ingest and embed work incrementally: only new or changed files are decoded, and only
songs without an embedding are embedded; the index and recommendations are then
rebuilt over the whole catalogue.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from deepcrate.config import Settings
from deepcrate.models.store import ModelFolder
from deepcrate.stages import embed, evaluate, features, index, ingest, training
from deepcrate.stages.evaluate import METHODS
from deepcrate.stages.pipeline import RebuildContext, Stage, record_stage
from deepcrate.storage.schemas import Table
from deepcrate.storage.warehouse import Warehouse
from deepcrate.storage.writer_lock import holds_writer_lock
from deepcrate.vectors.genre_accuracy import percent

logger = logging.getLogger(__name__)

STAGES: tuple[Stage, ...] = (ingest.STAGE, features.STAGE, training.STAGE, embed.STAGE, index.STAGE, evaluate.STAGE)


@dataclass
class StageRun:
    """What one stage of a rebuild did."""

    name: str
    status: str  # ran | skipped (its output was up to date) | given (--model) | unused (not needed by this rebuild)
    seconds: float
    detail: str = ""


@dataclass
class RebuildSummary:
    warehouse: str
    stages: list[StageRun]
    songs: int
    slices: int
    rejects: Counter
    model_version: str
    song_accuracy: float | None
    tables: list[str] = field(default_factory=list)
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)  # evaluation: method -> overall row

    @property
    def seconds(self) -> float:
        return sum(stage.seconds for stage in self.stages)

    def lines(self) -> list[str]:
        out = [f"rebuild finished in {self.seconds:.1f} s: {self.songs} songs, {self.slices} slices, "
               f"{sum(self.rejects.values())} rejects"]
        for stage in self.stages:
            out.append(f"  {stage.name:<8} {stage.status:<8} {stage.seconds:7.1f} s  {stage.detail}".rstrip())
        for reason, count in sorted(self.rejects.items()):
            out.append(f"  rejected, {reason}: {count}")
        out.append(f"  model {self.model_version}: test song accuracy {percent(self.song_accuracy)}")
        if self.quality:
            out.append("  same-genre precision@10 / song accuracy on the test songs: " + ", ".join(
                f"{method} {row['precision_at_10']:.3f} / {percent(row['song_accuracy'])}"
                for method, row in self.quality.items()))
        out.append(f"  tables in {self.warehouse}: {', '.join(self.tables)}")
        out.append(f"  try: deepcrate sql --warehouse {self.warehouse} "
                   "\"SELECT song_id, rank, neighbor_id, similarity FROM recommendations ORDER BY song_id, rank "
                   "LIMIT 10\"")
        return out


@holds_writer_lock(create=True)
def rebuild(
    spark: SparkSession,
    *,
    audio: str,
    warehouse: str,
    settings: Settings,
    manifest: str | None = None,
    model: str | None = None,
    force: bool = False,
    allow_empty: bool = False,
    stages: Sequence[Stage] = STAGES,
) -> RebuildSummary:
    """Run every stage whose published output is out of date.

    Parameters
    ----------
    audio : str
        The catalogue's audio folder.
    warehouse : str
        Where the tables go (created when missing).
    settings : Settings
        The resolved settings.
    manifest : str, optional
        Labels and song facts (see :func:`deepcrate.stages.ingest.audio_inputs.read_manifest`).
    model : str, optional
        A model folder or a version under ``WH/models``: skip training and embed with it.
    force : bool
        Run every stage from scratch, even when its output is up to date.
    stages : sequence of Stage
        The stages, in order (:data:`STAGES`).

    Raises
    ------
    DeepcrateError
        From any stage; a missing or empty audio folder, an unwritable warehouse and a
        model for other spectrogram settings are found before any work is done.
    """
    store = Warehouse(spark, warehouse, create=True)
    context = RebuildContext(spark=spark, store=store, audio=audio, manifest=manifest, settings=settings, model=model,
                             force=force, allow_empty=allow_empty)
    for stage in stages:
        stage.check(context)
    runs: list[StageRun] = []
    for stage in stages:
        runs.append(_run_stage(stage, context))
    return _summary(store, runs, context.model_folder)


def _run_stage(stage: Stage, context: RebuildContext) -> StageRun:
    unused = stage.not_needed(context)
    if unused is not None:
        context.fingerprints[stage.name] = ""
        return StageRun(stage.name, "unused", 0.0, unused)
    given = stage.given(context)
    if given is not None:
        fingerprint, detail = given
        context.fingerprints[stage.name] = fingerprint
        return StageRun(stage.name, "given", 0.0, detail)
    fingerprint = stage.fingerprint(context)
    if not context.force and stage.is_up_to_date(context, fingerprint):
        logger.info("rebuild: %s is up to date, skipped", stage.name)
        run = StageRun(stage.name, "skipped", 0.0)
    else:
        logger.info("rebuild: %s", stage.name)
        started = time.monotonic()
        outcome = stage.run(context, fingerprint=fingerprint)
        if outcome.published:
            record_stage(context.store, stage.name, fingerprint=fingerprint, outputs=stage.outputs(context))
        run = StageRun(stage.name, "ran", time.monotonic() - started, outcome.detail)
    context.fingerprints[stage.name] = stage.passed_on(context, fingerprint)
    return run


def _summary(store: Warehouse, stages: list[StageRun], folder: ModelFolder | None) -> RebuildSummary:
    songs = store.read(Table.SONGS).agg({"n_slices": "sum", "song_id": "count"}).first()
    rejects = Counter({row["reason"]: row["count"]
                       for row in store.read(Table.REJECTS).groupBy("reason").count().collect()})
    accuracy = None
    metrics_file = os.path.join(folder.path, "metrics.json") if folder is not None else ""
    if os.path.isfile(metrics_file):
        with open(metrics_file, encoding="utf-8") as stream:
            accuracy = json.load(stream).get("song_accuracy")
    quality = {}
    if store.exists(Table.EVALUATION):
        rows = store.read(Table.EVALUATION).filter("genre IS NULL AND precision_at_10 IS NOT NULL").collect()
        quality = {row["method"]: row.asDict() for row in sorted(rows, key=lambda r: METHODS.index(r["method"]))}
    return RebuildSummary(warehouse=store.root, stages=stages, songs=int(songs["count(song_id)"]),
                          slices=int(songs["sum(n_slices)"] or 0), rejects=rejects,
                          model_version=folder.version if folder is not None else "none",
                          song_accuracy=accuracy, tables=store.tables(), quality=quality)
