"""The ``train`` section of the config, checked; what the pretrained models need."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from deepcrate.errors import ConfigError
from deepcrate.models.architectures import MODEL_PRESETS

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
OBJECTIVES = ("classify", "contrastive", "supcon")
FINE_TUNING = ("head", "all")


@dataclass(frozen=True)
class TrainSettings:
    """The ``train`` section of the config, checked."""

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
    precision: str
    shuffle_buffer: int
    interleave: int
    seed: int
    work_dir: str
    progress_interval_s: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrainSettings:
        section = dict(config["train"])
        settings = cls(**section)
        if settings.model not in MODEL_PRESETS:
            raise ConfigError(f"train.model must be one of {MODEL_PRESETS}, got {settings.model!r}")
        if settings.objective not in OBJECTIVES:
            raise ConfigError(f"train.objective must be one of {OBJECTIVES}, got {settings.objective!r}")
        if settings.fine_tune not in FINE_TUNING:
            raise ConfigError(f"train.fine_tune must be one of {FINE_TUNING}, got {settings.fine_tune!r}")
        if settings.model == "musicnn" and settings.objective == "contrastive":
            raise ConfigError("train.model=musicnn learns with train.objective=classify or supcon (the pretrained "
                              "embedding needs no labels: a catalogue without genres gets it as it is)")
        if settings.objective == "supcon" and not (settings.model == "musicnn" and settings.fine_tune == "head"):
            raise ConfigError("train.objective=supcon trains the head on a pretrained network's features "
                              "(train.model=musicnn, train.fine_tune=head) only, so far")
        if settings.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {PRECISIONS}, got {settings.precision!r}")
        if settings.model == "musicnn":
            from deepcrate.models.musicnn import parse_checkpoints

            parse_checkpoints(settings.pretrained)
        for name in ("batch_size", "max_epochs", "patience", "head_max_epochs", "head_patience", "heads_averaged",
                     "shuffle_buffer", "interleave"):
            if getattr(settings, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(settings, name)}")
        if settings.learning_rate < 0:
            raise ConfigError(f"train.learning_rate must be > 0 (or 0 for the preset's own), got {settings.learning_rate}")
        return settings


def check_pretrained_weights(settings: TrainSettings) -> None:
    """Raise ConfigError, naming what to install, when the model needs pretrained weights that are missing."""
    if settings.model == "musicnn":
        from deepcrate.models.musicnn import checkpoint_prefix, parse_checkpoints

        for name in parse_checkpoints(settings.pretrained):
            checkpoint_prefix(name)


def on_frozen_features(settings: TrainSettings) -> bool:
    """Whether only a head is learnt, on a pretrained network's features computed once."""
    return settings.model == "musicnn" and settings.fine_tune == "head"
