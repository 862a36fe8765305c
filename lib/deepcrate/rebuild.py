"""The full catalogue rebuild: ingest -> train -> embed -> index -> evaluate, in one job.

Every stage records a fingerprint of its inputs (the audio listing, the manifest,
the settings that change its output, and the upstream stage's fingerprint) in what
it publishes. A rebuild skips a stage whose published output carries the fingerprint
it would write now, so a rebuild after a crash continues at the stage that did not
finish (training resumes from its last epoch), and a rebuild with nothing new is a
no-op. When the audio folder changed, ingest and embed work incrementally: only new
or changed files are decoded, and only songs without an embedding are embedded; the
index and recommendations are then rebuilt over the whole catalogue.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from deepcrate.audio_inputs import list_files, read_manifest
from deepcrate.embed import embed, open_model
from deepcrate.errors import InputError
from deepcrate.evaluate import METHODS, evaluate
from deepcrate.genre_accuracy import percent
from deepcrate.index import build as build_index
from deepcrate.ingest import DECODING_KEYS, ingest
from deepcrate.model_store import MODELS, ModelFolder, read_model_folder
from deepcrate.spectrogram import SpectrogramSettings
from deepcrate.uris import to_uri
from deepcrate.warehouse import Warehouse, holds_writer_lock

logger = logging.getLogger(__name__)

# Settings that change results; the others (progress, block sizes, folders) only change speed.
_TRAIN_IGNORED = ("progress_interval_s", "work_dir")
_INDEX_IGNORED = ("progress_interval_s", "block_size", "recall_sample")


@dataclass
class Stage:
    """What one stage of a rebuild did."""

    name: str
    status: str  # ran | skipped (its output was up to date) | given (--model)
    seconds: float
    detail: str = ""


@dataclass
class RebuildSummary:
    warehouse: str
    stages: list[Stage]
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
    config: dict[str, Any],
    manifest: str | None = None,
    model: str | None = None,
    force: bool = False,
    allow_empty: bool = False,
) -> RebuildSummary:
    """Run every stage whose published output is out of date.

    Parameters
    ----------
    audio : str
        The catalogue's audio folder.
    warehouse : str
        Where the tables go (created when missing).
    config : dict
        The resolved config.
    manifest : str, optional
        Labels and song facts (see :func:`deepcrate.audio_inputs.read_manifest`).
    model : str, optional
        A model folder or a version under ``WH/models``: skip training and embed with it.
    force : bool
        Run every stage from scratch, even when its output is up to date.

    Raises
    ------
    DeepcrateError
        From any stage; a missing or empty audio folder, an unwritable warehouse and a
        model for other spectrogram settings are found before any work is done.
    """
    store = Warehouse(spark, warehouse, create=True, table_format=config["warehouse"]["table_format"])
    audio_uri = to_uri(audio)
    inputs = _ingest_fingerprint(spark, audio_uri=audio_uri, manifest=manifest, config=config)
    given = open_model(store, model) if model else None
    if given is not None:  # a mismatch would otherwise surface only after the whole ingest
        given.check_settings(SpectrogramSettings.from_config(config), what="the config")
    elif config["train"]["model"] == "musicnn":  # missing pretrained weights too
        from deepcrate.training import TrainSettings, check_pretrained_weights

        check_pretrained_weights(TrainSettings.from_config(config))
    stages: list[Stage] = []

    def run_stage(name: str, up_to_date: bool, work: Callable[[], str]) -> None:
        if up_to_date and not force:
            logger.info("rebuild: %s is up to date, skipped", name)
            stages.append(Stage(name, "skipped", 0.0))
            return
        logger.info("rebuild: %s", name)
        started = time.monotonic()
        detail = work()
        stages.append(Stage(name, "ran", time.monotonic() - started, detail))

    def run_ingest() -> str:
        summary = ingest(spark, audio=audio, manifest=manifest, warehouse=warehouse, config=config,
                         incremental=not force, fingerprint=inputs, allow_empty=allow_empty)
        return f"{summary.decoded} files decoded"

    run_stage("ingest", _recorded(store, "songs") == inputs, run_ingest)

    if given is not None:
        folder = given
        stages.append(Stage("train", "given", 0.0, f"model {folder.version}"))
    else:
        from deepcrate.training import can_resume, train

        train_print = _digest(inputs, _without(config["train"], _TRAIN_IGNORED))
        trained = _model_with(store, train_print)

        def run_train() -> str:
            resume = can_resume(store, config, fingerprint=train_print)
            result = train(spark, warehouse=warehouse, config=config, resume=resume, fingerprint=train_print)
            return f"model {result.version}" + (" (resumed)" if resume else "")

        run_stage("train", trained is not None, run_train)
        folder = _model_with(store, train_print)
    embed_print = _digest(inputs, folder.version)

    def run_embed() -> str:
        summary = embed(spark, warehouse=warehouse, config=config, model=folder.path,
                        incremental=not force, fingerprint=embed_print)
        return f"{summary.embedded} slices embedded"

    run_stage("embed", _recorded(store, "slice_embeddings") == embed_print, run_embed)
    index_print = _digest(embed_print, _without(config["index"], _INDEX_IGNORED))

    def run_index() -> str:
        summary = build_index(spark, warehouse=warehouse, config=config, fingerprint=index_print)
        return f"{summary.kind} index of {summary.songs} songs"

    index_meta = store.metadata("recommendations").get("index", {}) if store.exists("recommendations") else {}
    run_stage("index", index_meta.get("fingerprint") == index_print, run_index)
    evaluate_print = _digest(embed_print, _without(config["evaluate"], ("progress_interval_s",)))

    def run_evaluate() -> str:
        try:
            summary = evaluate(spark, warehouse=warehouse, config=config, fingerprint=evaluate_print)
        except InputError as exc:  # an unlabelled catalogue still gets its recommendations
            logger.warning("rebuild: not evaluated: %s", exc)
            return f"not evaluated: {exc}"
        return f"{summary.queries} test songs as queries"

    run_stage("evaluate", _recorded(store, "evaluation") == evaluate_print, run_evaluate)
    return _summary(store, stages, folder)


def _summary(store: Warehouse, stages: list[Stage], folder: ModelFolder) -> RebuildSummary:
    songs = store.read("songs").agg({"n_slices": "sum", "song_id": "count"}).first()
    rejects = Counter({row["reason"]: row["count"] for row in store.read("rejects").groupBy("reason").count().collect()})
    metrics_file = os.path.join(folder.path, "metrics.json")
    accuracy = None
    if os.path.isfile(metrics_file):
        with open(metrics_file, encoding="utf-8") as stream:
            accuracy = json.load(stream).get("song_accuracy")
    quality = {}
    if store.exists("evaluation"):
        rows = store.read("evaluation").filter("genre IS NULL AND precision_at_10 IS NOT NULL").collect()
        quality = {row["method"]: row.asDict() for row in sorted(rows, key=lambda r: METHODS.index(r["method"]))}
    return RebuildSummary(warehouse=store.root, stages=stages, songs=int(songs["count(song_id)"]),
                          slices=int(songs["sum(n_slices)"] or 0), rejects=rejects,
                          model_version=folder.version, song_accuracy=accuracy, tables=store.tables(),
                          quality=quality)


def _ingest_fingerprint(spark: SparkSession, *, audio_uri: str, manifest: str | None, config: dict[str, Any]) -> str:
    """What ingest's output depends on: every file's name, size and time, the labels, the settings."""
    listing = list_files(spark, audio_uri)  # raises InputError on a missing or empty folder
    labels = read_manifest(manifest, audio_uri=audio_uri).to_csv() if manifest else None
    return _digest(
        audio_uri,
        listing[["path", "length", "modified"]].to_csv(index=False),
        labels,
        SpectrogramSettings.from_config(config).to_dict(),
        {key: config["ingest"][key] for key in DECODING_KEYS},
        config["split"],
    )


def _recorded(store: Warehouse, table: str) -> str | None:
    """The fingerprint a published table was written with (None for a missing table)."""
    return store.metadata(table).get("fingerprint") if store.exists(table) else None


def _model_with(store: Warehouse, fingerprint: str) -> ModelFolder | None:
    """The newest published model trained on inputs with ``fingerprint``."""
    for version in reversed(store.list_folder(MODELS)):
        if not store.exists(f"{MODELS}/{version}"):
            continue
        path = store.local_folder(f"{MODELS}/{version}", scratch=tempfile.mkdtemp(prefix="deepcrate-"))
        folder = read_model_folder(path)
        if folder.train.get("fingerprint") == fingerprint:
            return folder
    return None


def _without(section: dict[str, Any], ignored: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in section.items() if key not in ignored}


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
