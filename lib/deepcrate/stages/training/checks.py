"""Checks of the slices table before any training: its settings, its genres, its splits."""
from __future__ import annotations

import logging
from collections.abc import Sequence

from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.config import TrainSettings
from deepcrate.errors import TrainingError
from deepcrate.storage.schemas import Table
from deepcrate.storage.warehouse import Warehouse

logger = logging.getLogger(__name__)


def table_settings(store: Warehouse, wanted: SpectrogramSettings) -> SpectrogramSettings:
    """The slices table's spectrogram settings, which must be those ``wanted``."""
    if not store.exists(Table.SLICES):
        raise TrainingError(f"warehouse {store.root}: no slices table; run deepcrate ingest first")
    table = store.metadata(Table.SLICES).spectrogram
    differences = table.differences(wanted)
    if differences:
        detail = ", ".join(f"{k}: table {t!r}, settings {c!r}" for k, (t, c) in differences.items())
        # Only these are settings of their own; the rest follow from the preset.
        hint = ", ".join(f"spectrogram.{k}={t}" for k, (t, _) in differences.items()
                        if k in ("preset", "slice_frames", "slice_hop_frames")) or "the table's spectrogram settings"
        raise TrainingError(
            f"the slices table was made with other spectrogram settings than these ({detail}); "
            f"train with {hint} or re-ingest with the settings you want"
        )
    return table


def genres_to_learn(counts: dict[str, dict[str | None, int]], *, uri: str, objective: str,
                     labels_optional: bool = False) -> list[str]:
    """The genres the model's head predicts: none for a contrastive embedding without usable
    labels, nor for a pretrained one (``labels_optional``)."""
    if objective != "contrastive":
        genres = {g for g, n in counts.get("train", {}).items() if g is not None and n}
        if labels_optional and len(genres) < 2:
            logger.warning("no genre head (%s in the train split): songs get the pretrained embedding and no "
                           "predicted genre", f"one genre, {genres.pop()!r}," if genres else "no genres")
            return []
        return _check_splits(counts, uri=uri)
    for split in ("train", "validation"):  # pairs to learn from, and pairs for early stopping
        if not sum(counts.get(split, {}).values()):
            raise TrainingError(f"slices table {uri}: the {split} split has no slices; the contrastive "
                                f"objective needs songs in both the train and the validation split")
    try:
        return _check_splits(counts, uri=uri)
    except TrainingError as exc:
        logger.warning("no genre head (%s): the embedding is learnt without labels and songs get no "
                       "predicted genre", exc)
        return []


def _check_splits(counts: dict[str, dict[str | None, int]], *, uri: str) -> list[str]:
    """The label list (the train split's genres, sorted), after checking the splits can train."""
    train = {g: n for g, n in counts.get("train", {}).items() if g is not None}
    if not train:
        unlabelled = counts.get("train", {}).get(None, 0)
        why = f"its {unlabelled} slices have no genre" if unlabelled else "it is empty"
        raise TrainingError(f"slices table {uri}: no labelled slices in the train split ({why}); "
                            f"give genres in a manifest or one folder per genre, and enough songs per genre")
    labels = sorted(train)
    if len(labels) < 2:
        raise TrainingError(f"slices table {uri}: the train split has one genre only ({labels[0]!r}); "
                            f"a genre classifier needs at least two")
    validation = {g for g, n in counts.get("validation", {}).items() if g is not None and n}
    missing = [g for g in labels if g not in validation]
    if missing:
        raise TrainingError(
            f"slices table {uri}: no validation slices for {', '.join(missing)}; early stopping would "
            f"ignore them. Add songs to those genres or raise split.validation and re-ingest"
        )
    for split in ("validation", "test"):
        unknown = sorted(g for g in counts.get(split, {}) if g is not None and g not in train)
        if unknown:
            logger.warning("%s slices of genres absent from the train split are ignored: %s",
                           split, ", ".join(unknown))
    return labels


def slices_learnt(counts: dict[str, dict[str | None, int]], split: str, *, labels: Sequence[str],
                   settings: TrainSettings) -> int:
    """Slices of ``split`` the objective reads: every one for contrastive pairs, labelled ones otherwise."""
    if settings.objective == "contrastive":
        return sum(counts.get(split, {}).values())
    return slice_total(counts, split, labels)


def slice_total(counts: dict[str, dict[str | None, int]], split: str, labels: Sequence[str]) -> int:
    return sum(n for g, n in counts.get(split, {}).items() if g in labels)


def check_pretrained_weights(settings: TrainSettings) -> None:
    """Raise ConfigError, naming what to install, when the model needs pretrained weights that are missing."""
    if settings.model == "musicnn":
        from deepcrate.config.sections import parse_checkpoints
        from deepcrate.models.musicnn import checkpoint_prefix

        for name in parse_checkpoints(settings.pretrained):
            checkpoint_prefix(name)
