"""What a stage records beside each table it writes (the table's ``_deepcrate.json``), typed.

One class per kind of writer. The warehouse writes a table's metadata with the table
and reads it back as the same class, so a stage reads another stage's settings by
attribute, never by a string key, and metadata that lacks a field is an error that
names the table rather than a ``KeyError`` three stages later.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.errors import WarehouseError
from deepcrate.storage.schemas import Table

METADATA_FILE = "_deepcrate.json"  # beside a table's files: its TableMetadata


@dataclass(frozen=True, kw_only=True)
class TableMetadata:
    """The fields every table's metadata has; ``run`` and ``table`` are filled in by the warehouse."""

    run: str = ""
    table: str = ""

    _typed: ClassVar[dict[str, type]] = {}  # field -> the class a stored dict becomes

    def to_json(self) -> str:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record = {name: value.to_dict() if isinstance(value, SpectrogramSettings) else value
                  for name, value in record.items()}
        return json.dumps(record, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, *, where: str) -> TableMetadata:
        """The metadata stored as ``text`` (fields it does not know are ignored: a newer writer's)."""
        try:
            stored = json.loads(text)
        except ValueError as exc:
            raise WarehouseError(f"{where}: its metadata is not JSON: {exc}") from None
        if not isinstance(stored, Mapping):
            raise WarehouseError(f"{where}: its metadata is not a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        missing = sorted(name for name, f in known.items() if name not in stored
                         and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if missing:
            raise WarehouseError(f"{where}: its metadata lacks {', '.join(missing)} (written by another version of "
                                 f"deepcrate?); run the stage that writes it again")
        values = {name: value for name, value in stored.items() if name in known}
        for name, kind in cls._typed.items():
            if isinstance(values.get(name), Mapping):
                values[name] = kind(**values[name])
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class IngestMetadata(TableMetadata):
    """Written by ingest with songs, slices, rejects and mfcc_features: what they were made from and how."""

    deepcrate_version: str
    audio: str  # the folder decoded
    spectrogram: SpectrogramSettings
    ingest: dict[str, Any]  # every ingest setting
    decoding: dict[str, Any]  # the settings that decide which files become songs
    split: dict[str, Any]
    musical: int | None = None  # the tempo and key estimator's version; absent before songs had them

    _typed: ClassVar[dict[str, type]] = {"spectrogram": SpectrogramSettings}


@dataclass(frozen=True, kw_only=True)
class EmbeddingsMetadata(TableMetadata):
    """Written by embed with slice_embeddings and song_embeddings."""

    model_version: str
    labels: list[str] = field(default_factory=list)  # the model's genres, in the order of its outputs


@dataclass(frozen=True, kw_only=True)
class FeaturesMetadata(TableMetadata):
    """Written by the features stage with pretrained_features: which networks, on which slices."""

    network: str  # :meth:`deepcrate.models.pretrained_runtime.Network.identity`: checkpoints and a digest
    checkpoints: str  # train.pretrained
    width: int  # features per slice
    format: str  # how a row's features are stored (pretrained_runtime.FEATURE_FORMAT)
    runtime: str  # what computed them (openvino | keras)
    slices_run: str | None = None  # the run of the slices table whose every slice has its row here


@dataclass(frozen=True, kw_only=True)
class RecommendationsMetadata(TableMetadata):
    """Written by index with recommendations."""

    model_version: str | None
    index: dict[str, Any]  # the index's kind, parameters, size, recall and build time


@dataclass(frozen=True, kw_only=True)
class EvaluationMetadata(TableMetadata):
    """Written by evaluate with evaluation."""

    model_version: str | None
    metrics: dict[str, Any]  # the summary, per method


@dataclass(frozen=True, kw_only=True)
class DownloadsMetadata(TableMetadata):
    """Written by acquire with downloads."""

    deepcrate_version: str


METADATA_OF: dict[str, type[TableMetadata]] = {
    Table.SONGS: IngestMetadata, Table.SLICES: IngestMetadata, Table.REJECTS: IngestMetadata,
    Table.MFCC_FEATURES: IngestMetadata,
    Table.SLICE_EMBEDDINGS: EmbeddingsMetadata, Table.SONG_EMBEDDINGS: EmbeddingsMetadata,
    Table.RECOMMENDATIONS: RecommendationsMetadata,
    Table.EVALUATION: EvaluationMetadata,
    Table.DOWNLOADS: DownloadsMetadata,
    Table.PRETRAINED_FEATURES: FeaturesMetadata,
}


def metadata_class(name: str) -> type[TableMetadata]:
    """The metadata class of table ``name`` (the plain :class:`TableMetadata` for a table not listed)."""
    return METADATA_OF.get(name, TableMetadata)


def checked_metadata(name: str, metadata: TableMetadata | None, *, run: str) -> TableMetadata:
    """``metadata`` with ``run`` and ``table`` filled in, after checking it is the kind table ``name`` takes."""
    kind = metadata_class(name)
    if metadata is None:
        if kind is not TableMetadata:
            raise TypeError(f"table {name} is written with its metadata: {kind.__name__}")
        metadata = TableMetadata()
    if not isinstance(metadata, kind):
        raise TypeError(f"table {name} is written with {kind.__name__}, not {type(metadata).__name__}")
    return dataclasses.replace(metadata, run=run, table=str(name))
