"""The schema of every table, defined once, and the check run before each write."""
from __future__ import annotations

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

SONGS = StructType(
    [
        StructField("song_id", StringType(), False),  # first 16 hex digits of content_sha256
        StructField("path", StringType(), False),
        StructField("genre", StringType(), True),  # null: an unlabelled catalogue song
        StructField("artist", StringType(), True),
        StructField("title", StringType(), True),
        StructField("release_date", DateType(), True),
        StructField("duration_s", DoubleType(), False),  # the whole file, per its header
        StructField("sample_rate", IntegerType(), False),  # the file's own rate
        StructField("channels", IntegerType(), False),
        StructField("n_slices", IntegerType(), False),
        StructField("cut_at_s", DoubleType(), True),  # set when only the start was sliced
        StructField("split", StringType(), False),  # train | validation | test
        StructField("content_sha256", StringType(), False),
        StructField("size_bytes", LongType(), False),
    ]
)

SLICES = StructType(
    [
        StructField("song_id", StringType(), False),
        StructField("slice_idx", IntegerType(), False),
        StructField("offset_s", DoubleType(), False),
        StructField("genre", StringType(), True),
        StructField("split", StringType(), False),
        # uint8 image, n_rows x slice_frames, row-major, row 0 = highest frequency
        StructField("spectrogram", BinaryType(), False),
    ]
)

REJECTS = StructType(
    [
        StructField("path", StringType(), False),
        StructField("reason", StringType(), False),
        StructField("message", StringType(), False),
    ]
)

# The test split's evaluation: one row per method and genre (genre null: all genres).
# train writes the model's classification rows; evaluate rewrites the table with the
# retrieval metrics and the baselines (deepcrate.evaluate).
EVALUATION = StructType(
    [
        StructField("model_version", StringType(), False),
        StructField("method", StringType(), False),  # model | pretrained | mfcc | timbre | random | ideal
        StructField("genre", StringType(), True),  # null: every genre together
        StructField("songs", IntegerType(), False),  # test songs (the queries)
        StructField("slices", IntegerType(), True),  # test slices (the model's rows only)
        StructField("song_accuracy", DoubleType(), True),  # null when there are no songs
        StructField("slice_accuracy", DoubleType(), True),
        StructField("most_confused_with", StringType(), True),  # the most frequent wrong song-level answer
        StructField("precision_at_5", DoubleType(), True),  # retrieval: null until evaluate runs
        StructField("precision_at_10", DoubleType(), True),
        StructField("map_at_5", DoubleType(), True),
        StructField("map_at_10", DoubleType(), True),
    ]
)

# The MFCC and timbre baselines' per-song features (deepcrate.mfcc), kept between evaluations.
MFCC_FEATURES = StructType(
    [
        StructField("song_id", StringType(), False),
        StructField("features", ArrayType(FloatType(), False), False),  # 80: mean and std of 20 MFCCs + deltas
        # 420: the 20 MFCCs' mean and covariance (row by row); double, as the divergence inverts it
        StructField("timbre", ArrayType(DoubleType(), False), False),
    ]
)

# One row per row of the acquire job's URL manifest.
DOWNLOADS = StructType(
    [
        StructField("url", StringType(), False),
        StructField("path", StringType(), True),  # relative to the audio folder; null when refused
        StructField("status", StringType(), False),  # downloaded | present | failed | duplicate
        StructField("http_status", IntegerType(), True),  # of the last attempt
        StructField("bytes", LongType(), True),
        StructField("attempts", IntegerType(), False),
        StructField("error", StringType(), True),
    ]
)

SLICE_EMBEDDINGS = StructType(
    [
        StructField("song_id", StringType(), False),
        StructField("slice_idx", IntegerType(), False),
        StructField("embedding", ArrayType(FloatType(), False), False),  # 128-d, the Dense-128 output
        StructField("genre_probabilities", ArrayType(FloatType(), False), False),  # in the model's label order
        # a pretrained network's own features before the trained layers (musicnn: 200-d per checkpoint); null otherwise
        StructField("pretrained", ArrayType(FloatType(), False), True),
    ]
)

SONG_EMBEDDINGS = StructType(
    [
        StructField("song_id", StringType(), False),
        StructField("embedding", ArrayType(FloatType(), False), False),  # mean of the song's slice embeddings
        # argmax of the summed slice probabilities; null when the model has no genre head
        StructField("predicted_genre", StringType(), True),
        StructField("genre_probabilities", MapType(StringType(), FloatType(), False), False),  # mean per genre
        StructField("n_slices", IntegerType(), False),
        StructField("model_version", StringType(), False),
        # mean of the slices' pretrained features: the network as it comes, untuned; null for other models
        StructField("pretrained", ArrayType(FloatType(), False), True),
    ]
)

RECOMMENDATIONS = StructType(
    [
        StructField("song_id", StringType(), False),
        StructField("rank", IntegerType(), False),  # 1 = the most similar
        StructField("neighbor_id", StringType(), False),
        StructField("similarity", DoubleType(), False),  # cosine of the two song vectors
    ]
)

TABLES: dict[str, StructType] = {
    "songs": SONGS, "slices": SLICES, "rejects": REJECTS, "evaluation": EVALUATION, "downloads": DOWNLOADS,
    "slice_embeddings": SLICE_EMBEDDINGS, "song_embeddings": SONG_EMBEDDINGS, "recommendations": RECOMMENDATIONS,
    "mfcc_features": MFCC_FEATURES,
}

# Tables that may carry extra string columns after their fixed ones (manifest extras).
EXTENSIBLE = {"songs"}


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
