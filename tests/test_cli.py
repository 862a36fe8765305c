"""The deepcrate command: ingest and sql as a user runs them."""
import base64
import csv
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from deepcrate.cli import main
from deepcrate.storage.warehouse import Warehouse

from helpers import make_signal, write_audio


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "fresh ü #? 100%"  # issue 43: every reader failed on such a folder
    for n, genre in enumerate(["house", "house", "ambient"]):
        write_audio(root / "audio" / genre / f"song {n}.mp3", make_signal(6 + 6 * n, seed=n))
    (root / "audio" / "ambient" / "broken.mp3").write_text("nope")
    status = main(["ingest", "--audio", str(root / "audio"), "--warehouse", str(root / "wh"),
                   "--set", "ingest.progress_interval_s=1"])
    assert status == 0
    return root / "wh"


def run_sql(capsys, warehouse, query, fmt):
    capsys.readouterr()
    assert main(["sql", "--warehouse", str(warehouse), "--format", fmt, query]) == 0
    return capsys.readouterr().out


def test_ingest_prints_a_summary_and_progress(spark, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    write_audio(tmp_path / "a" / "x.mp3", make_signal(6))
    (tmp_path / "a" / "y.mp3").write_bytes(b"")
    for _ in range(2):  # the warehouse inside the audio folder is not part of the catalogue
        assert main(["ingest", "--audio", str(tmp_path / "a"), "--warehouse", str(tmp_path / "a" / "wh")]) == 0
    out = capsys.readouterr().out.split("ingest finished")[-1]
    assert "1 songs, 1 slices, 1 rejects" in out
    assert "rejected, empty: 1" in out
    assert "files decoded: 1/1" in caplog.text and "2 files, 1 to decode" in caplog.text
    assert "resolved config" in caplog.text


def test_sql_csv_returns_the_table_as_written(spark, warehouse, capsys):
    out = run_sql(capsys, warehouse, "SELECT song_id, genre, n_slices FROM songs ORDER BY song_id", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["song_id", "genre", "n_slices"]
    written = Warehouse(spark, str(warehouse)).read("songs").orderBy("song_id").collect()
    assert rows[1:] == [[r.song_id, r.genre, str(r.n_slices)] for r in written]
    assert sorted(r.n_slices for r in written) == [1, 2, 3]


def test_sql_json_is_one_array_with_lists_and_base64_binaries(spark, warehouse, capsys):
    query = ("SELECT s.song_id, s.slice_idx, s.spectrogram, array(s.slice_idx, 7) AS pair, r.reason "
             "FROM slices s CROSS JOIN rejects r ORDER BY s.song_id, s.slice_idx")
    rows = json.loads(run_sql(capsys, warehouse, query, "json"))
    written = Warehouse(spark, str(warehouse)).read("slices").orderBy("song_id", "slice_idx").collect()
    assert len(rows) == len(written) == 6
    for row, stored in zip(rows, written):
        assert base64.b64decode(row["spectrogram"]) == stored.spectrogram
        assert row["pair"] == [stored.slice_idx, 7]
        assert row["reason"] == "not_audio"
    image = np.frombuffer(base64.b64decode(rows[0]["spectrogram"]), np.uint8)
    assert image.shape == (256 * 256,)


def test_sql_table_format_and_empty_result(spark, warehouse, capsys):
    out = run_sql(capsys, warehouse, "SELECT genre, count(*) AS n FROM songs GROUP BY genre ORDER BY genre", "table")
    lines = out.splitlines()
    assert lines[0].split() == ["genre", "n"]
    assert lines[2].split() == ["ambient", "1"] and lines[3].split() == ["house", "2"]
    assert lines[-1] == "(2 rows)"
    assert json.loads(run_sql(capsys, warehouse, "SELECT * FROM songs WHERE false", "json")) == []


def test_bad_query_and_missing_warehouse_exit_2_with_a_message(spark, warehouse, tmp_path, capsys):
    assert main(["sql", "--warehouse", str(warehouse), "SELECT nope FROM songs"]) == 2
    err = capsys.readouterr().err
    assert "query failed" in err and "Traceback" not in err
    assert main(["sql", "--warehouse", str(tmp_path / "none"), "SELECT 1"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["recommend", "--warehouse", str(tmp_path / "none"), "--song", "x"]) == 2
    assert capsys.readouterr().err == f"deepcrate recommend: error: warehouse {tmp_path / 'none'}: no such folder\n"
    assert main(["ingest", "--audio", str(tmp_path / "none"), "--warehouse", str(tmp_path / "wh")]) == 2
    assert "audio folder" in capsys.readouterr().err
    assert main(["ingest", "--audio", str(tmp_path), "--warehouse", str(tmp_path / "wh"),
                 "--set", "spectrogram.preset=cqt"]) == 2
    assert "spectrogram.preset must be one of" in capsys.readouterr().err


WRITES_AND_PATHS = [
    "INSERT INTO songs SELECT * FROM songs",
    "INSERT OVERWRITE recommendations SELECT * FROM songs WHERE false",
    "INSERT OVERWRITE DIRECTORY '{wh}/slices' USING parquet SELECT 1 AS x",
    "INSERT OVERWRITE DIRECTORY '{outside}' USING parquet SELECT 1 AS x",
    "WITH a AS (SELECT * FROM songs) INSERT INTO songs SELECT * FROM a",
    "CREATE TABLE t USING parquet LOCATION '{outside}' AS SELECT 1 AS x",
    "BEGIN INSERT INTO songs SELECT * FROM songs; DROP VIEW songs; END",
    "DROP VIEW songs",
    "SET spark.sql.runSQLOnFiles=true",
    "CACHE TABLE songs",
    "SELECT * FROM text.`/etc/passwd`",
    "SELECT * FROM songs WHERE genre IN (SELECT value FROM text.`/etc/hostname`)",
    "SELECT reflect('java.lang.System', 'getProperty', 'user.home')",
    "EXPLAIN INSERT INTO songs SELECT * FROM songs",
    # issue 43: statements in a string, reflection by another name or clause
    "EXECUTE IMMEDIATE 'INSERT OVERWRITE DIRECTORY ''{wh}/songs'' USING parquet SELECT 1 AS x'",
    "EXECUTE IMMEDIATE 'INSERT OVERWRITE DIRECTORY ''{outside}'' USING parquet SELECT 1 AS x'",
    "EXPLAIN EXECUTE IMMEDIATE 'INSERT OVERWRITE DIRECTORY ''{outside}'' USING parquet SELECT 1 AS x'",
    "EXECUTE IMMEDIATE 'SET spark.sql.runSQLOnFiles=true'",
    "SELECT IDENTIFIER('java_method')('java.lang.System', 'getenv', 'PATH') AS r",
    "SELECT system.builtin.reflect('java.lang.System', 'getenv', 'PATH') AS r",
    "SELECT try_reflect('java.lang.System', 'getenv', 'PATH') AS r",
    "SELECT song_id, count(*) OVER w FROM songs WINDOW w AS (ORDER BY reflect('java.lang.System', 'getenv', 'PATH'))",
    "SELECT TRANSFORM(song_id) USING 'touch {outside}/ran' FROM songs",
]


@pytest.mark.parametrize("query", WRITES_AND_PATHS)
def test_sql_refuses_writes_paths_and_reflection_in_one_line_and_changes_nothing(spark, warehouse, tmp_path,
                                                                                   capsys, query):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    files_before = sorted((p.relative_to(warehouse), p.stat().st_size) for p in warehouse.rglob("*"))
    songs_before = run_sql(capsys, warehouse, "SELECT * FROM songs ORDER BY song_id", "csv")
    here_before = sorted(Path.cwd().iterdir())  # CREATE TABLE used to leave a spark-warehouse/ here
    capsys.readouterr()
    status = main(["sql", "--warehouse", str(warehouse), query.format(wh=warehouse, outside=outside)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("deepcrate sql: error: refused: ")
    assert "is not read-only" in err or "not a table of the warehouse" in err or "calls a Java method" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted((p.relative_to(warehouse), p.stat().st_size) for p in warehouse.rglob("*")) == files_before
    assert (outside / "keep.txt").read_text() == "mine" and sorted(outside.iterdir()) == [outside / "keep.txt"]
    assert run_sql(capsys, warehouse, "SELECT * FROM songs ORDER BY song_id", "csv") == songs_before
    assert sorted(Path.cwd().iterdir()) == here_before


@pytest.mark.parametrize("query", ["SHOW TABLES", "DESCRIBE songs", "SHOW COLUMNS IN songs",
                                   "EXPLAIN SELECT count(*) FROM songs", "VALUES (1, 'a')",
                                   "WITH g AS (SELECT genre FROM songs) SELECT count(*) AS n FROM g"])
def test_sql_answers_every_read_only_statement(spark, warehouse, capsys, query):
    out = run_sql(capsys, warehouse, query, "csv")
    assert len(out.splitlines()) >= 2


def test_a_query_over_its_time_limit_is_cancelled_and_the_next_one_runs(spark, warehouse, capsys):
    capsys.readouterr()
    endless = "SELECT count(*) FROM range(0, 1000000000000) a"
    assert main(["sql", "--warehouse", str(warehouse), "--set", "sql.timeout_s=3", endless]) == 2
    err = capsys.readouterr().err
    assert err == "deepcrate sql: error: query cancelled after 3 s (sql.timeout_s)\n"
    assert spark.sparkContext.statusTracker().getActiveJobsIds() == []
    assert "house" in run_sql(capsys, warehouse, "SELECT genre FROM songs", "csv")


def test_a_failed_assertion_says_what_failed_in_one_line(spark, warehouse, capsys):
    capsys.readouterr()
    assert main(["sql", "--warehouse", str(warehouse), "SELECT assert_true(n_slices < 0) FROM songs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepcrate sql: error: query failed: [USER_RAISED_EXCEPTION] '(n_slices < 0)' is not true")
    assert len(err.splitlines()) == 1 and "An error occurred while calling" not in err
    assert main(["sql", "--warehouse", str(warehouse), "SELECT raise_error('no songs like that')"]) == 2
    assert capsys.readouterr().err == "deepcrate sql: error: query failed: [USER_RAISED_EXCEPTION] no songs like that\n"


def test_a_statement_nested_too_deeply_says_so_in_one_line(spark, warehouse, capsys):
    capsys.readouterr()
    assert main(["sql", "--warehouse", str(warehouse), "SELECT " + "(" * 3000 + "1" + ")" * 3000]) == 2
    assert capsys.readouterr().err == ("deepcrate sql: error: query failed: the statement is nested too deeply for "
                                       "Spark (java.lang.StackOverflowError)\n")


def test_an_invalid_spark_sql_option_is_refused_when_the_session_starts(spark, warehouse, capsys):
    capsys.readouterr()
    assert main(["sql", "--warehouse", str(warehouse), "--set", "spark.options.spark.sql.shuffle.partitions=0",
                 "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepcrate sql: error: spark.options: [INVALID_CONF_VALUE.REQUIREMENT] The value '0' in "
                          "the config \"spark.sql.shuffle.partitions\" is invalid") and len(err.splitlines()) == 1


def test_a_run_number_below_one_is_explained(spark, warehouse, capsys):
    capsys.readouterr()
    assert main(["sql", "--warehouse", str(warehouse), "--as-of", "-1", "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert "there is no run -1 (runs are numbered from 1" in err and "vacuum" not in err


def test_an_unknown_column_is_one_line_naming_the_tables(spark, warehouse, capfd):
    capfd.readouterr()
    assert main(["sql", "--warehouse", str(warehouse), "SELECT nope FROM songs"]) == 2
    captured = capfd.readouterr()  # the JVM's own stderr too: no Java stack
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("deepcrate sql: error: query failed: ") and "songs" in lines[0]
    assert "at org.apache" not in captured.err + captured.out


def test_a_newline_in_a_value_stays_inside_its_row_of_the_table(spark, warehouse, capsys):
    out = run_sql(capsys, warehouse, "SELECT 'song\\none.mp3' AS path, 1 AS n UNION ALL SELECT 'two\\tb', 2", "table")
    lines = out.splitlines()
    assert len(lines) == 5 and lines[-1] == "(2 rows)"  # header, rule, two rows, count
    assert lines[2].startswith("song\\none.mp3") and lines[3].startswith("two\\tb")


def test_spark_that_cannot_start_is_one_line_of_ours(warehouse):
    import subprocess
    import sys

    deepcrate = Path(sys.executable).parent / "deepcrate"
    result = subprocess.run([str(deepcrate), "sql", "--warehouse", str(warehouse), "--set", "spark.master=bogus",
                             "SELECT 1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    ours = [line for line in result.stderr.splitlines() if line.startswith("deepcrate sql: error:")]
    assert len(ours) == 1 and "Spark did not start (spark.master 'bogus'" in ours[0]
    assert "Traceback" not in result.stderr  # the JVM may print its own reason above ours


def test_a_run_that_rejects_every_file_does_not_wipe_the_catalogue_unless_told(spark, tmp_path, capsys):
    write_audio(tmp_path / "audio" / "a.mp3", make_signal(6))
    wh = str(tmp_path / "wh")
    assert main(["ingest", "--audio", str(tmp_path / "audio"), "--warehouse", wh]) == 0
    # 0 dBFS as the silence level: every song is "silent"
    assert main(["ingest", "--audio", str(tmp_path / "audio"), "--warehouse", wh,
                 "--set", "ingest.silence_dbfs=0"]) == 2
    err = capsys.readouterr().err
    assert "every one of the 1 files was rejected (silent 1)" in err and "holds 1 songs: nothing published" in err
    assert len(err.strip().splitlines()) == 1
    assert Warehouse(spark, wh).read("songs").count() == 1
    assert main(["ingest", "--audio", str(tmp_path / "audio"), "--warehouse", wh,
                 "--set", "ingest.silence_dbfs=0", "--allow-empty"]) == 0
    assert Warehouse(spark, wh).read("songs").count() == 0


def _deepcrate() -> str:
    import sys

    return str(Path(sys.executable).parent / "deepcrate")




SHELL_INPUT = """SELECT genre, count(*) AS n
  FROM songs GROUP BY genre ORDER BY genre;
.tables
INSERT INTO songs SELECT * FROM songs;
.format csv
SELECT 'a;b' AS x; -- a comment; with a semicolon
.schema rejects
SELECT count(*) AS n FROM slices;
"""


def test_the_shell_runs_piped_statements_in_turn_and_goes_on_after_a_refused_one(warehouse, tmp_path):
    import subprocess

    result = subprocess.run([_deepcrate(), "sql", "--warehouse", str(warehouse)], input=SHELL_INPUT,
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2  # one statement failed; the others ran
    assert result.stderr.splitlines() == ["error: refused: INSERT INTO is not read-only; deepcrate sql runs one "
                                          "read-only query (SELECT, WITH, VALUES, SHOW, DESCRIBE, EXPLAIN) over the "
                                          "warehouse's tables"]
    out = result.stdout.splitlines()
    assert out[:5] == ["genre    n", "-------  -", "ambient  1", "house    2", "(2 rows)"]
    assert out[5:9] == ["mfcc_features", "rejects", "slices", "songs"]  # .tables
    assert out[9:11] == ["x", "a;b"]  # csv from here on; the ';' inside quotes and the comment did not split
    assert out[11:15] == ["col_name,data_type,comment", "path,string,", "reason,string,", "message,string,"]
    assert out[15:] == ["n", "6"]


def test_ctrl_c_in_the_shell_cancels_the_statement_not_the_shell(warehouse, tmp_path):
    import signal
    import subprocess
    import time

    process = subprocess.Popen([_deepcrate(), "-v", "sql", "--warehouse", str(warehouse), "--format", "csv"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path)
    process.stdin.write("SELECT count(*) FROM range(0, 1000000000000) a;\n")
    process.stdin.flush()
    for line in process.stderr:  # -v: the session says when it is up
        if " Spark 4" in line:
            break
    time.sleep(8)  # the statement checked and running
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate("SELECT 6 * 7 AS answer;\n", timeout=120)
    finally:
        process.kill()
    assert process.returncode == 2
    assert "error: cancelled" in err.splitlines() and "Traceback" not in err
    assert out.splitlines() == ["answer", "42"]  # the shell went on to the next statement


def test_ctrl_c_cancels_a_running_query_in_one_line(warehouse, tmp_path):
    import signal
    import subprocess
    import time

    process = subprocess.Popen([_deepcrate(), "-v", "sql", "--warehouse", str(warehouse),
                                "SELECT count(*) FROM range(0, 1000000000000) a"],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    for line in process.stderr:  # -v: the session is up once it says which Spark it runs
        if " Spark 4" in line:
            break
    time.sleep(8)  # the tables registered, the statement checked: the job runs (or is about to)
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "deepcrate sql: interrupted"
    assert "Traceback" not in err and out == ""


def test_a_demo_catalogue_into_an_existing_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    assert main(["demo-catalogue", str(tmp_path / "taken"), "--songs-per-genre", "1", "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"deepcrate demo-catalogue: error: {tmp_path / 'taken'} exists and is not a folder; name a folder " \
                  "for the demo catalogue\n"
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_one_shot_query_answers_quietly_leaves_no_file_and_an_archive_of_the_jvms_classes(warehouse, tmp_path):
    import subprocess
    import time

    here, cache = tmp_path / "here", tmp_path / "cache"
    here.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    query = [_deepcrate(), "sql", "--warehouse", str(warehouse), "--format", "csv", "SHOW TABLES"]
    first = subprocess.run(query, capture_output=True, text=True, timeout=300, cwd=here, env=env)
    assert first.returncode == 0, first.stderr
    assert {"songs", "slices", "rejects"} <= {row.split(",")[1] for row in first.stdout.splitlines()[1:]}
    assert list(here.iterdir()) == []  # Spark's catalog used to make ./spark-warehouse
    assert first.stderr == ""  # issue 42: no config dump, no JVM start-up lines: a reader answers quietly
    folder = cache / "deepcrate" / "jvm"
    deadline = time.monotonic() + 240  # written by the JVM as it exits, after the command returned
    while not list(folder.glob("spark-*.jsa")) and time.monotonic() < deadline:
        time.sleep(1)
    (archive,) = folder.glob("spark-*.jsa")
    assert archive.stat().st_size > 50 * 2**20 and list(folder.iterdir()) == [archive]  # no draft left
    # -Xshare:on: a JVM that cannot map the archive (another Java, another class path) does not start
    mapped = subprocess.run([*query, "--set", "spark.options.spark.driver.extraJavaOptions="
                             f"-XX:SharedArchiveFile={archive} -Xshare:on -XX:+VerifySharedSpaces"],
                            capture_output=True, text=True, timeout=300, cwd=here, env=env)
    assert (mapped.returncode, mapped.stdout) == (0, first.stdout), mapped.stderr


def test_a_one_shot_query_maps_a_ready_archive_and_makes_none_otherwise_when_told_not_to(tmp_path, monkeypatch):
    from deepcrate.cli.commands import _class_archive
    from deepcrate.config import resolve_settings
    from deepcrate.spark import class_archive

    monkeypatch.setattr(class_archive, "cache_folder", lambda: tmp_path)
    monkeypatch.setattr("pyspark.SparkContext._active_spark_context", None)
    options = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}
    making = _class_archive(resolve_settings(), options, make=True)
    assert options["spark.driver.extraJavaOptions"].startswith(f"-XX:TieredStopAtLevel=1 -XX:ArchiveClassesAtExit={making.draft}")
    making.path.write_bytes(b"x")  # as if the helper had renamed it into place
    options = {}
    assert _class_archive(resolve_settings(), options, make=True) is None  # ready: nothing to make
    assert options["spark.driver.extraJavaOptions"].startswith(f"-XX:SharedArchiveFile={making.path} -XX:+VerifySharedSpaces")
    for settings in (resolve_settings(overrides=["sql.class_archive=false"]),
                     resolve_settings(overrides=["spark.options.spark.driver.extraJavaOptions=-Xmx1g"])):
        options = {}
        assert _class_archive(settings, options, make=True) is None and options == {}  # off, or the user's own


def test_py4j_resending_a_command_leaves_no_traceback_on_the_terminal():
    """py4j logs an INFO traceback on the root logger whenever it resends a command on a fresh
    connection (the call then succeeds): writing jobs showed two at the features stage's start.
    The CLI's handlers drop exactly that record; py4j's real failures and ours pass."""
    import py4j.java_gateway

    from deepcrate.cli import _py4j_retry

    def record(name: str, level: int, path: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, path, 1, "Exception while sending command.", None, None)

    assert not _py4j_retry(record("root", logging.INFO, py4j.java_gateway.__file__))
    assert _py4j_retry(record("root", logging.ERROR, py4j.java_gateway.__file__))  # it gave up: shown
    assert _py4j_retry(record("root", logging.INFO, __file__))
    assert _py4j_retry(record("deepcrate.stages.features", logging.INFO, __file__))
