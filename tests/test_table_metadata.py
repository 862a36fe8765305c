"""What stages record with their tables: typed on the way in, typed on the way out, errors naming the table."""
import json

import pytest

from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.errors import WarehouseError
from deepcrate.storage.schemas import Table
from deepcrate.storage.table_metadata import (
    METADATA_OF,
    EmbeddingsMetadata,
    EvaluationMetadata,
    IngestMetadata,
    TableMetadata,
    checked_metadata,
    metadata_class,
)

pytestmark = pytest.mark.unit
SETTINGS = SpectrogramSettings(preset="mel", sample_rate=22050, n_fft=2048, hop_length=512, n_rows=128,
                               db_range=80.0, slice_frames=128, slice_hop_frames=64)


def ingest_metadata() -> IngestMetadata:
    return IngestMetadata(deepcrate_version="1.0", audio="file:/music", spectrogram=SETTINGS,
                          ingest={"max_file_mb": 50}, decoding={"extensions": ["mp3"]},
                          split={"train": 0.65, "validation": 0.25, "test": 0.1, "seed": 0}, musical=1)


def test_every_table_has_one_metadata_class():
    assert set(METADATA_OF) == set(Table)


def test_ingest_metadata_round_trips_with_its_settings_typed():
    written = checked_metadata(Table.SLICES, ingest_metadata(), run="r1")
    stored = json.loads(written.to_json())
    assert stored["run"] == "r1" and stored["table"] == "slices"
    assert stored["spectrogram"] == SETTINGS.to_dict()  # the settings as every other place stores them
    read = metadata_class(Table.SLICES).from_json(written.to_json(), where="table slices")
    assert read == written and isinstance(read.spectrogram, SpectrogramSettings)
    assert read.spectrogram.slice_hop_frames == 64


def test_a_field_of_a_newer_writer_is_ignored_and_an_absent_optional_one_defaults():
    stored = json.loads(checked_metadata(Table.SONGS, ingest_metadata(), run="r1").to_json())
    del stored["musical"]
    stored["written_by_the_future"] = True
    read = IngestMetadata.from_json(json.dumps(stored), where="table songs")
    assert read.musical is None and read.audio == "file:/music"


def test_metadata_lacking_a_field_is_an_error_naming_the_table_and_the_field():
    text = json.dumps({"run": "r1", "table": "song_embeddings", "labels": ["a"]})
    with pytest.raises(WarehouseError, match=r"table song_embeddings in /wh: its metadata lacks model_version"):
        EmbeddingsMetadata.from_json(text, where="table song_embeddings in /wh")
    with pytest.raises(WarehouseError, match="not JSON"):
        EmbeddingsMetadata.from_json("{", where="table song_embeddings in /wh")


def test_a_table_is_written_only_with_its_own_kind_of_metadata():
    with pytest.raises(TypeError, match="evaluation is written with EvaluationMetadata, not EmbeddingsMetadata"):
        checked_metadata(Table.EVALUATION, EmbeddingsMetadata(model_version="v"), run="r")
    with pytest.raises(TypeError, match="written with its metadata: IngestMetadata"):
        checked_metadata(Table.SONGS, None, run="r")
    assert checked_metadata("scratch", None, run="r") == TableMetadata(run="r", table="scratch")
    evaluation = checked_metadata(Table.EVALUATION, EvaluationMetadata(model_version="v", metrics={"p": 1}), run="r")
    assert (evaluation.run, evaluation.table, evaluation.metrics) == ("r", "evaluation", {"p": 1})
