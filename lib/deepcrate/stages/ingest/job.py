"""Ingest: an audio folder becomes the ``songs``, ``slices`` and ``rejects`` tables.

Extract: Spark lists the folder, then reads each audio file with the binaryFile
source. Transform: executors decode, mix, resample and slice (``mapInArrow``);
the driver removes duplicate content, attaches labels and draws the split from the
small per-file results. Load: the three tables are staged and published together.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructType,
)

from deepcrate import __version__
from deepcrate.audio.musical import MUSICAL_FACTS_VERSION
from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.config import Settings, to_mapping
from deepcrate.errors import InputError, WarehouseError
from deepcrate.spark.session import session_conf
from deepcrate.stages.ingest.audio_inputs import (
    list_files,
    normalise_path,
    read_manifest,
)
from deepcrate.stages.ingest.catalogue_rows import reject_before_decoding, songs_and_rejects
from deepcrate.stages.ingest.decoding import DECODED, decode_files
from deepcrate.stages.pipeline import Outcome, RebuildContext, Stage
from deepcrate.storage.schemas import REJECTS, SLICES, SONGS, Table
from deepcrate.storage.spark_schemas import spark_schema
from deepcrate.storage.table_metadata import IngestMetadata
from deepcrate.storage.warehouse import Warehouse
from deepcrate.storage.writer_lock import holds_writer_lock
from deepcrate.uris import to_uri

logger = logging.getLogger(__name__)

OUTPUTS = (Table.SONGS, Table.SLICES, Table.REJECTS, Table.MFCC_FEATURES)
# The ingest settings that change what a file becomes (the others only change speed).
DECODING_KEYS = ("extensions", "max_file_mb", "max_duration_s", "truncated_ratio", "silence_dbfs")
# What the kept songs of an incremental ingest must share with the new ones.
_SAME_FOR_INCREMENTAL = ("audio", "spectrogram", "decoding", "split", "musical")

@dataclass
class IngestSummary:
    """What one ingest run produced."""

    warehouse: str
    songs: int
    slices: int
    rejects: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    decoded: int = 0  # files decoded by this run (fewer than songs + rejects when incremental)

    def lines(self) -> list[str]:
        rejected = sum(self.rejects.values())
        out = [
            f"ingest finished in {self.seconds:.1f} s: {self.songs} songs, {self.slices} slices, "
            f"{rejected} rejects ({self.decoded} files decoded)",
            "  split: " + ", ".join(f"{k} {self.splits.get(k, 0)}" for k in ("train", "validation", "test")),
        ]
        for reason, count in sorted(self.rejects.items()):
            out.append(f"  rejected, {reason}: {count}")
        out.append(f"  tables: {self.warehouse}/{{{','.join(OUTPUTS)}}}")
        return out


@holds_writer_lock(create=True)
def ingest(
    spark: SparkSession,
    *,
    audio: str,
    warehouse: str,
    settings: Settings,
    manifest: str | None = None,
    incremental: bool = False,
    allow_empty: bool = False,
) -> IngestSummary:
    """Decode and slice every audio file under ``audio`` into the warehouse tables.

    Every file under ``audio`` ends as exactly one row of ``songs`` or ``rejects``.

    Parameters
    ----------
    incremental : bool
        Keep the songs of the published tables whose file is still there with the same
        size (their slices, labels from the manifest given now, and split), and decode
        only the other files: new ones, changed ones and earlier rejects. Songs whose
        file is gone are dropped. Falls back to a full ingest when the tables were made
        from another folder or with other decoding, spectrogram or split settings.
    allow_empty : bool
        Publish even when every file was rejected and the published ``songs`` has songs
        (otherwise refused: a wrong setting must not wipe a catalogue).

    Raises
    ------
    InputError
        When ``audio`` is missing or holds no files, or the manifest is unusable, or
        every file was rejected over a published catalogue (without ``allow_empty``).
    WarehouseError
        When ``warehouse`` cannot be written.
    """
    started = time.monotonic()
    spectrogram = SpectrogramSettings.of(settings.spectrogram)
    options = settings.ingest
    audio_uri = to_uri(audio)
    listing = list_files(spark, audio_uri)
    store = Warehouse(spark, warehouse, create=True)
    labels = read_manifest(manifest, audio_uri=audio_uri) if manifest else None
    manifest_uri = normalise_path(to_uri(manifest)) if manifest else None
    normalised = listing["path"].map(normalise_path)
    if labels is not None:
        missing = sorted(set(labels.index) - set(normalised) - {""})
        if missing:
            logger.warning("the manifest lists %d files not found under %s (first: %s)",
                           len(missing), audio_uri, missing[0])
    # Neither the manifest nor a warehouse kept inside the audio folder is a song.
    listing = listing[(normalised != manifest_uri) & ~listing["path"].str.startswith(store.root + "/")]

    extensions, max_bytes = options.suffixes, options.max_bytes
    early_rejects = [
        reject for path, length, problem in zip(listing["path"], listing["length"], listing["problem"])
        if (reject := reject_before_decoding(
            path, length, problem=problem, audio_uri=audio_uri, extensions=extensions, max_bytes=max_bytes,
            max_mb=options.max_file_mb))
    ]
    metadata = _metadata(spectrogram, settings, audio_uri=audio_uri)
    kept = _songs_to_keep(store, listing, metadata=metadata) if incremental else None
    if kept is None and listing["problem"].isna().all():
        paths, to_decode = None, len(listing) - len(early_rejects)  # the whole folder
    else:  # the files to decode, named: Spark must not list what cannot be opened
        skip = {r["path"] for r in early_rejects} | (set(kept["path"]) if kept is not None else set())
        paths = [p for p in listing["path"] if p not in skip]
        to_decode = len(paths)
        if kept is not None:
            logger.info("incremental ingest: %d songs kept, %d files to decode", len(kept), to_decode)
    logger.info("%s: %d files, %d to decode", audio_uri, len(listing), to_decode)

    run = store.begin_run()
    try:
        with session_conf(spark, {
            "spark.sql.files.maxPartitionBytes": str(int(options.partition_mb * 2**20)),
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(options.files_per_batch),
        }):
            decoded = decode_files(
                spark, audio_uri, out_uri=store.scratch_uri(run, "decoded"), settings=spectrogram, limits=options.limits,
                extensions=extensions, max_bytes=max_bytes, progress_s=options.progress_interval_s, total=to_decode,
                paths=paths,
            )
        # Parquet prunes the image column: reading the per-file facts back is cheap.
        headers = decoded.filter(F.col("slice_idx") < 0).drop("spectrogram", "mfcc", "timbre").toPandas()
        logger.debug("read back %d per-file rows", len(headers))
        songs, rejects = songs_and_rejects(headers, labels=labels, audio_uri=audio_uri, split=settings.split,
                                           kept=kept, decoded_columns=DECODED.names)
        rejects = pd.concat([rejects, pd.DataFrame(early_rejects, columns=REJECTS.names)])
        if songs.empty and not allow_empty and store.exists(Table.SONGS) and (published := store.read(Table.SONGS).count()):
            reasons = ", ".join(f"{reason} {n}" for reason, n in Counter(rejects["reason"]).most_common(3))
            raise InputError(f"every one of the {len(rejects)} files was rejected ({reasons}) while {store.root}/songs "
                             f"holds {published} songs: nothing published (check the settings; "
                             f"allow_empty publishes the empty catalogue)")
        kept_slices = store.read(Table.SLICES) if kept is not None and len(kept) else None
        kept_features = store.read(Table.MFCC_FEATURES) if kept is not None and len(kept) else None
        slices_written = _write_tables(
            spark, store, run, decoded=decoded, kept_slices=kept_slices, kept_features=kept_features, songs=songs,
            rejects=rejects, settings=spectrogram, metadata=metadata,
        )
        store.publish(run, list(OUTPUTS))
    finally:
        store.drop_scratch(run)  # the decoded files: the tables hold what is kept of them
    return IngestSummary(
        warehouse=store.root,
        songs=len(songs),
        slices=slices_written,
        rejects=Counter(rejects["reason"]),
        splits=Counter(songs["split"]),
        seconds=time.monotonic() - started,
        decoded=to_decode,
    )


def _songs_to_keep(store: Warehouse, listing: pd.DataFrame, *, metadata: IngestMetadata) -> pd.DataFrame | None:
    """The published songs an incremental ingest keeps, or None when it must start over."""
    if not all(store.exists(t) for t in OUTPUTS):
        return None
    try:
        previous = store.metadata(Table.SONGS)
    except WarehouseError as exc:  # written by an older deepcrate: decode everything again
        logger.info("full ingest: %s", exc)
        return None
    changed = [key for key in _SAME_FOR_INCREMENTAL if getattr(previous, key) != getattr(metadata, key)]
    if changed:
        logger.info("full ingest: the published tables differ in %s", ", ".join(changed))
        return None
    songs = store.read(Table.SONGS).toPandas()
    sizes = dict(zip(listing["path"], listing["length"]))
    same = [sizes.get(path) == size for path, size in zip(songs["path"], songs["size_bytes"])]
    return songs[same].reset_index(drop=True)


def _write_tables(
    spark: SparkSession,
    store: Warehouse,
    run: str,
    *,
    decoded: DataFrame,
    kept_slices: DataFrame | None,
    kept_features: DataFrame | None,
    songs: pd.DataFrame,
    rejects: pd.DataFrame,
    settings: SpectrogramSettings,
    metadata: IngestMetadata,
) -> int:
    """Stage the four tables; returns the number of slices written."""
    extras = [c for c in songs.columns if c not in SONGS.names]
    songs_schema = spark_schema(Table.SONGS, extras=tuple(extras))
    songs_df = spark.createDataFrame(_records(songs, songs_schema), schema=songs_schema)
    rejects_schema = spark_schema(Table.REJECTS)
    rejects_df = spark.createDataFrame(_records(rejects.sort_values("path"), rejects_schema), schema=rejects_schema)
    keys_schema = StructType([songs_schema[name] for name in ("path", "song_id", "genre", "split")])
    song_keys = F.broadcast(spark.createDataFrame(_records(songs, keys_schema), schema=keys_schema))
    slices_df = (
        decoded.filter(F.col("slice_idx") >= 0)
        .join(song_keys, "path")  # drops duplicates' and rejects' rows
        .select(
            "song_id", "slice_idx",
            (F.col("slice_idx") * F.lit(settings.slice_hop_seconds)).alias("offset_s"),
            "genre", "split", "spectrogram",
        )  # already in file then slice order, as decoded: no sort needed
    )
    if kept_slices is not None:
        # Kept songs' images are copied, not decoded again; labels may have changed.
        kept_df = kept_slices.drop("genre", "split").join(song_keys.drop("path"), "song_id")
        slices_df = kept_df.select(*SLICES.names).unionByName(slices_df)
    features_df = (decoded.filter((F.col("slice_idx") < 0) & F.col("reason").isNull())
                   .join(song_keys.select("path", "song_id"), "path")
                   .select("song_id", F.col("mfcc").alias("features"), "timbre"))
    if kept_features is not None:
        features_df = kept_features.join(song_keys.select("song_id"), "song_id", "left_semi").unionByName(features_df)
    frames = {Table.SONGS: songs_df.coalesce(1), Table.SLICES: slices_df, Table.REJECTS: rejects_df.coalesce(1),
              Table.MFCC_FEATURES: features_df.coalesce(1)}
    for name, frame in frames.items():
        started = time.monotonic()
        store.write_table(run, name, frame, metadata=metadata)
        logger.debug("staged %s in %.2f s", name, time.monotonic() - started)
    return int(songs["n_slices"].sum()) if len(songs) else 0


def _metadata(spectrogram: SpectrogramSettings, settings: Settings, *, audio_uri: str) -> IngestMetadata:
    options = to_mapping(settings.ingest)
    return IngestMetadata(
        deepcrate_version=__version__,
        audio=audio_uri,
        spectrogram=spectrogram,
        ingest=options,
        decoding={key: options[key] for key in DECODING_KEYS},
        split=to_mapping(settings.split),
        musical=MUSICAL_FACTS_VERSION,  # songs of an older ingest lack tempo and key: decode them again
    )


def _records(frame: pd.DataFrame, schema: StructType) -> list[tuple]:
    """Rows as plain Python values of the schema's types (None for missing).

    pandas turns an integer column with a missing value into floats; Spark wants ints.
    """
    casts = [_PYTHON_TYPES.get(type(f.dataType), lambda v: v) for f in schema.fields]
    columns = [frame[f.name].astype(object).where(frame[f.name].notna(), None) for f in schema.fields]
    return [tuple(None if v is None else cast(v) for v, cast in zip(row, casts)) for row in zip(*columns)]


_PYTHON_TYPES = {IntegerType: int, LongType: int, DoubleType: float, StringType: str}


class IngestStage(Stage):
    """Rebuild stage: decodes what is new under the audio folder (everything with ``--force``)."""

    name = "ingest"
    writes = OUTPUTS

    def settings(self, settings: Settings) -> Any:
        ingest = to_mapping(settings.ingest)
        return [SpectrogramSettings.of(settings.spectrogram).to_dict(), {key: ingest[key] for key in DECODING_KEYS},
                to_mapping(settings.split)]

    def inputs(self, context: RebuildContext) -> Any:
        """Every file's name, size and time, and the labels; a missing or empty folder raises here,
        before any stage runs."""
        audio_uri = to_uri(context.audio)
        listing = list_files(context.spark, audio_uri)
        labels = read_manifest(context.manifest, audio_uri=audio_uri).to_csv() if context.manifest else None
        return [audio_uri, listing[["path", "length", "modified"]].to_csv(index=False), labels]

    def run(self, context: RebuildContext, *, fingerprint: str) -> Outcome:
        summary = ingest(context.spark, audio=context.audio, manifest=context.manifest, warehouse=context.warehouse,
                         settings=context.settings, incremental=not context.force, allow_empty=context.allow_empty)
        return Outcome(f"{summary.decoded} files decoded")


STAGE = IngestStage()
