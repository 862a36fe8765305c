"""Warehouses from before Delta: plain Parquet folders, converted once, in place.

The earlier layout kept each table's Parquet files in ``WH/<table>/`` (with ``_SUCCESS`` and
``_deepcrate.json``), model folders in ``WH/models/<version>/`` and the index in
``WH/index/``, and published by renames from ``WH/_staging/<run>/`` (journal ``_PUBLISH``).
The first writing job on such a warehouse finishes a publish the renames left halfway, then
makes each table a Delta table whose first version reads the files already there: nothing is
decoded or rewritten. Readers refuse such a warehouse until then, in one line.
"""
from __future__ import annotations

import json
import logging

from pyarrow.fs import FileType

from deepcrate.errors import WarehouseError
from deepcrate.models.store import MODELS
from deepcrate.storage import files
from deepcrate.storage.delta_tables import commit_files, folder_files
from deepcrate.storage.run_log import TableVersion
from deepcrate.storage.table_metadata import METADATA_FILE, TableMetadata
from deepcrate.vectors.faiss_index import INDEX

logger = logging.getLogger(__name__)

_STAGING = "_staging"
_PUBLISH = "_PUBLISH"
_DONE = "_SUCCESS"


def parquet_tables(root: str) -> list[str]:
    """The tables of warehouse ``root`` in the plain Parquet layout, sorted (none once it has runs)."""
    return sorted(info.base_name for info in files.listing(root)
                  if info.type == FileType.Directory and not info.base_name.startswith(("_", "."))
                  and info.base_name not in (MODELS, INDEX) and files.exists(f"{root}/{info.base_name}/{_DONE}"))


def refuse_unconverted(root: str) -> None:
    """For a reader that found no published run in ``root``: raise when it is a Parquet warehouse that no
    writing job has converted yet."""
    if parquet_tables(root):
        raise WarehouseError(f"warehouse {root} holds tables in the earlier plain-Parquet layout; the next "
                             f"writing job converts them to Delta tables in place (no file is rewritten)")


def convert(root: str, *, command: str) -> tuple[dict[str, TableVersion], dict[str, str]]:
    """Commit every Parquet table of ``root`` (a warehouse with no published run) as the first version of a
    Delta table over the files it has, after finishing a publish the renames left halfway. Returns
    (tables, folders) to publish; both empty when ``root`` is not a Parquet warehouse."""
    _finish_publish(root)
    tables = {}
    for name in parquet_tables(root):
        run = TableMetadata.from_json(files.read_text(f"{root}/{name}/{METADATA_FILE}"),
                                      where=f"table {name} in {root}").run
        found, schema = folder_files(f"{root}/{name}", prefix="")
        version = commit_files(f"{root}/{name}", found, schema=schema, name=name,
                               properties={"deepcrate.run": run, "deepcrate.command": command})
        tables[name] = TableVersion(version=version, run=run, folder="", rows=sum(f.rows for f in found))
    folders = {f"{MODELS}/{info.base_name}": f"{MODELS}/{info.base_name}" for info in files.listing(f"{root}/{MODELS}")
               if files.exists(f"{root}/{MODELS}/{info.base_name}/{_DONE}")}
    if tables and files.exists(f"{root}/{INDEX}/{_DONE}"):
        folders[INDEX] = INDEX
    if tables:
        logger.info("converting the Parquet warehouse %s to Delta tables: %s", root, ", ".join(tables))
    return tables, (folders if tables else {})


def _finish_publish(root: str) -> None:
    """Finish a Parquet publish that renamed part of its tables (its journal lists them all); drop
    runs that never reached their publish."""
    staging = f"{root}/{_STAGING}"
    for info in files.listing(staging):
        run_dir = f"{staging}/{info.base_name}"
        journal = f"{run_dir}/{_PUBLISH}"
        if info.type == FileType.Directory and files.exists(journal):
            logger.warning("finishing the interrupted publish of run %s", info.base_name)
            for name in json.loads(files.read_text(journal)):
                staged, final = f"{run_dir}/{name}", f"{root}/{name}"
                if not files.exists(staged):
                    continue  # renamed before the interruption
                if files.exists(final):
                    files.make_folder(f"{run_dir}/_old/{name}".rsplit("/", 1)[0])
                    files.move(final, f"{run_dir}/_old/{name}")
                files.make_folder(final.rsplit("/", 1)[0])
                files.move(staged, final)
        else:
            logger.info("removing unfinished run %s", info.base_name)
        files.delete(run_dir)
    files.delete(staging)
