"""Configuration: the packaged defaults (conf/local.yaml), YAML overlays, ``--set`` overrides.

Every key an overlay or override names must exist in the defaults, so a typo fails
loudly instead of being ignored. The free-form exception is ``spark.options``,
which is handed to Spark as it is.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from deepcrate.errors import ConfigError, first_line

logger = logging.getLogger(__name__)

# Sections whose keys are not known in advance.
FREE_FORM = {("spark", "options")}
# Settings that are gone, and what to do instead: a config that still sets one is told so.
REMOVED = {"warehouse.table_format": "every warehouse is Delta now; one in the earlier plain-Parquet layout "
                                    "is converted in place by its next writing job"}
# Numbers whose default is positive but for which 0 means something (none, off, always approximate).
ZERO_MEANS_SOMETHING = {"acquire.per_host_delay_s", "acquire.retries", "acquire.backoff_s", "index.exact_max_songs",
                        "index.recall_sample", "ingest.truncated_ratio"}


@dataclass(frozen=True)
class IngestSettings:
    """The ``ingest`` section, typed (conf/local.yaml explains each key)."""

    extensions: tuple[str, ...]
    max_file_mb: float
    max_duration_s: float
    truncated_ratio: float
    silence_dbfs: float
    partition_mb: float
    files_per_batch: int
    progress_interval_s: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> IngestSettings:
        section = dict(config["ingest"])
        return cls(**{**section, "extensions": tuple(section["extensions"])})

    @property
    def suffixes(self) -> tuple[str, ...]:
        """``.mp3``, ``.ogg``, ...: the extensions as file names end."""
        return tuple("." + e.lower().lstrip(".") for e in self.extensions)

    @property
    def max_bytes(self) -> int:
        return int(float(self.max_file_mb) * 2**20)

    def to_dict(self) -> dict[str, Any]:
        """As the config (and the tables' metadata) writes it."""
        return {**asdict(self), "extensions": list(self.extensions)}


@dataclass(frozen=True)
class FeaturesSettings:
    """The ``features`` section, typed."""

    runtime: str
    batch_size: int
    progress_interval_s: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FeaturesSettings:
        return cls(**config["features"])


@dataclass(frozen=True)
class EmbedSettings:
    """The ``embed`` section, typed."""

    batch_size: int
    progress_interval_s: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EmbedSettings:
        return cls(**config["embed"])


@dataclass(frozen=True)
class EvaluateSettings:
    """The ``evaluate`` section, typed."""

    random_draws: int
    seed: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EvaluateSettings:
        return cls(**config["evaluate"])


def default_config() -> dict[str, Any]:
    """The packaged defaults (a copy of ``conf/local.yaml``)."""
    text = resources.files("deepcrate").joinpath("local.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def resolve_config(
    *, conf_files: Iterable[str | Path] = (), overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Defaults, then each YAML file in order, then each ``key.path=value`` override.

    Parameters
    ----------
    conf_files : iterable of path
        YAML overlays; later files win.
    overrides : iterable of str
        ``section.key=value`` strings; the value is parsed as YAML (``3``, ``0.5``,
        ``true``, ``[a, b]``).

    Raises
    ------
    ConfigError
        On an unreadable file, an unknown key or a value of the wrong type.
    """
    config = default_config()
    for conf_file in conf_files:
        path = Path(conf_file)
        try:
            overlay = _safe_yaml(path.read_text(encoding="utf-8"), where=f"config file {path}") or {}
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                              f"{exc.start}); a config is YAML written in UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(overlay, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        _merge(config, overlay, where=str(path), trail=())
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {override!r}: expected section.key=value")
        try:
            value = _safe_yaml(raw, where=f"--set {override!r}") if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {override!r}: value is not valid YAML: {_yaml_problem(exc)}") from None
        parts = key.strip().split(".")
        for free in FREE_FORM:  # spark.options.spark.executor.memory: the rest is one key
            if tuple(parts[: len(free)]) == free and len(parts) > len(free):
                parts = [*free, ".".join(parts[len(free) :])]
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        _merge(config, nested, where=f"--set {override}", trail=())
    _check_split(config["split"])
    _check_signs(config, default_config(), trail=())
    _check_meaning(config)
    return config


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what, and where (PyYAML's own message spans four)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or first_line(exc)}{where}"


LOG_LEVELS = ("ALL", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")


def _check_meaning(config: dict[str, Any]) -> None:
    """Values that parse but would make nonsense of a job, refused before it starts."""
    level = str(config["spark"]["log_level"]).upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"spark.log_level must be one of {', '.join(LOG_LEVELS)}, got {config['spark']['log_level']!r}")
    config["spark"]["log_level"] = level
    extensions = config["ingest"]["extensions"]
    if not isinstance(extensions, list) or not extensions or not all(isinstance(e, str) and e.strip(".")
                                                                      for e in extensions):
        raise ConfigError(f"ingest.extensions must list at least one file extension (e.g. [mp3, flac]), "
                          f"got {extensions!r}")
    ratio = config["ingest"]["truncated_ratio"]
    if not 0 < ratio <= 1:
        raise ConfigError(f"ingest.truncated_ratio must be > 0 and <= 1 (the share of its header's length a "
                          f"file must decode to), got {ratio!r}")


def _safe_yaml(text: str, *, where: str) -> Any:
    """``yaml.safe_load`` without aliases: nested anchors (a "billion laughs" bomb) expand
    exponentially when the config is printed or handed to Spark, so ``*name`` is refused."""
    if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
        raise ConfigError(f"{where}: YAML aliases (*name) are not allowed in a config; write the value out")
    return yaml.safe_load(text)


def config_to_yaml(config: dict[str, Any]) -> str:
    """The resolved config as YAML, for the log line every job starts with."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False).rstrip()


def _merge(base: dict, overlay: dict, *, where: str, trail: tuple[str, ...]) -> None:
    for key, value in overlay.items():
        path = trail + (str(key),)
        if trail in FREE_FORM:
            base[key] = copy.deepcopy(value)
            continue
        if key not in base:
            name = ".".join(path)
            gone = [f"{old} was removed: {why}" for old, why in REMOVED.items() if f"{old}.".startswith(f"{name}.")]
            if gone:
                raise ConfigError(f"{where}: {gone[0]}")
            known = ", ".join(sorted(str(k) for k in base))
            raise ConfigError(f"{where}: unknown key {'.'.join(path)!r} (known here: {known})")
        current = base[key]
        if isinstance(current, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {'.'.join(path)} is a section, not a value")
            _merge(current, value, where=where, trail=path)
        else:
            base[key] = _coerce(current, value, where=where, name=".".join(path))


def _coerce(current: Any, value: Any, *, where: str, name: str) -> Any:
    """Check ``value`` against the type of the default it replaces."""
    if isinstance(current, bool) or isinstance(value, bool):
        if isinstance(current, bool) and isinstance(value, bool):
            return value
    elif isinstance(current, float) and isinstance(value, (int, float)):
        return float(value)
    elif isinstance(current, int) and isinstance(value, int):
        return value
    elif isinstance(current, str) and isinstance(value, str):
        return value
    elif isinstance(current, list) and isinstance(value, list):
        kinds = {type(item) for item in current}
        if len(kinds) != 1 or all(isinstance(item, tuple(kinds)) for item in value):
            return value
        raise ConfigError(f"{where}: {name} must be a list of {kinds.pop().__name__} like {current!r}, got {value!r}")
    raise ConfigError(
        f"{where}: {name} must be a {type(current).__name__} like {current!r}, got {value!r}"
    )


def _check_signs(config: dict[str, Any], defaults: dict[str, Any], *, trail: tuple[str, ...]) -> None:
    """Every number keeps its default's sign, so that a slip (``max_duration_s=-1``) is refused
    before any work instead of rejecting every file: a positive default must stay > 0
    (>= 0 where 0 means something, :data:`ZERO_MEANS_SOMETHING`), a zero default >= 0
    (0 = the preset's own, off), a negative default <= 0."""
    for key, default in defaults.items():
        path = trail + (str(key),)
        if path in FREE_FORM:
            continue
        if isinstance(default, dict):
            _check_signs(config[key], default, trail=path)
            continue
        value, name = config[key], ".".join(path)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        if default > 0 and name not in ZERO_MEANS_SOMETHING:
            ok, rule = value > 0, "> 0"
        elif default >= 0:
            ok, rule = value >= 0, ">= 0"
        else:
            ok, rule = value <= 0, "<= 0"
        if not ok:
            raise ConfigError(f"{name} must be {rule}, got {value!r}")


def _check_split(split: dict[str, Any]) -> None:
    fractions = [split["train"], split["validation"], split["test"]]
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(
            f"split fractions must be >= 0 and sum to 1, got train={split['train']}, "
            f"validation={split['validation']}, test={split['test']}"
        )
