"""The schema of every table, defined once with what each column means, and the check run before each write.

``docs/tables.md`` is generated from these definitions (``python docs/reference.py``).
"""
from __future__ import annotations

from enum import StrEnum

from pyspark.sql import DataFrame
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DataType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from deepcrate.errors import WarehouseError


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


def _schema(table: Table, about: str, *columns: tuple[str, DataType, bool, str]) -> StructType:
    """The Spark schema of ``table`` from (name, type, nullable, meaning) tuples; records the meanings."""
    ABOUT[table] = about
    COLUMN_DOCS[table] = {name: meaning for name, _, _, meaning in columns}
    return StructType([StructField(name, kind, nullable) for name, kind, nullable, _ in columns])


_VECTOR = ArrayType(FloatType(), False)

SONGS = _schema(
    Table.SONGS, "One row per distinct audio file (ingest). Manifest columns beyond the fixed ones follow "
    "as extra string columns, names lower-cased with `_` for other characters.",
    ("song_id", StringType(), False, "first 16 hex digits of `content_sha256`: the same on every run and "
     "machine; a renamed file keeps it"),
    ("path", StringType(), False, "URI of the file as Spark reads it (`file:/…`, `hdfs://…`)"),
    ("genre", StringType(), True, "from the manifest, else the parent folder's name; null: an unlabelled song"),
    ("artist", StringType(), True, "from the manifest"),
    ("title", StringType(), True, "from the manifest"),
    ("release_date", DateType(), True, "from the manifest; values that are not dates are left null, with a warning"),
    ("duration_s", DoubleType(), False, "the whole file, per its header"),
    ("sample_rate", IntegerType(), False, "the file's own rate"),
    ("channels", IntegerType(), False, "the file's own"),
    ("n_slices", IntegerType(), False, "whole slices cut (a remainder shorter than a slice is dropped)"),
    ("cut_at_s", DoubleType(), True, "set when only the first `ingest.max_duration_s` seconds were sliced"),
    ("split", StringType(), False, "`train`, `validation` or `test`: by song, stratified by genre"),
    ("content_sha256", StringType(), False, "SHA-256 of the file's bytes"),
    ("size_bytes", LongType(), False, "the file's size"),
    ("tempo_bpm", DoubleType(), True, "estimated tempo (`deepcrate.audio.musical`); null when the beat is unclear "
     "(`musical_note` says why)"),
    ("tempo_confidence", DoubleType(), True, "0-1: the onset envelope's autocorrelation at the beat period"),
    ("key", StringType(), True, "estimated key and mode, e.g. `A minor`; null when no key is clear"),
    ("camelot", StringType(), True, "the key's Camelot code, e.g. `8A` (A minor): neighbours on the wheel mix"),
    ("key_confidence", DoubleType(), True, "0-1: the chroma's correlation with the key's profile"),
    ("musical_note", StringType(), True, "why tempo or key is null (silence, no clear beat, no clear key)"),
)

SLICES = _schema(
    Table.SLICES, "One row per spectrogram slice (ingest): end to end, or overlapping with "
    "`spectrogram.slice_hop_frames`.",
    ("song_id", StringType(), False, "the song"),
    ("slice_idx", IntegerType(), False, "0, 1, … in time order"),
    ("offset_s", DoubleType(), False, "start of the slice in the song"),
    ("genre", StringType(), True, "copied from `songs`, so training reads one table"),
    ("split", StringType(), False, "copied from `songs`"),
    ("spectrogram", BinaryType(), False, "a uint8 image, rows × slice_frames, row-major, row 0 = the highest "
     "frequency (`deepcrate.audio.spectrogram.slice_from_bytes` reads it)"),
)

PRETRAINED_FEATURES = _schema(
    Table.PRETRAINED_FEATURES, "One row per slice: what the frozen pretrained networks (`train.pretrained`) make "
    "of it, computed once per slice (features), read by train and embed.",
    ("song_id", StringType(), False, "the song"),
    ("slice_idx", IntegerType(), False, "the slice"),
    ("slice_hash", LongType(), False, "`xxhash64(spectrogram)` of the slice the features were computed from: a "
     "slice whose pixels change gets new features"),
    ("features", BinaryType(), False, "the towers' penultimate features side by side (200 per network), "
     "little-endian float32 (`deepcrate.models.pretrained_runtime.from_bytes` reads them)"),
)

REJECTS = _schema(
    Table.REJECTS, "One row per file under the audio folder that did not become a song (ingest).",
    ("path", StringType(), False, "URI of the file"),
    ("reason", StringType(), False, "`empty`, `not_audio`, `decode_error`, `truncated`, `silent`, `too_short`, "
     "`too_large`, `duplicate`, `unsupported_extension`, `hidden_name` or `unreadable`"),
    ("message", StringType(), False, "a sentence naming the file and what is wrong with it"),
)

SLICE_EMBEDDINGS = _schema(
    Table.SLICE_EMBEDDINGS, "One row per slice, every split, labelled or not (embed).",
    ("song_id", StringType(), False, "the song"),
    ("slice_idx", IntegerType(), False, "the slice"),
    ("embedding", _VECTOR, False, "128-d: the layer named `embedding` of the model"),
    ("genre_probabilities", _VECTOR, False, "the softmax, in the model's `labels.json` order (empty without a "
     "genre head)"),
    ("pretrained", _VECTOR, True, "a pretrained network's own features before the trained layers (musicnn: "
     "200-d per checkpoint); null for other models"),
)

SONG_EMBEDDINGS = _schema(
    Table.SONG_EMBEDDINGS, "One row per song, every split, labelled or not (embed).",
    ("song_id", StringType(), False, "the song"),
    ("embedding", _VECTOR, False, "the unweighted mean of the song's slice embeddings"),
    ("predicted_genre", StringType(), True, "argmax of the summed slice probabilities; null without a genre head"),
    ("genre_probabilities", MapType(StringType(), FloatType(), False), False,
     "genre → mean probability: `genre_probabilities['trance']`"),
    ("n_slices", IntegerType(), False, "slices averaged"),
    ("model_version", StringType(), False, "the model folder's name"),
    ("pretrained", _VECTOR, True, "the mean of the slices' `pretrained`: the network as it comes, untuned; null "
     "for other models"),
)

RECOMMENDATIONS = _schema(
    Table.RECOMMENDATIONS, "The top `index.k` songs for every song (index): never the song itself nor a "
    "near-exact duplicate of it.",
    ("song_id", StringType(), False, "the song"),
    ("rank", IntegerType(), False, "1 = the most similar"),
    ("neighbor_id", StringType(), False, "the recommended song"),
    ("similarity", DoubleType(), False, "cosine of the two song vectors"),
)

# The evaluation's methods, in the order people read them (docs/evaluation.md)
EVALUATION_METHODS = ("model", "pretrained", "mfcc", "timbre", "random", "ideal")

EVALUATION = _schema(
    Table.EVALUATION, "The test split's evaluation (evaluate): one row per method and genre.",
    ("model_version", StringType(), False, "the model folder's name"),
    ("method", StringType(), False, "`model`, `pretrained` (a musicnn model only), `mfcc`, `timbre`, `random` "
     "or `ideal` (docs/evaluation.md)"),
    ("genre", StringType(), True, "null: every genre together"),
    ("songs", IntegerType(), False, "test songs of that genre (the queries)"),
    ("slices", IntegerType(), True, "test slices of that genre (the model's rows only)"),
    ("song_accuracy", DoubleType(), True, "a song's genre is the argmax of the sum of its slices' softmax "
     "outputs; null when there are no songs"),
    ("slice_accuracy", DoubleType(), True, "the model's rows only"),
    ("most_confused_with", StringType(), True, "the most frequent wrong song-level answer"),
    ("precision_at_5", DoubleType(), True, "share of same-genre songs among the 5 nearest"),
    ("precision_at_10", DoubleType(), True, "share of same-genre songs among the 10 nearest"),
    ("map_at_5", DoubleType(), True, "mean average precision of the 5 nearest"),
    ("map_at_10", DoubleType(), True, "mean average precision of the 10 nearest"),
)

MFCC_FEATURES = _schema(
    Table.MFCC_FEATURES, "The MFCC and timbre baselines' features of every song (ingest, from the samples it "
    "decodes for the slices: evaluate decodes nothing).",
    ("song_id", StringType(), False, "the song"),
    ("features", _VECTOR, False, "80: mean and std of 20 MFCCs and their deltas"),
    ("timbre", ArrayType(DoubleType(), False), False, "420: the 20 MFCCs' mean and covariance (row by row); "
     "double, as the divergence inverts it"),
)

DOWNLOADS = _schema(
    Table.DOWNLOADS, "One row per row of the URL manifest (acquire).",
    ("url", StringType(), False, "as the manifest gives it"),
    ("path", StringType(), True, "relative to the audio folder; null when refused"),
    ("status", StringType(), False, "`downloaded`, `present`, `failed`, `partial` (the body ended but its audio is "
                                    "cut short: fetched again by the next run) or `duplicate`"),
    ("http_status", IntegerType(), True, "of the last attempt"),
    ("bytes", LongType(), True, "the file's size"),
    ("attempts", IntegerType(), False, "requests made"),
    ("error", StringType(), True, "why it failed"),
)

TABLES: dict[Table, StructType] = {
    Table.SONGS: SONGS, Table.SLICES: SLICES, Table.REJECTS: REJECTS, Table.SLICE_EMBEDDINGS: SLICE_EMBEDDINGS,
    Table.SONG_EMBEDDINGS: SONG_EMBEDDINGS, Table.RECOMMENDATIONS: RECOMMENDATIONS, Table.EVALUATION: EVALUATION,
    Table.MFCC_FEATURES: MFCC_FEATURES, Table.DOWNLOADS: DOWNLOADS, Table.PRETRAINED_FEATURES: PRETRAINED_FEATURES,
}

# Tables that may carry extra string columns after their fixed ones (manifest extras).
EXTENSIBLE = {Table.SONGS}


def validate(df: DataFrame, *, table: str) -> DataFrame:
    """Check ``df`` against the schema of ``table`` before it is written.

    The fixed columns must come first, in order, with the defined types; only
    extensible tables may add string columns after them.

    Raises
    ------
    WarehouseError
        Naming the first column that does not match.
    """
    expected = TABLES[table]
    actual = df.schema.fields
    for position, want in enumerate(expected.fields):
        if position >= len(actual):
            raise WarehouseError(f"table {table}: column {want.name!r} is missing")
        got = actual[position]
        if got.name != want.name or not _same_type(got.dataType, want.dataType):
            raise WarehouseError(
                f"table {table}: column {position} should be {want.name} "
                f"{want.dataType.simpleString()}, got {got.name} {got.dataType.simpleString()}"
            )
    extras = actual[len(expected.fields) :]
    if extras and table not in EXTENSIBLE:
        raise WarehouseError(f"table {table}: unexpected columns {[f.name for f in extras]}")
    for field in extras:
        if not isinstance(field.dataType, StringType):
            raise WarehouseError(f"table {table}: extra column {field.name!r} must be a string")
    return df


def _same_type(got: DataType, want: DataType) -> bool:
    return got.simpleString() == want.simpleString()
