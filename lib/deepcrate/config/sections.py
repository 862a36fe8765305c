"""The settings, typed: one frozen dataclass per section of conf/local.yaml, and :class:`Settings`
holding them all.

Each section checks what its values mean when it is made (:mod:`deepcrate.config.loading` has
already checked each key's name, type and sign against the defaults), so a :class:`Settings`
that exists is valid, and no stage checks a setting again. conf/local.yaml explains each key.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from deepcrate.errors import ConfigError

# The values a setting may take; the modules that act on them import these.
LOG_LEVELS = ("ALL", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")
SPECTROGRAM_PRESETS = ("seed", "mel", "musicnn")
MODEL_PRESETS = ("seed", "improved", "musicnn")
CHECKPOINTS = ("MSD_musicnn", "MTT_musicnn")  # musicnn's pretrained weights (models.musicnn)
OBJECTIVES = ("classify", "contrastive", "supcon")
FINE_TUNING = ("head", "all")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
FEATURE_RUNTIMES = ("openvino", "keras")
INDEX_KINDS = ("hnsw", "ivf")


def _one_of(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _at_least_one(section: Any, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(section, name) < 1:
            raise ConfigError(f"{prefix}.{name} must be >= 1, got {getattr(section, name)}")


def parse_checkpoints(value: str) -> tuple[str, ...]:
    """``train.pretrained`` (one checkpoint, or several joined by ``+``) as checkpoint names.

    Raises
    ------
    ConfigError
        An unknown or repeated name.
    """
    names = tuple(part.strip() for part in str(value).split("+"))
    for name in names:
        if name not in CHECKPOINTS:
            raise ConfigError(f"musicnn checkpoint must be one of {', '.join(CHECKPOINTS)} (or several joined by '+'), "
                              f"got {name!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"train.pretrained names a checkpoint twice: {value!r}")
    return names


@dataclass(frozen=True)
class SparkSettings:
    master: str
    app_name: str
    log_level: str
    options: dict[str, Any] = field(default_factory=dict)  # handed to Spark as they are

    def __post_init__(self) -> None:
        level = str(self.log_level).upper()
        _one_of("spark.log_level", level, LOG_LEVELS)
        object.__setattr__(self, "log_level", level)

    def preferring(self, options: dict[str, str]) -> SparkSettings:
        """These settings with ``options`` added where the user's config does not set them."""
        return replace(self, options={**options, **self.options})


@dataclass(frozen=True)
class FrontEnd:
    """One spectrogram preset's parameters (``spectrogram.seed``, ``.mel``, ``.musicnn``)."""

    sample_rate: int
    n_fft: int
    hop_s: float
    db_range: float
    slice_frames: int
    n_mels: int | None = None  # mel and musicnn only (None: not in the YAML)


@dataclass(frozen=True)
class SpectrogramSection:
    """The ``spectrogram`` section: the preset in use, slicing, and each preset's parameters."""

    preset: str
    slice_frames: int
    slice_hop_frames: int
    seed: FrontEnd
    mel: FrontEnd
    musicnn: FrontEnd

    def __post_init__(self) -> None:
        _one_of("spectrogram.preset", self.preset, SPECTROGRAM_PRESETS)
        if self.hop_length < 1 or self.front_end.db_range <= 0 or self.frames < 1:
            raise ConfigError(f"spectrogram.{self.preset}: hop_s, db_range, slice_frames must be > 0")
        if not 1 <= self.hop_frames <= self.frames:
            # A hop beyond the slice would skip audio between slices.
            raise ConfigError(f"spectrogram.slice_hop_frames must be 0 (= slice_frames) or 1..{self.frames}"
                              f", got {self.slice_hop_frames}")

    @property
    def front_end(self) -> FrontEnd:
        """The preset in use's parameters."""
        return getattr(self, self.preset)

    @property
    def hop_length(self) -> int:
        """Samples from one spectrogram column to the next."""
        return round(self.front_end.hop_s * self.front_end.sample_rate)

    @property
    def n_rows(self) -> int:
        # seed keeps the top n_fft/2 of the n_fft/2 + 1 linear bins (drops DC).
        return self.front_end.n_fft // 2 if self.preset == "seed" else self.front_end.n_mels

    @property
    def frames(self) -> int:
        """Columns per slice (0 in ``slice_frames``: the preset's own, the length its model was made for)."""
        return self.slice_frames or self.front_end.slice_frames

    @property
    def hop_frames(self) -> int:
        """Columns from one slice's start to the next (0 in ``slice_hop_frames``: end to end)."""
        return self.slice_hop_frames or self.frames


@dataclass(frozen=True)
class AcquireSettings:
    workers: int
    per_host_delay_s: float
    timeout_s: float
    retries: int
    backoff_s: float
    max_file_mb: float
    content_types: tuple[str, ...]
    distributed: bool
    progress_interval_s: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "content_types", tuple(self.content_types))


@dataclass(frozen=True)
class DecodeLimits:
    """When a decoded file is cut, or refused (the ``ingest`` keys that decoding needs)."""

    max_duration_s: float
    truncated_ratio: float
    silence_dbfs: float


@dataclass(frozen=True)
class IngestSettings:
    extensions: tuple[str, ...]
    max_file_mb: float
    max_duration_s: float
    truncated_ratio: float
    silence_dbfs: float
    partition_mb: float
    files_per_batch: int
    progress_interval_s: float

    def __post_init__(self) -> None:
        extensions = self.extensions
        if not isinstance(extensions, (list, tuple)) or not extensions or not all(
                isinstance(e, str) and e.strip(".") for e in extensions):
            raise ConfigError(f"ingest.extensions must list at least one file extension (e.g. [mp3, flac]), "
                              f"got {extensions!r}")
        object.__setattr__(self, "extensions", tuple(extensions))
        if not 0 < self.truncated_ratio <= 1:
            raise ConfigError(f"ingest.truncated_ratio must be > 0 and <= 1 (the share of its header's length a "
                              f"file must decode to), got {self.truncated_ratio!r}")

    @property
    def suffixes(self) -> tuple[str, ...]:
        """``.mp3``, ``.ogg``, ...: the extensions as file names end."""
        return tuple("." + e.lower().lstrip(".") for e in self.extensions)

    @property
    def max_bytes(self) -> int:
        return int(float(self.max_file_mb) * 2**20)

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(max_duration_s=float(self.max_duration_s), truncated_ratio=float(self.truncated_ratio),
                            silence_dbfs=float(self.silence_dbfs))


@dataclass(frozen=True)
class SplitSettings:
    train: float
    validation: float
    test: float
    seed: int

    def __post_init__(self) -> None:
        fractions = [self.train, self.validation, self.test]
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ConfigError(f"split fractions must be >= 0 and sum to 1, got train={self.train}, "
                              f"validation={self.validation}, test={self.test}")


@dataclass(frozen=True)
class TrainSettings:
    model: str
    objective: str
    batch_size: int
    max_epochs: int
    patience: int
    learning_rate: float
    balance_genres: bool
    fine_tune: str
    pretrained: str
    head_max_epochs: int
    head_patience: int
    heads_averaged: int
    head_max_slices: int
    precision: str
    shuffle_buffer: int
    interleave: int
    seed: int
    work_dir: str
    progress_interval_s: float

    def __post_init__(self) -> None:
        _one_of("train.model", self.model, MODEL_PRESETS)
        _one_of("train.objective", self.objective, OBJECTIVES)
        _one_of("train.fine_tune", self.fine_tune, FINE_TUNING)
        _one_of("train.precision", self.precision, PRECISIONS)
        if self.model == "musicnn" and self.objective == "contrastive":
            raise ConfigError("train.model=musicnn learns with train.objective=classify or supcon (the pretrained "
                              "embedding needs no labels: a catalogue without genres gets it as it is)")
        if self.objective == "supcon" and not self.on_frozen_features:
            raise ConfigError("train.objective=supcon trains the head on a pretrained network's features "
                              "(train.model=musicnn, train.fine_tune=head) only, so far")
        if self.model == "musicnn":
            parse_checkpoints(self.pretrained)
        _at_least_one(self, "train", ("batch_size", "max_epochs", "patience", "head_max_epochs", "head_patience",
                                      "heads_averaged", "head_max_slices", "shuffle_buffer", "interleave"))
        if self.learning_rate < 0:
            raise ConfigError(f"train.learning_rate must be > 0 (or 0 for the preset's own), got {self.learning_rate}")

    @property
    def on_frozen_features(self) -> bool:
        """Whether only a head is learnt, on a pretrained network's features computed once."""
        return self.model == "musicnn" and self.fine_tune == "head"


@dataclass(frozen=True)
class FeaturesSettings:
    runtime: str
    batch_size: int
    progress_interval_s: float

    def __post_init__(self) -> None:
        _one_of("features.runtime", self.runtime, FEATURE_RUNTIMES)


@dataclass(frozen=True)
class EmbedSettings:
    batch_size: int
    progress_interval_s: float


@dataclass(frozen=True)
class EvaluateSettings:
    random_draws: int
    seed: int
    probe_max_songs: int


@dataclass(frozen=True)
class IndexSettings:
    k: int
    exact_max_songs: int
    approximate: str
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    ivf_nprobe: int
    duplicate_similarity: float
    block_size: int
    recall_sample: int
    progress_interval_s: float

    def __post_init__(self) -> None:
        _one_of("index.approximate", self.approximate, INDEX_KINDS)
        _at_least_one(self, "index", ("k", "block_size", "hnsw_m", "hnsw_ef_search", "ivf_nprobe"))


@dataclass(frozen=True)
class SqlSettings:
    timeout_s: float
    class_archive: bool


@dataclass(frozen=True)
class Settings:
    """Every setting a command runs with: built once (:func:`deepcrate.config.resolve_settings`),
    valid, and handed to the stage or reader, which reads the section it needs."""

    spark: SparkSettings
    spectrogram: SpectrogramSection
    acquire: AcquireSettings
    ingest: IngestSettings
    split: SplitSettings
    train: TrainSettings
    features: FeaturesSettings
    embed: EmbedSettings
    evaluate: EvaluateSettings
    index: IndexSettings
    sql: SqlSettings

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any]) -> Settings:
        """From a complete mapping of the YAML's shape (every section, every key).

        Raises
        ------
        ConfigError
            A value that makes no sense (the first one found).
        """
        sections = {}
        for section in fields(cls):
            values = dict(mapping[section.name])
            if section.name == "spectrogram":
                values.update({preset: FrontEnd(**values[preset]) for preset in SPECTROGRAM_PRESETS})
            sections[section.name] = _SECTION_TYPES[section.name](**values)
        return cls(**sections)



def to_mapping(settings: Any) -> dict[str, Any]:
    """:class:`Settings`, or one section, in the YAML's shape again (tuples as lists, keys the YAML
    does not have left out): what the run record and the tables' metadata keep, and fingerprints."""
    return _plain(asdict(settings))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


_SECTION_TYPES = {"spark": SparkSettings, "spectrogram": SpectrogramSection, "acquire": AcquireSettings,
                  "ingest": IngestSettings, "split": SplitSettings, "train": TrainSettings,
                  "features": FeaturesSettings, "embed": EmbedSettings, "evaluate": EvaluateSettings,
                  "index": IndexSettings, "sql": SqlSettings}
