"""The door of ``deepcrate sql``: hostile statements are refused before anything runs, read-only ones pass.

The hostile side is generated: every way found to write, set, run a program, read a file or call
Java, placed in every clause that holds an expression or a statement. Canaries say that none of
them ran: a Java system property reflection would set, folders a write would make, a file an
external program would touch. The read-only side is Spark's own documentation: the example of
every built-in function deepcrate allows must pass.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from deepcrate.errors import InputError
from deepcrate.query.sql_guard import FUNCTION_GROUPS, check_read_only, packaged_functions, registry_functions

TABLES = ("songs", "slices")

# Expressions that call Java, parse XML or load classes, spelled every way the parser accepts.
CALLS = [
    "reflect('java.lang.System', 'setProperty', 'deepcrate.canary', 'reflect')",
    "java_method('java.lang.System', 'setProperty', 'deepcrate.canary', 'java_method')",
    "try_reflect('java.lang.System', 'setProperty', 'deepcrate.canary', 'try_reflect')",
    "system.builtin.reflect('java.lang.System', 'setProperty', 'deepcrate.canary', 'builtin')",
    "IDENTIFIER('java_method')('java.lang.System', 'setProperty', 'deepcrate.canary', 'identifier')",
    "IDENTIFIER('ref' || 'lect')('java.lang.System', 'setProperty', 'deepcrate.canary', 'concat')",
    "`REFLECT`('java.lang.System', 'setProperty', 'deepcrate.canary', 'quoted')",
    "xpath_string('<a>1</a>', 'a')",
]
# Every clause that holds an expression, around one call ({e}).
CLAUSES = [
    "SELECT {e}",
    "SELECT {e} AS innocent FROM songs",
    "SELECT * FROM songs WHERE {e} IS NOT NULL",
    "SELECT genre FROM songs GROUP BY genre HAVING max({e}) IS NOT NULL",
    "SELECT genre FROM songs GROUP BY {e}, genre",
    "SELECT * FROM songs ORDER BY {e}",
    "SELECT song_id, count(*) OVER w FROM songs WINDOW w AS (ORDER BY {e})",
    "SELECT count(*) OVER (PARTITION BY {e}) FROM songs",
    "SELECT transform(array(1, 2), x -> concat(x, {e}))",
    "SELECT * FROM songs LATERAL VIEW explode(array({e})) t AS c",
    "SELECT (SELECT {e})",
    "SELECT * FROM songs WHERE genre IN (SELECT {e})",
    "SELECT * FROM songs WHERE EXISTS (SELECT 1 FROM slices WHERE {e} IS NOT NULL)",
    "WITH c AS (SELECT {e} AS x) SELECT * FROM c",
    "SELECT * FROM (SELECT * FROM (SELECT {e} AS x) a) b",
    "SELECT * FROM songs a JOIN slices b ON a.song_id = b.song_id AND {e} IS NOT NULL",
    "SELECT * FROM songs QUALIFY {e} IS NOT NULL",
    "VALUES ({e})",
    "SELECT count(*) FILTER (WHERE {e} IS NOT NULL) FROM songs",
    "SELECT song_id FROM songs UNION ALL SELECT {e}",
    "SELECT * FROM songs |> EXTEND {e} AS x",
    "EXPLAIN SELECT {e}",
    "DESCRIBE QUERY SELECT {e}",
    "SELECT * FROM songs, LATERAL (SELECT {e} AS x)",
    "SELECT max_by(song_id, {e}) FROM songs",
    "SELECT /*+ REPARTITION(3, {e}) */ * FROM songs",
    "SELECT * FROM songs DISTRIBUTE BY {e} SORT BY {e}",
    "SELECT * FROM songs LIMIT length({e})",
    "SELECT * FROM range(length({e}))",
    "SELECT * FROM explode(array({e}))",
    "SELECT * FROM songs PIVOT (count(*) FOR genre IN ({e}))",
    "SELECT aggregate(array(1), '', (acc, x) -> concat(acc, {e}))",
    "SELECT CASE WHEN genre = 'house' THEN {e} END FROM songs",
    "SELECT named_struct('a', {e}).a",
    "SELECT * FROM songs WHERE genre IN ('a', {e})",
    "SELECT * FROM songs |> WHERE {e} IS NOT NULL",
    "SELECT * FROM songs |> AGGREGATE count({e})",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + length({e}) FROM r WHERE n < 3) SELECT * FROM r",
]


def statements(canary: Path) -> list[str]:
    """Whole statements that write, set, declare, run a program or read outside the tables."""
    out = canary / "written"
    wh_songs = canary / "songs-copy"
    inner = [f"INSERT OVERWRITE DIRECTORY ''{out}'' USING parquet SELECT 1 AS x", "SET spark.sql.ansi.enabled=false",
             "ADD JAR /nonexistent.jar", "CACHE TABLE songs", "DROP VIEW songs",
             "SELECT reflect(''java.lang.System'', ''setProperty'', ''deepcrate.canary'', ''inner'')"]
    return [
        *[f"EXECUTE IMMEDIATE '{s}'" for s in inner],
        *[f"EXPLAIN EXECUTE IMMEDIATE '{s}'" for s in inner[:2]],
        "EXECUTE IMMEDIATE 'SELECT ' || 'reflect(''java.lang.System'', ''getenv'', ''PATH'')'",
        f"INSERT OVERWRITE DIRECTORY '{out}' USING parquet SELECT 1 AS x",
        f"FROM songs INSERT OVERWRITE DIRECTORY '{out}' USING parquet SELECT song_id",
        f"WITH a AS (SELECT 1 AS x) INSERT OVERWRITE DIRECTORY '{out}' USING parquet SELECT * FROM a",
        f"CREATE TABLE t USING parquet LOCATION '{wh_songs}' AS SELECT * FROM songs",
        "CREATE TEMPORARY VIEW v AS SELECT 1 AS x",
        "CREATE OR REPLACE TEMPORARY VIEW songs AS SELECT 1 AS song_id",
        "CREATE TEMPORARY FUNCTION f AS 'java.lang.String'",
        "ALTER VIEW songs AS SELECT 1 AS x",
        "DROP VIEW songs",
        "INSERT INTO songs SELECT * FROM songs",
        "DELETE FROM songs",
        "UPDATE songs SET genre = 'x'",
        "MERGE INTO songs USING songs s ON false WHEN NOT MATCHED THEN INSERT *",
        "TRUNCATE TABLE songs",
        "LOAD DATA LOCAL INPATH '/etc/hostname' INTO TABLE songs",
        "SET spark.sql.runSQLOnFiles=true",
        "SET",
        "RESET",
        "ADD JAR /nonexistent.jar",
        "ADD FILE /etc/hostname",
        "LIST FILES",
        "CACHE TABLE songs",
        "CACHE LAZY TABLE c AS SELECT 1",
        "UNCACHE TABLE songs",
        "CLEAR CACHE",
        "REFRESH TABLE songs",
        "REFRESH '/etc'",
        "ANALYZE TABLE songs COMPUTE STATISTICS",
        "MSCK REPAIR TABLE songs",
        "USE other",
        "CREATE DATABASE other",
        "DECLARE v INT DEFAULT 1",
        "SET VAR v = 2",
        "BEGIN SELECT 1; END",
        "BEGIN INSERT INTO songs SELECT * FROM songs; END",
        f"SELECT TRANSFORM(song_id) USING 'touch {canary / 'ran'}' AS (x) FROM songs",
        f"SELECT TRANSFORM(*) USING 'touch {canary / 'ran'}' FROM songs",
        "SELECT * FROM text.`/etc/passwd`",
        "SELECT * FROM parquet.`/tmp`",
        "SELECT * FROM songs WHERE genre IN (SELECT value FROM text.`/etc/hostname`)",
        "SELECT * FROM IDENTIFIER('text.`/etc/hostname`')",
        "SELECT * FROM spark_catalog.default.songs",
        "SELECT * FROM global_temp.songs",
        "SHOW CREATE TABLE songs",
        "EXPLAIN INSERT INTO songs SELECT * FROM songs",
        "EXPLAIN CREATE TABLE t AS SELECT 1",
        "DESCRIBE QUERY SELECT * FROM text.`/etc/hostname`",
        "DESCRIBE parquet.`/tmp`",
        "SHOW COLUMNS IN parquet.`/tmp`",
    ]


def hostile(canary: Path) -> list[str]:
    return [clause.format(e=call) for clause in CLAUSES for call in CALLS] + statements(canary)


def test_at_least_a_hundred_hostile_statements_are_refused_and_none_of_them_ran(spark, tmp_path):
    spark.range(3).selectExpr("cast(id AS string) AS song_id", "'house' AS genre").createOrReplaceTempView("songs")
    spark.range(3).selectExpr("cast(id AS string) AS song_id", "id AS slice_idx").createOrReplaceTempView("slices")
    canary = tmp_path / "canary"
    canary.mkdir()
    cases = hostile(canary)
    assert len(cases) >= 100
    slipped = []
    for query in cases:
        try:
            check_read_only(spark, query, tables=TABLES)
            slipped.append(query)
        except InputError as exc:
            message = str(exc)
            assert "\n" not in message
            if not message.startswith(("refused: ", "query failed: ")):
                slipped.append(f"{query} -> {message}")
    assert slipped == []
    assert spark._jvm.java.lang.System.getProperty("deepcrate.canary") is None  # no reflection ran
    assert sorted(canary.iterdir()) == []  # no directory written, no program touched a file
    assert spark.sql("SELECT count(*) AS n FROM songs").first().n == 3  # the view was not replaced


def test_a_refusal_names_what_it_refused(spark):
    spark.range(1).selectExpr("'a' AS song_id").createOrReplaceTempView("songs")
    cases = {
        "EXECUTE IMMEDIATE 'SELECT 1'": "refused: EXECUTE IMMEDIATE is not read-only",
        "SELECT IDENTIFIER('java_method')('java.lang.System', 'getenv', 'PATH')":
            "refused: reflect() calls a Java method by name",
        "SELECT try_reflect('java.lang.System', 'getenv', 'PATH')":
            "refused: try_reflect() calls a Java method by name",
        "SELECT xpath_int('<a>1</a>', 'a')": "refused: xpath_int() parses XML",
        "SELECT TRANSFORM(song_id) USING 'cat' FROM songs": "refused: TRANSFORM ... USING (an external program)",
        "SELECT * FROM text.`/etc/hostname`": "refused: text./etc/hostname is not a table of the warehouse",
        "DECLARE v INT": "refused: CREATE VARIABLE is not read-only",
    }
    for query, expected in cases.items():
        with pytest.raises(InputError) as caught:
            check_read_only(spark, query, tables=["songs"])
        assert str(caught.value).startswith(expected), (query, str(caught.value))


def _documented_examples(spark, *, groups) -> list[tuple[str, str]]:
    """(function, its first documented example statement) for Spark's built-in functions of ``groups``."""
    registry = getattr(spark._jvm.org.apache.spark.sql.catalyst.analysis,
                       "FunctionRegistry$").__getattr__("MODULE$").builtin()
    names = registry.listFunction()
    examples = []
    for i in range(names.size()):
        info = registry.lookupFunction(names.apply(i)).get()
        found = re.search(r">\s*(SELECT .*?);", info.getExamples(), re.DOTALL)
        if info.getGroup() in groups and found:  # the first example of each: the suite's time is counted
            examples.append((names.apply(i).funcName(), " ".join(found.group(1).split())))
    return examples


def test_the_packaged_function_list_is_the_registry_of_the_spark_installed(spark):
    """The door decides by the packaged list (no ~1 s of py4j calls on every one-shot query); it
    must be the very registry it stands for, and a list of another Spark release is not used."""
    registry = registry_functions(spark)
    assert len(registry) > 500 and ("reflect", "CallMethodViaReflection", "misc_funcs") in registry
    assert packaged_functions(spark.version) == registry, (
        "lib/deepcrate/query/spark_functions.json is not this Spark's registry: "
        "run python -m deepcrate.query.sql_guard")
    assert packaged_functions("3.5.0") is None


def test_every_allowed_built_in_function_passes_with_its_documented_example(spark):
    examples = _documented_examples(spark, groups=FUNCTION_GROUPS - {"misc_funcs"})
    examples += [(f, q) for f, q in _documented_examples(spark, groups={"misc_funcs"})
                 if f not in ("reflect", "java_method", "try_reflect")]
    assert len(examples) > 400
    refused = []
    for function, query in examples:
        try:
            check_read_only(spark, query, tables=[])
        except InputError as exc:
            if str(exc).startswith("refused"):
                refused.append((function, query, str(exc)))
    assert refused == []


def test_the_functions_left_out_are_refused_with_their_own_examples(spark):
    examples = [(f, q) for f, q in _documented_examples(spark, groups={"xml_funcs", "misc_funcs"})
                if f.startswith(("xpath", "reflect", "java_method", "try_reflect", "from_xml"))]
    assert {f for f, _ in examples} >= {"reflect", "java_method", "try_reflect", "xpath", "xpath_string"}
    for _, query in examples:
        with pytest.raises(InputError, match="^refused: "):
            check_read_only(spark, query, tables=[])


@pytest.mark.parametrize("query", [
    "SELECT genre, count(*) AS n FROM songs GROUP BY ALL ORDER BY n DESC",
    "SELECT song_id, rank() OVER (PARTITION BY genre ORDER BY song_id) FROM songs QUALIFY rank() OVER "
    "(PARTITION BY genre ORDER BY song_id) = 1",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "SELECT * FROM songs LATERAL VIEW explode(array(1, 2)) t AS c",
    "SELECT * FROM songs s, LATERAL (SELECT upper(s.genre) AS g)",
    "SELECT * FROM songs PIVOT (count(*) FOR genre IN ('house', 'trance'))",
    "SELECT * FROM songs UNPIVOT (value FOR col IN (genre))",
    "SELECT * FROM songs |> WHERE genre = 'house' |> AGGREGATE count(*) AS n",
    "SELECT /*+ BROADCAST(songs) */ * FROM songs TABLESAMPLE (50 PERCENT) LIMIT ALL",
    "SHOW TABLES", "SHOW VIEWS", "SHOW DATABASES", "SHOW FUNCTIONS LIKE 'arr*'", "DESCRIBE EXTENDED songs",
    "DESCRIBE songs genre", "DESCRIBE FUNCTION EXTENDED explode", "EXPLAIN FORMATTED SELECT count(*) FROM songs",
    "DESCRIBE QUERY SELECT * FROM songs", "SHOW TBLPROPERTIES songs", "SHOW COLUMNS IN songs",
])
def test_read_only_statements_pass(spark, query):
    spark.range(2).selectExpr("cast(id AS string) AS song_id", "'house' AS genre").createOrReplaceTempView("songs")
    check_read_only(spark, query, tables=["songs"])
    spark.sql(query).collect()
