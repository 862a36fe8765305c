"""The work folder of a training run, its state, its checkpoints and resuming.

The run lives in a work folder (``train.work_dir``) until it is published::

    <work_dir>/<version>/config.yaml   the resolved config (a resumed run keeps it)
    <work_dir>/<version>/state.json    epochs done, history, early-stopping state
    <work_dir>/<version>/last.keras    the model after the last finished epoch (with optimizer)
    <work_dir>/<version>/best.keras    the model with the lowest validation loss so far

Every finished epoch is checkpointed, so a resumed run continues where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import yaml

from deepcrate.config import Settings, TrainSettings, settings_from_mapping, settings_to_yaml
from deepcrate.errors import ConfigError, TrainingError, first_line
from deepcrate.models.store import write_json
from deepcrate.storage.warehouse import Warehouse
from deepcrate.uris import local_path

logger = logging.getLogger(__name__)


def work_folder(store: Warehouse, settings: TrainSettings) -> str:
    if settings.work_dir:
        return os.path.abspath(os.path.expanduser(settings.work_dir))
    if store.root.startswith("file:"):
        return local_path(store.root) + "/_training"
    digest = hashlib.sha256(store.root.encode()).hexdigest()[:12]
    return os.path.expanduser(f"~/.cache/deepcrate/training/{digest}")


def can_resume(store: Warehouse, settings: Settings, *, fingerprint: str) -> bool:
    """Whether ``resume=True`` would continue an interrupted run started with ``fingerprint``."""
    runs = _runs_in(work_folder(store, settings.train))
    return bool(runs) and RunState.load(runs[-1]).fingerprint == fingerprint


def _runs_in(work_root: str) -> list[str]:
    if not os.path.isdir(work_root):
        return []
    return sorted(os.path.join(work_root, d) for d in os.listdir(work_root)
                  if os.path.isfile(os.path.join(work_root, d, "state.json")))


def new_run(work_root: str, settings: Settings, *, fingerprint: str | None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    train = settings.train
    kind = train.model if train.objective == "classify" else f"{train.model}-{train.objective}"
    base = os.path.join(work_root, f"{stamp}-{kind}")
    run_dir, n = base, 1
    while os.path.exists(run_dir):
        n += 1
        run_dir = f"{base}-{n}"
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as out:
        out.write(settings_to_yaml(settings) + "\n")
    RunState(fingerprint=fingerprint).save(run_dir)
    return run_dir


def unfinished_run(work_root: str, *, given: Settings) -> tuple[str, Settings]:
    """The newest unfinished run in ``work_root``, and the settings it started with."""
    runs = _runs_in(work_root)
    if not runs:
        raise TrainingError(f"nothing to resume: no unfinished training run in {work_root}")
    run_dir = runs[-1]
    kept = os.path.join(run_dir, "config.yaml")
    try:
        with open(kept, encoding="utf-8") as stream:
            settings = settings_from_mapping(yaml.safe_load(stream), where=kept)
    except (OSError, yaml.YAMLError, ConfigError) as exc:
        raise TrainingError(f"cannot resume {run_dir}: its config.yaml is unreadable: {first_line(exc)}") from None
    state = RunState.load(run_dir)
    if settings != given:
        logger.warning("resuming %s with the settings it started with; settings given now are ignored", run_dir)
    logger.info("resuming %s after epoch %d", run_dir, state.epochs_done)
    return run_dir, settings


@dataclass
class RunState:
    """What a resumed run needs besides the model: saved after every epoch."""

    epochs_done: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    wait: int = 0
    stopped_early: bool = False
    heads: dict = field(default_factory=dict)  # fine_tune=head: each head's seed and score, and which were averaged
    finished: bool = False
    fingerprint: str | None = None  # the rebuild job's record of the run's inputs

    @classmethod
    def load(cls, run_dir: str) -> RunState:
        try:
            with open(os.path.join(run_dir, "state.json"), encoding="utf-8") as stream:
                return cls(**json.load(stream))
        except (OSError, ValueError, TypeError) as exc:
            raise TrainingError(f"cannot resume {run_dir}: state.json is unreadable: {exc}") from None

    def save(self, run_dir: str) -> None:
        tmp = os.path.join(run_dir, "state.json.tmp")
        write_json(run_dir, "state.json.tmp", self.__dict__)
        os.replace(tmp, os.path.join(run_dir, "state.json"))


class Checkpoint(keras.callbacks.Callback):
    """Save last.keras / best.keras and the state after each epoch; stop early on a plateau."""

    def __init__(self, run_dir: str, state: RunState, *, patience: int) -> None:
        super().__init__()
        self.run_dir, self.state, self.patience = run_dir, state, patience

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        state = self.state
        for key, value in logs.items():
            state.history.setdefault(key, []).append(float(value))
        self._save("last.keras")
        val_loss = float(logs.get("val_loss", np.inf))
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.wait = val_loss, epoch + 1, 0
            self._copy("last.keras", "best.keras")
        else:
            state.wait += 1
        state.epochs_done = epoch + 1
        if state.wait >= self.patience:
            state.stopped_early = True
            self.model.stop_training = True
            logger.info("early stop: no lower validation loss for %d epochs", state.wait)
        state.save(self.run_dir)

    def _save(self, name: str) -> None:
        tmp = os.path.join(self.run_dir, "tmp-" + name)
        self.model.save(tmp)
        os.replace(tmp, os.path.join(self.run_dir, name))  # never a half-written checkpoint

    def _copy(self, source: str, name: str) -> None:
        tmp = os.path.join(self.run_dir, "tmp-" + name)
        shutil.copyfile(os.path.join(self.run_dir, source), tmp)
        os.replace(tmp, os.path.join(self.run_dir, name))
