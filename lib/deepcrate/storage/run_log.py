"""The warehouse's published runs: which version of every table and folder belongs together.

Layout::

    WH/_runs/00000001.json ...   one record per published run; the highest number is current
    WH/_runs/draft.json          what a writing job has committed but not yet published

A job commits each table it writes as a new Delta version, then publishes all of them
at once by writing the next record. Writing that one file, only if it does not exist
yet, is the atomic step: a reader resolves every table through one record, so it sees
the tables of one run, never a mix. A crash before the record leaves readers on the
previous run; the committed versions wait in the draft for the next writing job.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field

from deepcrate.errors import WarehouseError
from deepcrate.models.store import MODELS
from deepcrate.storage import files
from deepcrate.vectors.faiss_index import INDEX

RUNS = "_runs"
DRAFT = "draft.json"
VACUUM = "vacuum.json"  # the oldest run whose files vacuum kept
NOT_TABLES = {MODELS, INDEX}  # the warehouse's folders of files, not tables: a run records them as folders


@dataclass(frozen=True)
class TableVersion:
    """One table as a run left it."""

    version: int  # the Delta version
    run: str  # the job run that wrote it (what ``Warehouse.version`` returns)
    folder: str  # its files and ``_deepcrate.json``, relative to the table ("" = the table's own folder)
    rows: int


@dataclass(frozen=True)
class RunRecord:
    """A published run: every table and folder a reader sees while it is current."""

    number: int
    time: str
    command: str
    tables: dict[str, TableVersion] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)  # name (models/<v>, index) -> path under the root
    changed: list[str] = field(default_factory=list)  # what this run published
    base: int = 0  # the run that was current when the job that wrote it began
    config: dict = field(default_factory=dict)  # the resolved settings the job ran with ({}: not recorded)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, where: str) -> RunRecord:
        try:
            raw = json.loads(text)
            tables = {name: TableVersion(**entry) for name, entry in raw.pop("tables").items()}
            return cls(tables=tables, **raw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise WarehouseError(f"{where}: not a run record ({exc})") from None

    def with_changes(self, *, number: int, command: str, tables: dict[str, TableVersion],
                     folders: dict[str, str], changed: list[str], base: int = 0,
                     config: dict | None = None) -> RunRecord:
        """The record that follows this one when ``tables`` and ``folders`` are replaced."""
        return RunRecord(number=number, time=now(), command=command, tables={**self.tables, **tables},
                         folders={**self.folders, **folders}, changed=list(dict.fromkeys(changed)), base=base,
                         config=config or {})


EMPTY = RunRecord(number=0, time="", command="")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class RunLog:
    """The records under ``WH/_runs``, read and written with pyarrow (no Spark needed)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.folder = f"{root}/{RUNS}"

    def numbers(self) -> list[int]:
        """The published runs' numbers, oldest first."""
        try:
            infos = files.listing(self.folder)
        except OSError as exc:
            raise WarehouseError(f"warehouse {self.root}: cannot list {self.folder}: {exc}") from None
        return sorted(int(info.base_name[:-5]) for info in infos
                      if info.base_name.endswith(".json") and info.base_name[:-5].isdigit())

    def current(self) -> RunRecord | None:
        """The newest published run, or None when the warehouse has none (new, or plain Parquet)."""
        numbers = self.numbers()
        return self.get(numbers[-1]) if numbers else None

    def get(self, number: int) -> RunRecord:
        text = self._read(_name(number))
        if text is None:
            raise WarehouseError(f"warehouse {self.root}: no run {number} (runs: {_ranges(self.numbers())})")
        return RunRecord.from_json(text, where=f"{self.folder}/{_name(number)}")

    def history(self) -> list[RunRecord]:
        """Every published run, newest first."""
        return [self.get(number) for number in reversed(self.numbers())]

    def publish(self, record: RunRecord) -> None:
        """Write ``record`` as run ``record.number``; refused when that number is taken (another job
        published since this one began)."""
        if not self._create_new(_name(record.number), record.to_json()):
            raise WarehouseError(
                f"warehouse {self.root}: another job published run {record.number} while this {record.command} ran; "
                f"this job's tables were not published (run it again)")

    def draft(self) -> RunRecord | None:
        text = self._read(DRAFT)
        return None if text is None else RunRecord.from_json(text, where=f"{self.folder}/{DRAFT}")

    def write_draft(self, record: RunRecord) -> None:
        self._write(DRAFT, record.to_json())

    def drop_draft(self) -> None:
        self._delete(DRAFT)

    def oldest_kept(self) -> int:
        """Runs older than this had their files vacuumed (0: none were)."""
        text = self._read(VACUUM)
        return int(json.loads(text)["oldest_kept"]) if text else 0

    def mark_vacuumed(self, oldest_kept: int) -> None:
        self._write(VACUUM, json.dumps({"oldest_kept": oldest_kept, "time": now()}))

    # -- files -------------------------------------------------------------------
    def _read(self, name: str) -> str | None:
        return files.read_text_if_any(f"{self.folder}/{name}")

    def _write(self, name: str, text: str) -> None:
        files.write_text(f"{self.folder}/{name}", text)

    def _create_new(self, name: str, text: str) -> bool:
        """Write ``name`` only if it does not exist (atomic on local and mounted folders; elsewhere
        one writer at a time is the writer lock's job, see docs/warehouse.md)."""
        return files.create_new(f"{self.folder}/{name}", text)

    def _delete(self, name: str) -> None:
        files.delete(f"{self.folder}/{name}")


def _name(number: int) -> str:
    return f"{number:08d}.json"


def _ranges(numbers: list[int]) -> str:
    return f"{numbers[0]}-{numbers[-1]}" if numbers else "none"

