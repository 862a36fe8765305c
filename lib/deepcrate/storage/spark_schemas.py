"""The tables' Spark schemas, derived from their Arrow definitions (:mod:`deepcrate.storage.schemas`),
and the check every frame passes before it is written."""
from __future__ import annotations

import functools

from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import DataType, StringType, StructField, StructType

from deepcrate.errors import WarehouseError
from deepcrate.storage.schemas import EXTENSIBLE, TABLES, Table


@functools.cache
def _derived(schema) -> StructType:
    return from_arrow_schema(schema)


def spark_schema(table: Table | str, *, extras: tuple[str, ...] = ()) -> StructType:
    """The Spark schema of ``table``, with string columns ``extras`` after its fixed ones."""
    schema = _derived(TABLES[table])
    return StructType(schema.fields + [StructField(name, StringType(), True) for name in extras]) if extras else schema


def validate(df: DataFrame, *, table: str) -> DataFrame:
    """Check ``df`` against the schema of ``table`` before it is written.

    The fixed columns must come first, in order, with the defined types; only
    extensible tables may add string columns after them.

    Raises
    ------
    WarehouseError
        Naming the first column that does not match.
    """
    expected = spark_schema(table)
    actual = df.schema.fields
    for position, want in enumerate(expected.fields):
        if position >= len(actual):
            raise WarehouseError(f"table {table}: column {want.name!r} is missing")
        got = actual[position]
        if got.name != want.name or not _same_type(got.dataType, want.dataType):
            raise WarehouseError(
                f"table {table}: column {position} should be {want.name} "
                f"{want.dataType.simpleString()}, got {got.name} {got.dataType.simpleString()}"
            )
    extras = actual[len(expected.fields) :]
    if extras and table not in EXTENSIBLE:
        raise WarehouseError(f"table {table}: unexpected columns {[f.name for f in extras]}")
    for field in extras:
        if not isinstance(field.dataType, StringType):
            raise WarehouseError(f"table {table}: extra column {field.name!r} must be a string")
    return df


def _same_type(got: DataType, want: DataType) -> bool:
    return got.simpleString() == want.simpleString()
