"""The stage protocol: what a stage of the rebuild depends on, what it publishes, how it runs.

A stage's *fingerprint* is a digest of everything its output depends on: the
fingerprints of the stages it comes after, the settings that change its output
(:meth:`Stage.settings`) and anything it reads from outside the warehouse
(:meth:`Stage.inputs`). After a stage has published, the warehouse records that
fingerprint with the versions of what it published (:func:`record_stage`);
a rebuild skips a stage whose record holds the fingerprint it would have now and whose
outputs are still the ones recorded (:func:`current_record`), so another job
that replaced a table makes the stage run again.

Adding a stage is one new module with a :class:`Stage` and one line in
``deepcrate.stages.rebuild.STAGES``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from deepcrate.config import Settings, to_mapping
from deepcrate.errors import WarehouseError
from deepcrate.models.store import ModelFolder
from deepcrate.storage import files
from deepcrate.storage.warehouse import Warehouse

logger = logging.getLogger(__name__)

RECORDS = "_stages"  # WH/_stages/<stage>.json: what each stage last published, and from which inputs


@dataclass
class RebuildContext:
    """What every stage of one rebuild shares."""

    spark: SparkSession
    store: Warehouse
    audio: str
    manifest: str | None
    settings: Settings
    model: str | None = None  # --model: a given model folder or version; training is then skipped
    force: bool = False  # run every stage from scratch
    allow_empty: bool = False
    fingerprints: dict[str, str] = field(default_factory=dict)  # stage name -> its fingerprint in this rebuild
    model_folder: ModelFolder | None = None  # the model the stages after training use

    @property
    def warehouse(self) -> str:
        return self.store.root


class Stage:
    """One stage of the rebuild. Subclasses set the class attributes and override :meth:`run`."""

    name: str = ""
    after: tuple[str, ...] = ()  # the stages whose output this one reads
    writes: tuple[str, ...] = ()  # what it publishes (tables, folders); the record holds their versions

    def check(self, context: RebuildContext) -> None:
        """Refuse, before any stage runs, what would make this one fail later (a missing model...)."""

    def settings(self, settings: Settings) -> Any:
        """The settings that change this stage's output (not those that only change its speed)."""
        return None

    def inputs(self, context: RebuildContext) -> Any:
        """What this stage reads from outside the warehouse (e.g. the audio folder's listing)."""
        return None

    def not_needed(self, context: RebuildContext) -> str | None:
        """Why this rebuild has no use for this stage (it is then left out), or None."""
        return None

    def given(self, context: RebuildContext) -> tuple[str, str] | None:
        """(fingerprint, detail) when the user supplied this stage's output (``--model``)."""
        return None

    def fingerprint(self, context: RebuildContext) -> str:
        return digest(self.name, [context.fingerprints[name] for name in self.after],
                      self.settings(context.settings), self.inputs(context))

    def outputs(self, context: RebuildContext) -> list[str]:
        """The names whose published versions the record holds (by default :attr:`writes`)."""
        return list(self.writes)

    def is_up_to_date(self, context: RebuildContext, fingerprint: str) -> bool:
        return current_record(context.store, self.name, fingerprint=fingerprint) is not None

    def passed_on(self, context: RebuildContext, fingerprint: str) -> str:
        """The fingerprint the stages after this one build on (by default its own)."""
        return fingerprint

    def run(self, context: RebuildContext, *, fingerprint: str) -> Outcome:
        """Do the work and publish it."""
        raise NotImplementedError


@dataclass(frozen=True)
class Outcome:
    """What a stage's run did: one line for the summary, and whether it published its outputs
    (a stage that had nothing to publish is not recorded, so it runs again next time)."""

    detail: str
    published: bool = True


def digest(*parts: Any) -> str:
    """A short stable digest of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def without(section: Any, ignored: tuple[str, ...]) -> dict[str, Any]:
    """A settings section as a mapping, less the keys that only change speed or progress."""
    return {key: value for key, value in to_mapping(section).items() if key not in ignored}


def record_stage(store: Warehouse, stage: str, *, fingerprint: str, outputs: list[str]) -> None:
    """Record that ``stage`` published ``outputs`` (their current versions) from inputs with
    ``fingerprint``; written after the publish, so a crash in between only repeats the stage."""
    record = {"stage": stage, "fingerprint": fingerprint,
              "versions": {name: store.version(name) for name in outputs},
              "recorded": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    final = f"{store.root}/{RECORDS}/{stage}.json"
    draft = f"{final}.{uuid.uuid4().hex[:8]}"
    files.write_text(draft, json.dumps(record, indent=2, sort_keys=True))
    files.move(draft, final)  # replaces the record before in one step


def current_record(store: Warehouse, stage: str, *, fingerprint: str) -> dict[str, Any] | None:
    """The record of ``stage`` when it last ran on inputs with ``fingerprint`` and what it
    published then is still what is published now (no other job replaced it since); else None."""
    uri = f"{store.root}/{RECORDS}/{stage}.json"
    if not files.exists(uri):
        return None
    try:
        record = json.loads(files.read_text(uri))
    except (ValueError, WarehouseError):
        logger.warning("warehouse %s: the record of stage %s is unreadable; it will run again", store.root, stage)
        return None
    if record.get("fingerprint") != fingerprint or not record.get("versions"):
        return None
    current = all(version is not None and store.version(name) == version
                  for name, version in record["versions"].items())
    return record if current else None
