"""Write-then-publish: a published table is always a whole one; readers see one run at a time.

Tables are Delta tables (delta-rs commits, one run record per job); a warehouse in the
earlier plain-Parquet layout is converted in place by its next writing job.
"""
import numpy as np
import pyarrow as pa
import pytest

from deepcrate.errors import WarehouseError
from deepcrate.storage.schemas import TABLES
from deepcrate.storage.table_metadata import TableMetadata
from deepcrate.storage.warehouse import Warehouse


@pytest.fixture(autouse=True)
def toy_tables(monkeypatch):
    """Tables ``a``, ``b``, ``c`` of one int column, known to the schemas like a stage's own tables."""
    for name in ("a", "b", "c"):
        monkeypatch.setitem(TABLES, name, pa.schema([("v", pa.int32())]))


def stage(store, run, name, values):
    store.write_table(run, name, store.spark.createDataFrame([(v,) for v in values], "v int"))


def read(store, name):
    return sorted(r.v for r in store.read(name).collect())


def test_reading_a_missing_table_or_warehouse_says_what_is_there(spark, tmp_path):
    with pytest.raises(WarehouseError, match="no such folder"):
        Warehouse(spark, str(tmp_path / "nowhere"))
    store = Warehouse(spark, str(tmp_path / "wh"), create=True)
    with pytest.raises(WarehouseError, match="no table 'songs'"):
        store.read("songs")


def test_unwritable_warehouse_is_a_clear_error(spark, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WarehouseError, match="not writable"):
        Warehouse(spark, str(blocker / "wh"), create=True)


def test_a_second_writer_is_refused_in_one_line_and_a_dead_writers_lock_is_taken_over(spark, tmp_path, caplog):
    import json
    import socket
    import subprocess
    import sys

    from deepcrate.cli import main
    from deepcrate.storage.writer_lock import LOCK_FILE, writer_lock

    from helpers import make_signal, write_audio

    write_audio(tmp_path / "audio" / "a.mp3", make_signal(6))
    wh = tmp_path / "wh"
    # Another job, in another process, holds the lock: a real process of this host, alive.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        wh.mkdir()
        holder = {"host": socket.gethostname(), "pid": other.pid, "command": "ingest", "token": "theirs",
                  "started": "2026-12-02T10:00:00+00:00"}
        (wh / LOCK_FILE).write_text(json.dumps(holder))
        (wh / "songs" / "their-run").mkdir(parents=True)  # their half-written run
        with pytest.raises(WarehouseError) as refused, writer_lock(str(wh), command="ingest"):
            pass
        message = str(refused.value)
        assert "\n" not in message and f"pid {other.pid}" in message and socket.gethostname() in message
        assert "since 2026-12-02T10:00:00+00:00" in message and "ingest" in message
        assert main(["ingest", "--audio", str(tmp_path / "audio"), "--warehouse", str(wh)]) == 2
        assert (wh / "songs" / "their-run").is_dir()  # not touched under their feet
        assert json.loads((wh / LOCK_FILE).read_text())["token"] == "theirs"
    finally:
        other.kill()
        other.wait()
    # Their process is gone: its lock is taken over and the job runs (their files wait for vacuum).
    caplog.set_level("WARNING")
    assert main(["ingest", "--audio", str(tmp_path / "audio"), "--warehouse", str(wh)]) == 0
    assert "took over the writer lock of ingest" in caplog.text
    assert not (wh / LOCK_FILE).exists()
    assert Warehouse(spark, str(wh)).tables() == ["mfcc_features", "rejects", "slices", "songs"]


def test_the_writer_lock_is_reentrant_and_released(spark, tmp_path):
    from deepcrate.storage.writer_lock import LOCK_FILE, writer_lock

    wh = tmp_path / "wh"
    with writer_lock(str(wh), command="rebuild", create=True):
        with writer_lock(str(wh), command="ingest"):  # a stage inside the rebuild
            assert (wh / LOCK_FILE).exists()
        assert (wh / LOCK_FILE).exists()
    assert not (wh / LOCK_FILE).exists()
    with pytest.raises(RuntimeError), writer_lock(str(wh), command="ingest"):
        raise RuntimeError("a job that fails")
    assert not (wh / LOCK_FILE).exists()


def test_a_job_whose_lock_was_deleted_commits_nothing_more_and_says_so(spark, tmp_path):
    from deepcrate.storage.writer_lock import LOCK_FILE, writer_lock

    wh = tmp_path / "wh"
    with pytest.raises(WarehouseError) as lost, writer_lock(str(wh), command="rebuild", create=True):
        store = Warehouse(spark, str(wh))
        run = store.begin_run()
        stage(store, run, "a", [1])
        store.publish(run, ["a"])  # committed to the job, published when it ends
        (wh / LOCK_FILE).unlink()  # somebody "cleans up" while the job runs
        run = store.begin_run()
        stage(store, run, "b", [2])
        store.publish(run, ["b"])
    message = str(lost.value)
    assert "\n" not in message and "this rebuild lost its writer lock" in message and "it is gone" in message
    assert Warehouse(spark, str(wh)).tables() == []  # the job failed: nothing was published
    with pytest.raises(WarehouseError, match="lost its writer lock"), \
            writer_lock(str(wh), command="ingest"):  # nor when the loss comes after the last commit
        run = store.begin_run()
        stage(store, run, "a", [1])
        store.publish(run, ["a"])
        (wh / LOCK_FILE).unlink()
    assert Warehouse(spark, str(wh)).tables() == []


def test_a_direct_delta_reader_sees_a_crashed_jobs_versions_until_the_next_job_restores_the_published(
        spark, tmp_path):
    from deltalake import DeltaTable

    from deepcrate.storage.writer_lock import writer_lock

    wh = tmp_path / "wh"
    with writer_lock(str(wh), command="ingest", create=True):
        store = Warehouse(spark, str(wh))
        run = store.begin_run()
        stage(store, run, "a", [1])
        stage(store, run, "b", [10])
        store.publish(run, ["a", "b"])
    with pytest.raises(RuntimeError), writer_lock(str(wh), command="rebuild"):
        run = store.begin_run()
        stage(store, run, "a", [2])
        store.publish(run, ["a"])  # committed as a new Delta version of a, not published
        raise RuntimeError("the job dies before b")
    direct = DeltaTable(str(wh / "a"))  # README: a direct reader sees each table whole, not one run
    assert sorted(direct.to_pyarrow_table()["v"].to_pylist()) == [2]
    assert read(Warehouse(spark, str(wh)), "a") == [1]  # deepcrate's readers: the published run
    with writer_lock(str(wh), command="index"):  # the next job restores first
        pass
    assert sorted(DeltaTable(str(wh / "a")).to_pyarrow_table()["v"].to_pylist()) == [1]


def test_a_lock_file_with_garbage_in_it_is_explained(spark, tmp_path):
    from deepcrate.storage.writer_lock import LOCK_FILE, writer_lock

    wh = tmp_path / "wh"
    wh.mkdir()
    (wh / LOCK_FILE).write_text("not a lock \x00\x01")
    with pytest.raises(WarehouseError) as refused, writer_lock(str(wh), command="ingest"):
        pass
    message = str(refused.value)
    assert "holds no job's record" in message and "delete that file" in message and "?" not in message


def test_scratch_of_a_live_job_is_kept_and_of_a_dead_one_deleted(spark, tmp_path):
    import json
    import socket
    import subprocess
    import sys

    from deepcrate.storage.writer_lock import writer_lock

    wh = tmp_path / "wh"
    store = Warehouse(spark, str(wh), create=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for run, pid in (("live-run", live.pid), ("dead-run", dead.pid)):
            (wh / "_scratch" / run / "decoded").mkdir(parents=True)
            (wh / "_scratch" / f"{run}.owner").write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
        with writer_lock(str(wh), command="ingest"):
            store.begin_run()
        assert sorted(p.name for p in (wh / "_scratch").iterdir()) == ["live-run", "live-run.owner"]
    finally:
        live.kill()
        live.wait()


def test_of_many_writers_starting_at_once_exactly_one_gets_the_lock(spark, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from deepcrate.storage.files import create_new
    from deepcrate.storage.writer_lock import LOCK_FILE

    store = Warehouse(spark, str(tmp_path / "wh"), create=True)
    lock = f"{store.root}/{LOCK_FILE}"
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: create_new(lock, f'{{"token": "{i}"}}'), range(8)))
    assert won.count(True) == 1
    assert (tmp_path / "wh" / LOCK_FILE).read_text() == f'{{"token": "{won.index(True)}"}}'


# -- Delta (the default): delta-rs commits, one run record per job --------------------------------
def delta_rows(path, version=None):
    """Table ``path`` read by delta-rs itself, independently of the warehouse's readers."""
    from deltalake import DeltaTable

    return sorted(DeltaTable(str(path), version=version).to_pyarrow_table().column("v").to_pylist())


def job(spark, wh, tables, *, command="test-job"):
    """One writing job publishing ``tables`` ({name: values}), each with its own publish."""
    from deepcrate.storage.writer_lock import writer_lock

    with writer_lock(str(wh), command=command, create=True):
        store = Warehouse(spark, str(wh), create=True)
        run = store.begin_run()
        for name, values in tables.items():
            stage(store, run, name, values)
            store.publish(run, [name])
    return run


def test_delta_tables_are_one_version_per_publish_and_spark_reads_what_delta_rs_reads(spark, tmp_path):
    import json

    from deltalake import DeltaTable

    wh = tmp_path / "wh"
    first = job(spark, wh, {"a": [1, 2], "b": [10]})
    second = job(spark, wh, {"a": [3]})
    store = Warehouse(spark, str(wh))
    assert read(store, "a") == delta_rows(wh / "a") == [3] and read(store, "b") == delta_rows(wh / "b") == [10]
    assert delta_rows(wh / "a", version=0) == [1, 2]  # the replaced version is still there...
    assert read(Warehouse(spark, str(wh), as_of=1), "a") == [1, 2]  # ...and run 1 reads it
    assert spark.read.option("recursiveFileLookup", "true").parquet(str(wh / "a")).count() == 3  # a glob mixes versions
    table = DeltaTable(str(wh / "a"))
    assert (table.protocol().min_reader_version, table.protocol().min_writer_version) == (1, 2)
    adds = [json.loads(line)["add"] for line in (wh / "a" / "_delta_log" / "00000000000000000001.json")
            .read_text().splitlines() if '"add"' in line]
    assert sum(json.loads(add["stats"])["numRecords"] for add in adds) == 1
    history = store.runs.history()
    assert [(r.number, r.command, r.changed) for r in history] == [(2, "test-job", ["a"]), (1, "test-job", ["a", "b"])]
    assert history[0].tables["b"] == history[1].tables["b"] and store.version("b") == first
    assert history[0].tables["a"].rows == 1 and store.metadata("a").run == second


@pytest.mark.parametrize("crash_at", range(5))
def test_a_crash_between_any_two_steps_of_a_publish_leaves_readers_on_one_run(spark, tmp_path, crash_at):
    """A job's steps: commit a, draft, commit b, draft, run record. Readers see run 1 or run 2."""
    import deepcrate.storage.warehouse as warehouse_module
    from deepcrate.storage.run_log import RunLog

    wh = tmp_path / "wh"
    job(spark, wh, {"a": [1], "b": [1]})
    steps = []

    def step(original):
        def wrapped(*args, **kwargs):
            steps.append(original.__name__)
            if len(steps) == crash_at + 1:
                raise KeyboardInterrupt("power cut")
            return original(*args, **kwargs)
        return wrapped

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(warehouse_module, "commit_files", step(warehouse_module.commit_files))
        patch.setattr(RunLog, "write_draft", step(RunLog.write_draft))
        patch.setattr(RunLog, "publish", step(RunLog.publish))
        job(spark, wh, {"a": [2], "b": [2]})
    assert steps[-1] == ["commit_files", "write_draft", "commit_files", "write_draft", "publish"][crash_at]
    store = Warehouse(spark, str(wh))
    assert (read(store, "a"), read(store, "b")) == ([1], [1])  # never a mix; the new run was not published
    from deepcrate.storage.arrow_tables import ArrowTables

    tables = ArrowTables.current(str(wh))
    assert tables.read("a").column("v").to_pylist() == [1] and tables.read("b").column("v").to_pylist() == [1]
    # The same job again carries on from what was committed; a job of another command drops it
    # and makes the Delta tables' newest versions the published ones again.
    if crash_at == 3:
        job(spark, wh, {"c": [0]}, command="another-job")
        assert (delta_rows(wh / "a"), delta_rows(wh / "b")) == ([1], [1]) and Warehouse(spark, str(wh)).runs.draft() is None
        assert read(Warehouse(spark, str(wh)), "a") == [1]
        return
    job(spark, wh, {"b": [3]}, command="test-job")
    store = Warehouse(spark, str(wh))
    assert read(store, "b") == [3] and read(store, "a") == ([2] if crash_at >= 2 else [1])  # a drafted: carried
    assert store.runs.draft() is None


def test_a_second_writer_that_publishes_first_wins_and_the_other_is_refused_in_one_line(spark, tmp_path):
    from deepcrate.storage.writer_lock import writer_lock

    wh = tmp_path / "wh"
    job(spark, wh, {"a": [1]})
    with pytest.raises(WarehouseError) as refused, writer_lock(str(wh), command="ours"):
        store = Warehouse(spark, str(wh))
        run = store.begin_run()
        stage(store, run, "a", [2])
        store.publish(run, ["a"])
        # another writer (on an object store, where the lock cannot hold it off) publishes run 2 first
        current = store.runs.current()
        store.runs.publish(current.with_changes(number=2, command="theirs", tables={}, folders={}, changed=[]))
    assert "\n" not in str(refused.value) and "another job published run 2 while this ours ran" in str(refused.value)
    assert [r.command for r in Warehouse(spark, str(wh)).runs.history()] == ["theirs", "test-job"]
    assert read(Warehouse(spark, str(wh)), "a") == [1]


def test_rollback_republishes_an_earlier_run_row_for_row_and_vacuum_keeps_what_kept_runs_read(spark, tmp_path):
    from deepcrate.storage import maintenance
    from deepcrate.storage.writer_lock import writer_lock

    wh = tmp_path / "wh"
    job(spark, wh, {"a": [1], "b": [1]})
    job(spark, wh, {"a": [2]})
    job(spark, wh, {"a": [3], "b": [3]})
    with writer_lock(str(wh), command="rollback"):
        record = maintenance.rollback(str(wh), 2)
    store = Warehouse(spark, str(wh))
    assert (record.number, record.changed) == (4, ["a", "b"])
    assert (read(store, "a"), read(store, "b")) == ([2], [1])
    assert (delta_rows(wh / "a"), delta_rows(wh / "b")) == ([2], [1])  # Delta readers see the same
    files_before = {p for p in wh.rglob("*.parquet")}
    everything = {p: p.stat().st_size for p in wh.rglob("*") if p.is_file() and "_runs" not in p.parts}
    with writer_lock(str(wh), command="vacuum"):
        listed = maintenance.vacuum(str(wh), keep=2, dry_run=True)
    assert {p: p.stat().st_size for p in wh.rglob("*") if p.is_file() and "_runs" not in p.parts} == everything
    with writer_lock(str(wh), command="vacuum"):
        deleted = maintenance.vacuum(str(wh), keep=2)
    files_after = {p for p in wh.rglob("*.parquet")}
    assert deleted == listed and sum(f.size for f in deleted) > 0 and files_after < files_before
    assert {wh / f.path for f in deleted} == {p for p in everything if not p.exists()}  # the dry run said what went
    for number in (3, 4):  # every file a kept run reads is still there
        kept = Warehouse(spark, str(wh), as_of=number)
        assert read(kept, "a") == {3: [3], 4: [2]}[number]
    with pytest.raises(WarehouseError, match="files of run 1 were vacuumed"):
        Warehouse(spark, str(wh), as_of=1)
    from deepcrate.storage.delta_tables import committed_files

    read_by_kept = {tmp_path / uri.split(str(tmp_path) + "/", 1)[1]
                    for number in (3, 4) for name, entry in store.runs.get(number).tables.items()
                    for uri in committed_files(store.table_uri(name), entry.version, name=name)}
    assert files_after == read_by_kept  # exactly: nothing a kept run reads went, nothing else stayed
    assert all(any(folder.iterdir()) for folder in (wh / "a").iterdir())  # no empty run folders left


def test_a_hand_edited_delta_log_is_refused_in_one_line_naming_the_table(spark, tmp_path):
    wh = tmp_path / "wh"
    job(spark, wh, {"a": [1]})
    (wh / "a" / "_delta_log" / "00000000000000000000.json").write_text('{"add": {"path": 12}}\nnot json\n')
    with pytest.raises(WarehouseError) as refused:
        Warehouse(spark, str(wh)).read("a")
    assert "\n" not in str(refused.value) and str(refused.value).startswith("table a: its Delta log")


@pytest.mark.parametrize("command", [["rollback", "--to", "1"], ["vacuum", "--keep", "1"], ["index"]])
def test_a_truncated_delta_log_stops_a_writer_in_one_line_naming_the_table(spark, tmp_path, capsys, command):
    from deepcrate.cli import main

    wh = tmp_path / "wh"
    job(spark, wh, {"a": [1]})
    log = wh / "a" / "_delta_log" / "00000000000000000000.json"
    log.write_bytes(log.read_bytes()[:100])  # a disk that filled up mid-write (issue 43: a Rust backtrace)
    capsys.readouterr()
    assert main([*command, "--warehouse", str(wh)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"deepcrate {command[0]}: error: table a: its Delta log in file:{wh}/a cannot be read: ")
    assert len(err.splitlines()) == 1


def parquet_warehouse(spark, wh, tables, *, run):
    """A warehouse in the earlier plain-Parquet layout, written as that layout's jobs left it:
    ``WH/<table>/`` with Spark's files, ``_SUCCESS`` and ``_deepcrate.json``, and a model folder."""
    for name, values in tables.items():
        spark.createDataFrame([(v,) for v in values], "v int").write.parquet(str(wh / name))
        (wh / name / "_deepcrate.json").write_text(TableMetadata(table=name, run=run).to_json())
    (wh / "models" / "v1").mkdir(parents=True)
    (wh / "models" / "v1" / "labels.json").write_text("[]")
    (wh / "models" / "v1" / "_SUCCESS").write_text("")


def test_a_parquet_warehouse_becomes_delta_on_its_next_write_without_rewriting_a_file(spark, tmp_path):
    from deepcrate.storage.arrow_tables import ArrowTables

    wh = tmp_path / "wh"
    parquet_warehouse(spark, wh, {"a": [1, 2], "b": [5]}, run="old-run")
    for reader in (lambda: Warehouse(spark, str(wh)).read("a"), lambda: ArrowTables.current(str(wh)).read("a"),
                   lambda: Warehouse(spark, str(wh)).register()):
        with pytest.raises(WarehouseError) as refused:
            reader()
        assert "earlier plain-Parquet layout; the next writing job converts them" in str(refused.value)
    files = {p: p.stat().st_ino for p in wh.glob("*/*.parquet")}
    job(spark, wh, {"b": [6]})
    store = Warehouse(spark, str(wh))
    assert (read(store, "a"), read(store, "b")) == ([1, 2], [6]) and delta_rows(wh / "a") == [1, 2]
    assert {p: p.stat().st_ino for p in files} == files  # the Parquet files stayed where they were
    assert store.version("a") == "old-run" and store.runs.current().changed == ["a", "b", "models/v1"]
    assert store.list_folder("models") == ["v1"] and len(store.runs.history()) == 1


def test_a_publish_the_renames_left_halfway_is_finished_before_the_conversion(spark, tmp_path):
    wh = tmp_path / "wh"
    parquet_warehouse(spark, wh, {"a": [1], "b": [1]}, run="r1")
    staging = wh / "_staging" / "r2"
    for name in ("a", "b"):  # run r2 staged both tables...
        spark.createDataFrame([(2,)], "v int").write.parquet(str(staging / name))
        (staging / name / "_deepcrate.json").write_text(TableMetadata(table=name, run="r2").to_json())
    (staging / "_PUBLISH").write_text('["a", "b"]')
    (staging / "_old").mkdir()
    (wh / "a").rename(staging / "_old" / "a")  # ...and its renames stopped after a
    (staging / "a").rename(wh / "a")
    spark.createDataFrame([(9,)], "v int").write.parquet(str(wh / "_staging" / "r3" / "a"))  # never published
    job(spark, wh, {"c": [0]})
    store = Warehouse(spark, str(wh))
    assert (read(store, "a"), read(store, "b"), read(store, "c")) == ([2], [2], [0])
    assert store.version("b") == "r2" and not (wh / "_staging").exists()


def test_a_missing_or_corrupt_file_or_lost_rows_are_refused_in_one_line_naming_the_table(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepcrate.storage.arrow_tables import ArrowTables

    wh = tmp_path / "wh"
    job(spark, wh, {"a": list(range(100))})
    first, *others = sorted((wh / "a").glob("*/*.parquet"))
    assert others  # Spark wrote several files
    good = first.read_bytes()

    def refused(match):
        for reader in (lambda: Warehouse(spark, str(wh)).read("a").count(),
                       lambda: ArrowTables.current(str(wh)).read("a")):
            with pytest.raises(WarehouseError) as error:
                reader()
            assert "\n" not in str(error.value) and str(error.value).startswith("table a in ") and match in str(error.value)

    first.write_bytes(b"PAR1 not really parquet")
    refused(f"file file:{first} is not readable Parquet")
    first.unlink()
    refused(f"1 of its {1 + len(others)} files are missing (first: file:{first})")
    pq.write_table(pa.table({"v": pa.array([7], pa.int32())}), first)  # a file cut down to one row
    refused("its files hold")
    first.write_bytes(good)
    assert read(Warehouse(spark, str(wh)), "a") == list(range(100))


def test_a_damaged_page_behind_an_intact_footer_is_an_error_naming_the_file_not_wrong_numbers(
        spark, tmp_path, capsys):
    import pyarrow.parquet as pq

    from deepcrate.cli import main
    from deepcrate.storage.arrow_tables import ArrowTables, unreadable_file_error

    wh = tmp_path / "wh"
    job(spark, wh, {"a": list(range(100))})
    first = min((wh / "a").glob("*/*.parquet"))
    chunk = pq.read_metadata(first).row_group(0).column(0)
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    data = bytearray(first.read_bytes())
    data[end - 2] ^= 0xFF  # a value in the last page; the footer and row counts stay right
    first.write_bytes(bytes(data))

    with pytest.raises(Exception) as error:
        Warehouse(spark, str(wh)).read("a").collect()
    line = str(unreadable_file_error(error.value))
    assert "\n" not in line and f"file file://{first} cannot be read" in line and "CRC" in line
    with pytest.raises(WarehouseError, match=f"table a in .*: file {first}: could not verify page integrity"):
        ArrowTables.current(str(wh)).read("a")
    assert main(["sql", "--warehouse", str(wh), "SELECT sum(v) FROM a"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"file file://{first} cannot be read" in err


def _row_groups_written(spark, root, name: str, frame, *, metadata: TableMetadata) -> list:
    """Write ``frame`` as table ``name`` of a new warehouse ``root`` and publish it: the metadata of
    every row group of its files."""
    import pyarrow.parquet as pq

    from deepcrate.storage.writer_lock import writer_lock

    with writer_lock(str(root), command="test", create=True):
        store = Warehouse(spark, str(root), create=True)
        run = store.begin_run()
        store.write_table(run, name, frame, metadata=metadata)
        store.publish(run, [name])
    return [footer.row_group(i) for path in (root / name).rglob("*.parquet")
            for footer in [pq.read_metadata(path)] for i in range(footer.num_row_groups)]


def test_slices_are_written_in_row_groups_of_bounded_size_so_a_reader_holds_little(spark, tmp_path,
                                                                                  demo_warehouse):
    """pyarrow decodes a whole row group at once: with one group per file, the training
    reader's memory grew with the catalogue."""
    from deepcrate.storage.arrow_tables import ArrowTables
    from deepcrate.storage.schemas import Table
    from deepcrate.storage.spark_schemas import spark_schema
    from deepcrate.storage.warehouse import ROW_GROUP_BYTES

    demo = ArrowTables.current(str(demo_warehouse))
    images = demo.read("slices", columns=["spectrogram"]).column("spectrogram").to_pylist()
    rows = 4 * ROW_GROUP_BYTES // len(images[0])  # four groups' worth
    # Real slices, each song's five 14 times in a row (copies of one recording under several
    # names): with a dictionary for the images, Parquet then never cut a group.
    chosen = [images[((n // 70) * 5 + n % 5) % len(images)] for n in range(rows)]
    frame = spark.createDataFrame([(f"{n // 5:016x}", n % 5, 3.0 * (n % 5), "rock", "train", image)
                                   for n, image in enumerate(chosen)], schema=spark_schema(Table.SLICES)).coalesce(1)
    groups = _row_groups_written(spark, tmp_path / "wh", Table.SLICES, frame,
                                 metadata=Warehouse(spark, str(demo_warehouse)).metadata("slices"))
    total = sum(len(image) for image in chosen)
    assert sum(group.num_rows for group in groups) == rows
    assert len(groups) >= total // ROW_GROUP_BYTES >= 2  # Spark's default writes one group here
    assert max(group.total_byte_size for group in groups) <= 1.5 * ROW_GROUP_BYTES  # checked every ~100 rows
    table = ArrowTables.current(str(tmp_path / "wh")).slice_table(image_shape=(1, len(images[0])))
    assert len(table.row_groups(split="train")) == len(groups)
    assert sum(len(batch.labels) for batch in table.batches(split="train", labels=None, batch_size=64)) == rows


def test_pretrained_features_are_written_in_row_groups_of_bounded_size_too(spark, tmp_path):
    """The head's reader decodes a row group at a time: one group per file grew it with the table.
    Three groups' worth of features whose rows repeat (copies of one recording): a dictionary,
    left on, would hide their size and no group would be cut."""
    from deepcrate.storage.schemas import Table
    from deepcrate.storage.spark_schemas import spark_schema
    from deepcrate.storage.table_metadata import FeaturesMetadata
    from deepcrate.storage.warehouse import ROW_GROUP_BYTES

    rng = np.random.default_rng(0)
    # 64 rows over and over: more than the 64 KB a compressor looks back over (which would shrink
    # the groups' stored size), few enough for a dictionary
    distinct = [rng.normal(size=400).astype("<f4").tobytes() for _ in range(64)]
    rows = 3 * ROW_GROUP_BYTES // len(distinct[0])
    frame = spark.createDataFrame([(f"{n // 8:016x}", n % 8, n % 64, distinct[n % 64]) for n in range(rows)],
                                  schema=spark_schema(Table.PRETRAINED_FEATURES)).coalesce(1)
    metadata = FeaturesMetadata(network="test", checkpoints="test", width=400, format="float32", runtime="test")
    groups = _row_groups_written(spark, tmp_path / "wh", Table.PRETRAINED_FEATURES, frame, metadata=metadata)
    assert sum(group.num_rows for group in groups) == rows
    assert len(groups) >= 3  # Spark's default (or a dictionary) writes one group here
    assert max(group.total_byte_size for group in groups) <= 1.5 * ROW_GROUP_BYTES  # checked every ~100 rows


def test_the_song_vector_tables_are_written_in_row_groups_of_bounded_size_too(spark, tmp_path, demo_warehouse):
    """evaluate and index stream them a row group at a time. Three groups' worth of MFCC features
    whose rows repeat (64 distinct, as copies of recordings would)."""
    from deepcrate.storage.arrow_tables import ArrowTables
    from deepcrate.storage.schemas import Table
    from deepcrate.storage.spark_schemas import spark_schema
    from deepcrate.storage.warehouse import VECTOR_ROW_GROUP_BYTES as ROW_GROUP_BYTES

    rng = np.random.default_rng(0)
    distinct = [(rng.normal(size=80).astype(np.float32).tolist(), rng.normal(size=420).tolist()) for _ in range(64)]
    copies = 3 * ROW_GROUP_BYTES // (80 * 4 + 420 * 8) // 64 + 1
    frame = spark.createDataFrame([(f"{n:02d}-{copy}", *distinct[n]) for copy in range(copies) for n in range(64)],
                                  schema=spark_schema(Table.MFCC_FEATURES)).coalesce(1)
    groups = _row_groups_written(spark, tmp_path / "wh", Table.MFCC_FEATURES, frame,
                                 metadata=Warehouse(spark, str(demo_warehouse)).metadata("mfcc_features"))
    assert sum(group.num_rows for group in groups) == 64 * copies
    assert len(groups) >= 3  # Spark's default (or a dictionary) writes one group here
    assert max(group.total_byte_size for group in groups) <= 1.5 * ROW_GROUP_BYTES
    # Streamed back a group at a time, every song's row in its place.
    tables = ArrowTables.current(str(tmp_path / "wh"))
    keys = pa.array([f"{n:02d}-{copies - 1}" for n in range(64)])
    blocks = list(tables.matrix_blocks(Table.MFCC_FEATURES, "timbre", keys=keys, dtype=np.float64))
    assert sum(len(rows) for rows, _ in blocks) == 64
    np.testing.assert_array_equal(tables.matrix(Table.MFCC_FEATURES, "timbre", keys=keys, dtype=np.float64),
                                  np.array([timbre for _, timbre in distinct]))
