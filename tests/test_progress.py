"""Progress lines move while a task runs, not only when it ends (real Spark, one long task)."""
import logging
import pickle
import re
import time

from deepcrate.spark.progress import LiveCount, Progress
from deepcrate.spark.session import live_count


def test_progress_moves_while_a_single_task_runs(spark, caplog):
    caplog.set_level(logging.INFO, logger="deepcrate.spark.progress")
    count = live_count(spark)

    def slow(rows):
        for row in rows:
            time.sleep(0.04)  # one task of ~3 s: an accumulator alone would show 0/80 until its end
            count.add(1)
            yield row

    with Progress(label="items", total=80, done=count, interval_s=0.3):
        assert spark.sparkContext.parallelize(range(80), numSlices=1).mapPartitions(slow).count() == 80
    counts = [int(m.group(1)) for m in (re.search(r"items: (\d+)/80 \(", r.getMessage()) for r in caplog.records) if m]
    assert any(0 < n < 80 for n in counts), counts  # seen part-way through the only task
    assert counts == sorted(counts)
    assert "items: 80/80 in" in caplog.text
    assert count.accumulator.value == 80  # the exact count is the accumulator's


def test_a_live_count_travels_without_its_socket(spark):
    count = LiveCount(spark.sparkContext.accumulator(0), driver_host="127.0.0.1")
    copy = pickle.loads(pickle.dumps(count.sender))
    assert copy.address == count.sender.address and copy._socket is None
    count.close()
    unreachable = LiveCount(spark.sparkContext.accumulator(0), driver_host=None)
    unreachable.add(3)  # no driver to tell: the accumulator alone counts
    assert unreachable.value == 3
