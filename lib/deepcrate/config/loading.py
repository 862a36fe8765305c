"""Where settings come from: the packaged defaults (conf/local.yaml), YAML overlays, ``--set`` overrides.

Every key an overlay or override names must exist in the defaults, so a typo fails
loudly instead of being ignored; each value must have its default's type and sign. The
free-form exception is ``spark.options``, which is handed to Spark as it is. What the
values mean is checked where they become typed (:mod:`deepcrate.config.sections`).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from deepcrate.config.sections import Settings, to_mapping
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


def default_config() -> dict[str, Any]:
    """The packaged defaults (a copy of ``conf/local.yaml``)."""
    text = resources.files("deepcrate").joinpath("local.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def resolve_settings(*, conf_files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> Settings:
    """Defaults, then each YAML file in order, then each ``key.path=value`` override, typed and checked.

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
        On an unreadable file, an unknown key, a value of the wrong type or one that makes no sense.
    """
    defaults = default_config()
    config = copy.deepcopy(defaults)
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
            raise ConfigError(f"override {override!r}: expected section.key=value")
        try:
            value = _safe_yaml(raw, where=f"override {override!r}") if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {override!r}: value is not valid YAML: {_yaml_problem(exc)}") from None
        parts = key.strip().split(".")
        for free in FREE_FORM:  # spark.options.spark.executor.memory: the rest is one key
            if tuple(parts[: len(free)]) == free and len(parts) > len(free):
                parts = [*free, ".".join(parts[len(free) :])]
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        _merge(config, nested, where=f"override {override}", trail=())
    return _typed(config, defaults)


def settings_from_mapping(mapping: dict[str, Any], *, where: str = "settings") -> Settings:
    """Settings kept as a mapping (a training run's config.yaml, a test's few keys) over the defaults.

    Raises
    ------
    ConfigError
        As :func:`resolve_settings`.
    """
    defaults = default_config()
    config = copy.deepcopy(defaults)
    _merge(config, mapping, where=where, trail=())
    return _typed(config, defaults)


def _typed(config: dict[str, Any], defaults: dict[str, Any]) -> Settings:
    """The merged mapping checked against the defaults it started from, then typed."""
    _check_signs(config, defaults, trail=())
    return Settings.from_mapping(config)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what, and where (PyYAML's own message spans four)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(exc, 'problem', None) or first_line(exc)}{where}"


def _safe_yaml(text: str, *, where: str) -> Any:
    """``yaml.safe_load`` without aliases: nested anchors (a "billion laughs" bomb) expand
    exponentially when the config is printed or handed to Spark, so ``*name`` is refused."""
    if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
        raise ConfigError(f"{where}: YAML aliases (*name) are not allowed in a config; write the value out")
    return yaml.safe_load(text)


def settings_to_yaml(settings: Settings) -> str:
    """The resolved settings as YAML (what ``-v`` prints, and a training run keeps)."""
    return yaml.safe_dump(to_mapping(settings), sort_keys=False, default_flow_style=False).rstrip()


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
