"""The tables of a warehouse read with pyarrow: no Spark, no JVM, and the checks every reader makes.

A reader resolves every table through one published run (:func:`resolve_view`), reads
exactly the files that run's Delta version names, and checks them first
(:func:`verified_files`): a missing or damaged file is one line naming it, never wrong rows.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs
import pyarrow.parquet as pq

from deepcrate.errors import WarehouseError, first_line
from deepcrate.models.slice_reader import SliceTable
from deepcrate.row_groups import row_group_batches
from deepcrate.storage import files, legacy
from deepcrate.storage.delta_tables import committed_files
from deepcrate.storage.run_log import RunLog, RunRecord, TableVersion
from deepcrate.storage.schemas import Table
from deepcrate.storage.table_metadata import METADATA_FILE, TableMetadata, metadata_class
from deepcrate.uris import filesystem_and_path, warehouse_uri
from deepcrate.vectors.scratch import scratch_array
from deepcrate.vectors.similarity import list_column_matrix

# Spark writes a CRC with every Parquet page but neither Spark nor pyarrow checks it by default: a
# damaged page then reads as wrong numbers, silently. Checked, it is an error naming the file.
_PARQUET = ds.ParquetFileFormat(
    default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True))


class ArrowTables:
    """The tables of a warehouse read with pyarrow: no Spark, no JVM.

    For the readers that run outside Spark (``recommend``, training's input pipeline) and
    the stages that read a few columns into the driver. ``view`` is the run whose tables
    are read (None: no run is published yet); ``folder_of``, when given, names the folder
    of each table instead (a run's staged tables).
    """

    def __init__(self, root: str, view: RunRecord | None, *,
                 folder_of: Callable[[str], str] | None = None) -> None:
        self.root = warehouse_uri(root)
        self.view = view
        self._folder_of = folder_of

    @classmethod
    def current(cls, root: str, *, as_of: int | None = None) -> ArrowTables:
        """The tables of the current run (or of run ``as_of``)."""
        return cls(root, resolve_view(RunLog(warehouse_uri(root)), as_of=as_of))

    @classmethod
    def local(cls, warehouse: str, *, reader: str) -> ArrowTables:
        """The current tables of a local warehouse, for ``reader`` (a command that runs without Spark)."""
        uri = warehouse_uri(warehouse)
        if not uri.startswith("file:"):
            raise WarehouseError(f"{reader} reads local warehouses; copy {uri} locally first")
        return cls.current(files.warehouse_folder(warehouse))

    @property
    def staged(self) -> bool:
        return self._folder_of is not None

    def exists(self, name: str) -> bool:
        if self.staged:
            filesystem, path = filesystem_and_path(f"{self.folder(name)}/_SUCCESS")
            return filesystem.get_file_info(path).type == pyarrow.fs.FileType.File
        return self.view is not None and (name in self.view.tables or name in self.view.folders)

    def folder(self, name: str) -> str:
        """The URI of published folder ``name`` (``index``, ``models/<version>``), or of a table."""
        if self.staged:
            return self._folder_of(name)
        if self.view is not None and name in self.view.folders:
            return f"{self.root}/{self.view.folders[name]}"
        return f"{self.root}/{name}"

    def metadata(self, name: Table) -> TableMetadata:
        """What the stage that wrote table ``name`` recorded with it (its settings), typed per table."""
        folder = self.folder(name)
        if not self.staged and self.view is not None and name in self.view.tables and self.view.tables[name].folder:
            folder = f"{folder}/{self.view.tables[name].folder}"
        filesystem, path = filesystem_and_path(f"{folder}/{METADATA_FILE}")
        try:
            with filesystem.open_input_stream(path) as stream:
                text = stream.read().decode()
        except (OSError, ValueError) as exc:
            raise WarehouseError(f"table {name} in {self.root}: its metadata cannot be read: {first_line(exc)}") from None
        return metadata_class(name).from_json(text, where=f"table {name} in {self.root}")

    def dataset(self, name: Table) -> ds.Dataset:
        """The Parquet files of table ``name`` (exactly its committed version) as one pyarrow dataset."""
        if not self.exists(name):
            if self.view is None and not self.staged:
                legacy.refuse_unconverted(self.root)
            raise WarehouseError(f"warehouse {self.root}: no table {name!r}")
        try:
            if self.staged:
                filesystem, path = filesystem_and_path(self.folder(name))
                return ds.dataset(path, format=_PARQUET, filesystem=filesystem)
            files = verified_files(self.root, name, self.view.tables[name])
            filesystem, _ = filesystem_and_path(self.root)
            return ds.dataset([filesystem_and_path(uri)[1] for uri in files], format=_PARQUET, filesystem=filesystem)
        except (OSError, pa.ArrowInvalid) as exc:
            raise WarehouseError(f"table {name} in {self.root}: cannot be read: {exc}") from None

    def read(self, name: Table, *, columns: list[str] | None = None, where: ds.Expression | None = None) -> pa.Table:
        """Columns ``columns`` (all when None) of the rows matching ``where``."""
        dataset = self.dataset(name)
        try:
            return dataset.to_table(columns=columns, filter=where)
        except (OSError, pa.ArrowInvalid) as exc:
            raise WarehouseError(f"table {name} in {self.root}: {_damaged_file(dataset) or 'cannot be read'}: "
                                 f"{first_line(exc)}; restore it, or roll back (deepcrate rollback)") from None
        finally:
            # what was decoded and filtered out: Arrow's allocator keeps it for the process otherwise
            pa.default_memory_pool().release_unused()

    def null_count(self, name: Table, column: str) -> int:
        """Rows of table ``name`` whose ``column`` is null, the column streamed a batch at a time."""
        dataset = self.dataset(name)
        try:
            return sum(batch.column(column).null_count for batch in row_group_batches(dataset, [column]))
        except (OSError, pa.ArrowInvalid) as exc:
            raise WarehouseError(f"table {name} in {self.root}: {_damaged_file(dataset) or 'cannot be read'}: "
                                 f"{first_line(exc)}; restore it, or roll back (deepcrate rollback)") from None

    def matrix(self, name: Table, column: str, *, keys: pa.Array, dtype: type = np.float32) -> np.ndarray:
        """Column ``column`` of table ``name`` (float lists of one length) as one matrix: row ``i`` is the
        list of the row whose ``song_id`` is ``keys[i]``; placed a row group at a time
        (:meth:`matrix_blocks`), so a reader holds the matrix and one row group, not the table as
        well (nor a list of parts to stack). The matrix is a scratch array
        (:func:`deepcrate.vectors.scratch.scratch_array`): it grows with the songs asked for, so it
        is the page cache's while memory allows, not the process's own.

        Raises
        ------
        WarehouseError
            As :meth:`matrix_blocks`.
        """
        out: np.ndarray | None = None
        for rows, values in self.matrix_blocks(name, column, keys=keys, dtype=dtype):
            if out is None:
                out = scratch_array((len(keys), values.shape[1]), dtype)
            out[rows] = values
        return out if out is not None else np.zeros((0, 0), dtype)

    def matrix_blocks(self, name: Table, column: str, *, keys: pa.Array, dtype: type = np.float32
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Column ``column`` of table ``name`` (float lists of one length) for the songs ``keys``, a row
        group at a time (:func:`row_group_batches`), in the table's order: (the positions in ``keys``
        of the block's songs, their lists as one matrix). Memory: one row group.

        Raises
        ------
        WarehouseError
            A key has no row (raised once every block is given), a row's list is null, or the
            lists differ in length.
        """
        where = f"table {name} in {self.root}"
        width: int | None = None
        found = np.zeros(len(keys), dtype=bool)
        dataset = self.dataset(name)
        try:
            for batch in row_group_batches(dataset, ["song_id", column]):
                rows = pc.index_in(batch.column("song_id"), value_set=keys).fill_null(-1).to_numpy(zero_copy_only=False)
                kept = rows >= 0
                if not kept.any():
                    continue
                lists = batch.column(column).filter(pa.array(kept))
                if lists.null_count:
                    raise WarehouseError(f"{where}: {lists.null_count} rows without {column}")
                values = list_column_matrix(lists, dtype=dtype)
                width = values.shape[1] if width is None else width
                if values.shape[1] != width:
                    raise WarehouseError(f"{where}: {column} of {values.shape[1]} and of {width} values")
                positions = rows[kept]
                found[positions] = True
                yield positions, values
        except (OSError, pa.ArrowInvalid) as exc:
            raise WarehouseError(f"{where}: {_damaged_file(dataset) or 'cannot be read'}: {first_line(exc)}; "
                                 f"restore it, or roll back (deepcrate rollback)") from None
        if not found.all():
            raise WarehouseError(f"{where}: no row for {int((~found).sum())} of {len(keys)} songs "
                                 f"(e.g. {keys[int(np.argmin(found))]})")

    def has_columns(self, name: Table, columns: Sequence[str]) -> bool:
        """Whether table ``name`` has every one of ``columns`` (a table an older stage wrote may lack some)."""
        return set(columns) <= set(self.dataset(name).schema.names)

    def read_pandas(self, name: Table, *, columns: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
        """``columns`` and ``optional`` of table ``name``; an optional column the table lacks (written by an
        older stage) is there, all None."""
        present = set(self.dataset(name).schema.names)
        frame = self.read(name, columns=[*columns, *(c for c in optional if c in present)]).to_pandas()
        for column in optional:
            if column not in present:
                frame[column] = None
        return frame

    def slice_table(self, *, image_shape: tuple[int, int]) -> SliceTable:
        """The ``slices`` table as training streams it (:class:`~deepcrate.models.slice_reader.SliceTable`)."""
        return SliceTable(self.dataset(Table.SLICES), image_shape=image_shape, uri=f"{self.root}/{Table.SLICES}")


def _damaged_file(dataset: ds.Dataset) -> str | None:
    """'file F', the first of ``dataset``'s files that cannot be read whole (pyarrow's errors do not say)."""
    for fragment in dataset.get_fragments():
        try:
            fragment.to_table()
        except (OSError, pa.ArrowInvalid):
            return f"file {fragment.path}"
    return None



def unreadable_file_error(exc: BaseException) -> WarehouseError | None:
    """The one line for a Spark job that failed reading a damaged Parquet file; None for other failures.

    Spark raises such a failure as a ~10 KB Java stack in which the file and the cause are
    two lines among hundreds (``FAILED_READ_FILE``).
    """
    text = str(exc)
    found = re.search(r"Encountered error while reading file (.+?)\.?\s+SQLSTATE", text)
    if found is None:
        return None
    causes = re.findall(r"^Caused by: ([\w.$]+)(?:: (.*))?$", text, flags=re.MULTILINE)
    cause = f"{causes[-1][0].rsplit('.', 1)[-1]}: {causes[-1][1]}" if causes else "unknown cause"
    return WarehouseError(f"file {found.group(1)} cannot be read ({cause}); restore it, "
                          f"or roll back the warehouse (deepcrate rollback)")


def verified_files(root: str, name: str, entry: TableVersion) -> list[str]:
    """The files of table ``name`` as ``entry`` names its version, checked against what the run
    recorded: every file there, readable Parquet (its footer), the rows adding up.

    Raises
    ------
    WarehouseError
        One line naming the table and the missing or unreadable file, or the rows that differ.
    """
    files = committed_files(f"{root}/{name}", entry.version, name=name)
    filesystem, _ = filesystem_and_path(root)
    paths = [filesystem_and_path(uri)[1] for uri in files]
    missing = [uri for uri, info in zip(files, filesystem.get_file_info(paths), strict=True)
               if info.type != pyarrow.fs.FileType.File]
    if missing:
        raise WarehouseError(f"table {name} in {root}: {len(missing)} of its {len(files)} files are missing "
                             f"(first: {missing[0]}); restore them, or roll back (deepcrate rollback)")
    rows = 0
    for uri, path in zip(files, paths, strict=True):
        try:
            rows += pq.read_metadata(path, filesystem=filesystem).num_rows
        except (OSError, pa.ArrowInvalid) as exc:
            raise WarehouseError(f"table {name} in {root}: file {uri} is not readable Parquet: "
                                 f"{first_line(exc)}") from None
    if rows != entry.rows:
        raise WarehouseError(f"table {name} in {root}: its files hold {rows} rows, the run that published it "
                             f"recorded {entry.rows}")
    return files


def resolve_view(runs: RunLog, *, as_of: int | None = None) -> RunRecord | None:
    """The run a reader sees: ``as_of`` when given, else the current one (None: no Delta runs yet)."""
    if as_of is None:
        return runs.current()
    if as_of < 1:
        raise WarehouseError(f"warehouse {runs.root}: there is no run {as_of} (runs are numbered from 1; "
                             f"deepcrate history lists them)")
    if as_of < runs.oldest_kept():
        raise WarehouseError(f"warehouse {runs.root}: the files of run {as_of} were vacuumed "
                             f"(runs from {runs.oldest_kept()} on are kept)")
    return runs.get(as_of)
