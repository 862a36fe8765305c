"""Write-then-publish: a published table is always a whole one."""
import pytest
from pyspark.sql.types import IntegerType, StructField, StructType

from deepcrate.errors import WarehouseError
from deepcrate.schemas import TABLES
from deepcrate.warehouse import Warehouse


@pytest.fixture(autouse=True)
def toy_tables(monkeypatch):
    """Tables ``a`` and ``b`` of one int column, known to the schemas like a stage's own tables."""
    for name in ("a", "b"):
        monkeypatch.setitem(TABLES, name, StructType([StructField("v", IntegerType(), True)]))


def stage(store, run, name, values):
    store.write_table(run, name, store.spark.createDataFrame([(v,) for v in values], "v int"),
                      metadata={"values": values})


def read(store, name):
    return sorted(r.v for r in store.read(name).collect())


def test_publish_replaces_all_tables_of_a_run(spark, tmp_path):
    store = Warehouse(spark, str(tmp_path / "wh"), create=True)
    for values in ([1, 2], [3]):
        run = store.begin_run()
        stage(store, run, "a", values)
        stage(store, run, "b", [v * 10 for v in values])
        store.publish(run, ["a", "b"])
        assert read(store, "a") == values and read(store, "b") == [v * 10 for v in values]
    assert store.tables() == ["a", "b"]
    assert store.metadata("a") == {"table": "a", "values": [3], "run": run}
    assert not any((tmp_path / "wh" / "_staging").iterdir())


def test_publish_interrupted_midway_is_rolled_forward_by_the_next_job(spark, tmp_path, monkeypatch):
    store = Warehouse(spark, str(tmp_path / "wh"), create=True)
    run = store.begin_run()
    stage(store, run, "a", [1])
    stage(store, run, "b", [1])
    store.publish(run, ["a", "b"])

    run = store.begin_run()
    stage(store, run, "a", [2])
    stage(store, run, "b", [2])
    renames = []
    original = Warehouse._rename

    def crash_on_fourth_rename(self, src, dst):  # old a aside, new a in, old b aside, crash
        renames.append(src)
        if len(renames) == 4:
            raise RuntimeError("power cut")
        original(self, src, dst)

    monkeypatch.setattr(Warehouse, "_rename", crash_on_fourth_rename)
    with pytest.raises(RuntimeError, match="power cut"):
        store.publish(run, ["a", "b"])
    monkeypatch.undo()
    assert store.tables() == ["a"]  # b is aside: mid-publish

    Warehouse(spark, str(tmp_path / "wh")).recover()
    assert read(store, "a") == [2] and read(store, "b") == [2]
    assert not any((tmp_path / "wh" / "_staging").iterdir())


def test_unfinished_run_is_dropped_and_published_tables_stay(spark, tmp_path):
    store = Warehouse(spark, str(tmp_path / "wh"), create=True)
    run = store.begin_run()
    stage(store, run, "a", [1])
    store.publish(run, ["a"])
    run = store.begin_run()
    stage(store, run, "a", [5])  # the job dies here, before publishing
    store.recover()
    assert read(store, "a") == [1]
    with pytest.raises(WarehouseError, match="not written completely"):
        store.publish(run, ["a"])


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
    from deepcrate.warehouse import LOCK_FILE, writer_lock

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
        (wh / "_staging" / "their-run").mkdir(parents=True)  # their half-written run
        with pytest.raises(WarehouseError) as refused, writer_lock(spark, str(wh), command="ingest"):
            pass
        message = str(refused.value)
        assert "\n" not in message and f"pid {other.pid}" in message and socket.gethostname() in message
        assert "since 2026-12-02T10:00:00+00:00" in message and "ingest" in message
        assert main(["ingest", "--audio", str(tmp_path / "audio"), "--warehouse", str(wh)]) == 2
        assert (wh / "_staging" / "their-run").is_dir()  # not rolled back under their feet
        assert json.loads((wh / LOCK_FILE).read_text())["token"] == "theirs"
    finally:
        other.kill()
        other.wait()
    # Their process is gone: its lock is taken over, their unfinished run dropped, the job runs.
    caplog.set_level("WARNING")
    assert main(["ingest", "--audio", str(tmp_path / "audio"), "--warehouse", str(wh)]) == 0
    assert "took over the writer lock of ingest" in caplog.text
    assert not (wh / LOCK_FILE).exists() and not (wh / "_staging" / "their-run").exists()
    assert Warehouse(spark, str(wh)).tables() == ["rejects", "slices", "songs"]


def test_the_writer_lock_is_reentrant_and_released(spark, tmp_path):
    from deepcrate.warehouse import LOCK_FILE, writer_lock

    wh = tmp_path / "wh"
    with writer_lock(spark, str(wh), command="rebuild", create=True):
        with writer_lock(spark, str(wh), command="ingest"):  # a stage inside the rebuild
            assert (wh / LOCK_FILE).exists()
        assert (wh / LOCK_FILE).exists()
    assert not (wh / LOCK_FILE).exists()
    with pytest.raises(RuntimeError), writer_lock(spark, str(wh), command="ingest"):
        raise RuntimeError("a job that fails")
    assert not (wh / LOCK_FILE).exists()


def test_of_many_writers_starting_at_once_exactly_one_gets_the_lock(spark, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from deepcrate.warehouse import LOCK_FILE

    store = Warehouse(spark, str(tmp_path / "wh"), create=True)
    lock = f"{store.root}/{LOCK_FILE}"
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: store._create_new(lock, f'{{"token": "{i}"}}'), range(8)))
    assert won.count(True) == 1
    assert (tmp_path / "wh" / LOCK_FILE).read_text() == f'{{"token": "{won.index(True)}"}}'
