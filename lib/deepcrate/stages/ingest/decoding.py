"""Ingest's work on the executors: each audio file decoded once into its facts (or its reject reason),
its slices, its MFCC and timbre features, its tempo and key; written to scratch Parquet."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from deepcrate.audio.decode import DECODE_ERROR
from deepcrate.audio.mfcc import SAMPLE_RATE as MFCC_RATE
from deepcrate.audio.mfcc import frames_of_spectrum, gaussian_of_frames, song_spectrum, statistics_of_frames
from deepcrate.audio.musical import musical_facts
from deepcrate.audio.slicing import slice_audio_file
from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.config.sections import DecodeLimits
from deepcrate.errors import AudioError
from deepcrate.spark.faults import fail_if_injected
from deepcrate.spark.progress import Progress
from deepcrate.spark.session import live_count
from deepcrate.spark.task_warnings import TaskWarnings
from deepcrate.stages.ingest.audio_inputs import literal_glob

# One row per file (slice_idx -1: the file's facts or its reject reason) and one per
# slice (slice_idx >= 0: just the image), as the executors emit them.
DECODED = pa.schema([
    ("path", pa.string()),
    ("slice_idx", pa.int32()),
    ("size_bytes", pa.int64()),
    ("content_sha256", pa.string()),
    ("reason", pa.string()),
    ("message", pa.string()),
    ("duration_s", pa.float64()),
    ("sample_rate", pa.int32()),
    ("channels", pa.int32()),
    ("n_slices", pa.int32()),
    ("cut_at_s", pa.float64()),
    ("tempo_bpm", pa.float64()),
    ("tempo_confidence", pa.float64()),
    ("key", pa.string()),
    ("camelot", pa.string()),
    ("key_confidence", pa.float64()),
    ("musical_note", pa.string()),
    ("mfcc", pa.list_(pa.float32())),
    ("timbre", pa.list_(pa.float64())),
    ("spectrogram", pa.binary()),
])
_SPARK_DECODED = from_arrow_schema(DECODED)


def decode_files(
    spark: SparkSession,
    audio_uri: str,
    *,
    out_uri: str,
    settings: SpectrogramSettings,
    limits: DecodeLimits,
    extensions: tuple[str, ...],
    max_bytes: int,
    progress_s: float,
    total: int,
    paths: list[str] | None = None,
) -> DataFrame:
    """Decode and slice the audio files on the executors into Parquet at ``out_uri``.

    ``paths`` limits the work to those files; None decodes the whole folder.

    Written once to (staging) storage rather than cached: the per-file facts and the
    slices are then read back separately, the slices only once, and an executor lost
    later does not send any file back to the decoder.
    """
    files_done, task_warnings = live_count(spark), TaskWarnings(spark.sparkContext)

    def decode_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for path, content in zip(batch.column("path").to_pylist(), batch.column("content")):
                with task_warnings.captured():
                    decoded = decode_file(path, content.as_py(), settings=settings, limits=limits)
                yield decoded
                files_done.add(1)
                fail_if_injected("ingest")

    extension_pattern = "(" + "|".join(e.replace(".", r"\.") for e in extensions) + ")$"
    if paths == []:
        files_done.close()
        spark.createDataFrame([], schema=_SPARK_DECODED).write.mode("overwrite").parquet(out_uri)
        return spark.read.schema(_SPARK_DECODED).parquet(out_uri)
    decoding = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load(audio_uri if paths is None else [literal_glob(p) for p in paths])
        .filter(F.col("length") <= max_bytes)  # pushed into the scan: big files are never read
        .filter(F.lower("path").rlike(extension_pattern))
        .select("path", "content")
        .mapInArrow(decode_batches, schema=_SPARK_DECODED)
    )
    with Progress(label="files decoded", total=total, done=files_done, interval_s=progress_s):
        # The images do not repeat: a Parquet dictionary for them is work thrown away.
        decoding.write.mode("overwrite").option("parquet.enable.dictionary#spectrogram", "false").parquet(out_uri)
    task_warnings.log(stage="ingest")
    return spark.read.schema(_SPARK_DECODED).parquet(out_uri)


def decode_file(
    path: str, content: bytes, *, settings: SpectrogramSettings, limits: DecodeLimits
) -> pa.RecordBatch:
    """The rows one file contributes to the decoded data: its facts, then its slices.

    Built as Arrow directly: through pandas, the conversion to Arrow took 4% of an
    executor's time (py-spy).
    """
    header: dict[str, Any] = {
        "path": path, "slice_idx": -1, "size_bytes": len(content),
        "content_sha256": hashlib.sha256(content).hexdigest(),
    }
    try:
        song = slice_audio_file(content, name=path, settings=settings, limits=limits,
                                keep_native=settings.sample_rate != MFCC_RATE)
    except AudioError as exc:
        header.update(reason=exc.reason, message=exc.message)
        return _batch([header])
    except Exception as exc:  # a decoder bug must not kill the job: reject the file
        header.update(reason=DECODE_ERROR, message=f"{path}: {type(exc).__name__}: {exc}")
        return _batch([header])
    audio = song.audio
    header.update(
        duration_s=audio.duration_s, sample_rate=audio.sample_rate, channels=audio.channels,
        n_slices=len(song.slices), cut_at_s=audio.cut_at_s,
    )
    # From the samples just decoded (no second decode) and one STFT: the MFCC and timbre
    # baselines' features (evaluate reads them), tempo and key.
    samples = audio.at_rate(MFCC_RATE)
    spectrum = song_spectrum(samples, sample_rate=MFCC_RATE)
    frames = frames_of_spectrum(spectrum)
    header.update(mfcc=statistics_of_frames(frames).tolist(), timbre=gaussian_of_frames(frames).tolist())
    try:
        header.update(asdict(musical_facts(samples, sample_rate=MFCC_RATE, spectrum=spectrum)))
    except Exception as exc:  # an estimator's bug costs the tempo and key, never the song
        header.update(musical_note=f"tempo and key not estimated: {type(exc).__name__}: {exc}")
    rows = [header] + [
        {"path": path, "slice_idx": index, "spectrogram": image}
        for index, image in enumerate(song.slices)
    ]
    return _batch(rows)


def _batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=DECODED)  # an absent key is null
