"""The schema of every table, defined once with what each column means: Arrow types, no Spark.

The Spark-free readers and delta-rs use these Arrow schemas as they are; the Spark side
derives its own from them (:mod:`deepcrate.storage.spark_schemas`), and checks each
frame against them before a write. ``docs/tables.md`` is generated from these
definitions (``python docs/reference.py``).

Two binary columns hold arrays whose shape depends on the settings, so it is recorded
with the table (:mod:`deepcrate.storage.table_metadata`), not in the type:
``slices.spectrogram`` (uint8, rows × frames: ``IngestMetadata``) and
``pretrained_features.features`` (float32, its width: ``FeaturesMetadata``).
"""
from __future__ import annotations

from enum import StrEnum

import pyarrow as pa


class Table(StrEnum):
    """The name of every table: a ``str``, so it is also the folder and the SQL name."""

    SONGS = "songs"
    SLICES = "slices"
    PRETRAINED_FEATURES = "pretrained_features"
    REJECTS = "rejects"
    SLICE_EMBEDDINGS = "slice_embeddings"
    SONG_EMBEDDINGS = "song_embeddings"
    RECOMMENDATIONS = "recommendations"
    EVALUATION = "evaluation"
    MFCC_FEATURES = "mfcc_features"
    DOWNLOADS = "downloads"


ABOUT: dict[Table, str] = {}  # what a row of each table is, and which stage writes it
COLUMN_DOCS: dict[Table, dict[str, str]] = {}  # what each column holds


def _schema(table: Table, about: str, *columns: tuple[str, pa.DataType, bool, str]) -> pa.Schema:
    """The schema of ``table`` from (name, type, nullable, meaning) tuples; records the meanings."""
    ABOUT[table] = about
    COLUMN_DOCS[table] = {name: meaning for name, _, _, meaning in columns}
    return pa.schema([pa.field(name, kind, nullable) for name, kind, nullable, _ in columns])


def _list(kind: pa.DataType) -> pa.DataType:
    """A list of non-null values, as Spark writes ``ArrayType(kind, containsNull=False)``."""
    return pa.list_(pa.field("element", kind, nullable=False))


_VECTOR = _list(pa.float32())

SONGS = _schema(
    Table.SONGS, "One row per distinct audio file (ingest). Manifest columns beyond the fixed ones follow "
    "as extra string columns, names lower-cased with `_` for other characters.",
    ("song_id", pa.string(), False, "first 16 hex digits of `content_sha256`: the same on every run and "
     "machine; a renamed file keeps it"),
    ("path", pa.string(), False, "URI of the file as Spark reads it (`file:/…`, `hdfs://…`)"),
    ("genre", pa.string(), True, "from the manifest, else the parent folder's name; null: an unlabelled song"),
    ("artist", pa.string(), True, "from the manifest"),
    ("title", pa.string(), True, "from the manifest"),
    ("release_date", pa.date32(), True, "from the manifest; values that are not dates are left null, with a warning"),
    ("duration_s", pa.float64(), False, "the whole file, per its header"),
    ("sample_rate", pa.int32(), False, "the file's own rate"),
    ("channels", pa.int32(), False, "the file's own"),
    ("n_slices", pa.int32(), False, "whole slices cut (a remainder shorter than a slice is dropped)"),
    ("cut_at_s", pa.float64(), True, "set when only the first `ingest.max_duration_s` seconds were sliced"),
    ("split", pa.string(), False, "`train`, `validation` or `test`: by song, stratified by genre"),
    ("content_sha256", pa.string(), False, "SHA-256 of the file's bytes"),
    ("size_bytes", pa.int64(), False, "the file's size"),
    ("tempo_bpm", pa.float64(), True, "estimated tempo (`deepcrate.audio.musical`); null when the beat is unclear "
     "(`musical_note` says why)"),
    ("tempo_confidence", pa.float64(), True, "0-1: the onset envelope's autocorrelation at the beat or two beats, whichever is stronger"),
    ("key", pa.string(), True, "estimated key and mode, e.g. `A minor`; null when no key is clear"),
    ("camelot", pa.string(), True, "the key's Camelot code, e.g. `8A` (A minor): neighbours on the wheel mix"),
    ("key_confidence", pa.float64(), True, "0-1: the chroma's correlation with the key's profile"),
    ("musical_note", pa.string(), True, "why tempo or key is null (silence, no clear beat, no clear key)"),
)

# songs' tempo and key (deepcrate.audio.musical), which warehouses older than them lack
MUSICAL_COLUMNS = ("tempo_bpm", "tempo_confidence", "key", "camelot", "key_confidence")

SLICES = _schema(
    Table.SLICES, "One row per spectrogram slice (ingest): end to end, or overlapping with "
    "`spectrogram.slice_hop_frames`.",
    ("song_id", pa.string(), False, "the song"),
    ("slice_idx", pa.int32(), False, "0, 1, … in time order"),
    ("offset_s", pa.float64(), False, "start of the slice in the song"),
    ("genre", pa.string(), True, "copied from `songs`, so training reads one table"),
    ("split", pa.string(), False, "copied from `songs`"),
    ("spectrogram", pa.binary(), False, "a uint8 image, rows × slice_frames, row-major, row 0 = the highest "
     "frequency (`deepcrate.audio.spectrogram.slice_from_bytes` reads it)"),
)

PRETRAINED_FEATURES = _schema(
    Table.PRETRAINED_FEATURES, "One row per slice: what the frozen pretrained networks (`train.pretrained`) make "
    "of it, computed once per slice (features), read by train and embed.",
    ("song_id", pa.string(), False, "the song"),
    ("slice_idx", pa.int32(), False, "the slice"),
    ("slice_hash", pa.int64(), False, "`xxhash64(spectrogram)` of the slice the features were computed from: a "
     "slice whose pixels change gets new features"),
    ("features", pa.binary(), False, "the towers' penultimate features side by side (200 per network), "
     "little-endian float32 (`deepcrate.models.pretrained_runtime.from_bytes` reads them)"),
)

REJECTS = _schema(
    Table.REJECTS, "One row per file under the audio folder that did not become a song (ingest).",
    ("path", pa.string(), False, "URI of the file"),
    ("reason", pa.string(), False, "`empty`, `not_audio`, `decode_error`, `truncated`, `silent`, `too_short`, "
     "`too_large`, `duplicate`, `unsupported_extension`, `hidden_name` or `unreadable`"),
    ("message", pa.string(), False, "a sentence naming the file and what is wrong with it"),
)

SLICE_EMBEDDINGS = _schema(
    Table.SLICE_EMBEDDINGS, "One row per slice, every split, labelled or not (embed).",
    ("song_id", pa.string(), False, "the song"),
    ("slice_idx", pa.int32(), False, "the slice"),
    ("embedding", _VECTOR, False, "128-d: the layer named `embedding` of the model"),
    ("genre_probabilities", _VECTOR, False, "the softmax, in the model's `labels.json` order (empty without a "
     "genre head)"),
    ("pretrained", _VECTOR, True, "a pretrained network's own features before the trained layers (musicnn: "
     "200-d per checkpoint); null for other models"),
)

SONG_EMBEDDINGS = _schema(
    Table.SONG_EMBEDDINGS, "One row per song, every split, labelled or not (embed).",
    ("song_id", pa.string(), False, "the song"),
    ("embedding", _VECTOR, False, "the unweighted mean of the song's slice embeddings"),
    ("predicted_genre", pa.string(), True, "argmax of the summed slice probabilities; null without a genre head"),
    ("genre_probabilities", pa.map_(pa.string(), pa.field("value", pa.float32(), nullable=False)), False,
     "genre → mean probability: `genre_probabilities['trance']`"),
    ("n_slices", pa.int32(), False, "slices averaged"),
    ("model_version", pa.string(), False, "the model folder's name"),
    ("pretrained", _VECTOR, True, "the mean of the slices' `pretrained`: the network as it comes, untuned; null "
     "for other models"),
)

RECOMMENDATIONS = _schema(
    Table.RECOMMENDATIONS, "The top `index.k` songs for every song (index): never the song itself nor a "
    "near-exact duplicate of it.",
    ("song_id", pa.string(), False, "the song"),
    ("rank", pa.int32(), False, "1 = the most similar"),
    ("neighbor_id", pa.string(), False, "the recommended song"),
    ("similarity", pa.float64(), False, "cosine of the two song vectors"),
)

# The evaluation's methods, in the order people read them (docs/evaluation.md)
EVALUATION_METHODS = ("model", "pretrained", "mfcc", "timbre", "random", "ideal")

EVALUATION = _schema(
    Table.EVALUATION, "The test split's evaluation (evaluate): one row per method and genre.",
    ("model_version", pa.string(), False, "the model folder's name"),
    ("method", pa.string(), False, "`model`, `pretrained` (a musicnn model only), `mfcc`, `timbre`, `random` "
     "or `ideal` (docs/evaluation.md)"),
    ("genre", pa.string(), True, "null: every genre together"),
    ("songs", pa.int32(), False, "test songs of that genre (the queries)"),
    ("slices", pa.int32(), True, "test slices of that genre (the model's rows only)"),
    ("song_accuracy", pa.float64(), True, "a song's genre is the argmax of the sum of its slices' softmax "
     "outputs; null when there are no songs"),
    ("slice_accuracy", pa.float64(), True, "the model's rows only"),
    ("most_confused_with", pa.string(), True, "the most frequent wrong song-level answer"),
    ("precision_at_5", pa.float64(), True, "share of same-genre songs among the 5 nearest"),
    ("precision_at_10", pa.float64(), True, "share of same-genre songs among the 10 nearest"),
    ("map_at_5", pa.float64(), True, "mean average precision of the 5 nearest"),
    ("map_at_10", pa.float64(), True, "mean average precision of the 10 nearest"),
)

MFCC_FEATURES = _schema(
    Table.MFCC_FEATURES, "The MFCC and timbre baselines' features of every song (ingest, from the samples it "
    "decodes for the slices: evaluate decodes nothing).",
    ("song_id", pa.string(), False, "the song"),
    ("features", _VECTOR, False, "80: mean and std of 20 MFCCs and their deltas"),
    ("timbre", _list(pa.float64()), False, "420: the 20 MFCCs' mean and covariance (row by row); "
     "double, as the divergence inverts it"),
)

DOWNLOADS = _schema(
    Table.DOWNLOADS, "One row per row of the URL manifest (acquire).",
    ("url", pa.string(), False, "as the manifest gives it"),
    ("path", pa.string(), True, "relative to the audio folder; null when refused"),
    ("status", pa.string(), False, "`downloaded`, `present`, `failed`, `partial` (the body ended but its audio is "
                                    "cut short: fetched again by the next run) or `duplicate`"),
    ("http_status", pa.int32(), True, "of the last attempt"),
    ("bytes", pa.int64(), True, "the file's size"),
    ("attempts", pa.int32(), False, "requests made"),
    ("error", pa.string(), True, "why it failed"),
)

TABLES: dict[Table, pa.Schema] = {
    Table.SONGS: SONGS, Table.SLICES: SLICES, Table.REJECTS: REJECTS, Table.SLICE_EMBEDDINGS: SLICE_EMBEDDINGS,
    Table.SONG_EMBEDDINGS: SONG_EMBEDDINGS, Table.RECOMMENDATIONS: RECOMMENDATIONS, Table.EVALUATION: EVALUATION,
    Table.MFCC_FEATURES: MFCC_FEATURES, Table.DOWNLOADS: DOWNLOADS, Table.PRETRAINED_FEATURES: PRETRAINED_FEATURES,
}

# Tables that may carry extra string columns after their fixed ones (manifest extras).
EXTENSIBLE = {Table.SONGS}
