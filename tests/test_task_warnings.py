"""Warnings raised on executors reach the driver's log, once per distinct warning, counted (real Spark)."""
import logging
import warnings

from deepcrate.spark.task_warnings import MAX_DISTINCT, OTHERS, TaskWarnings, _Counts


def test_executor_warnings_reach_the_driver_once_each_with_their_count(spark, caplog):
    caplog.set_level(logging.WARNING, logger="deepcrate.spark.task_warnings")
    collected = TaskWarnings(spark.sparkContext)

    def work(rows):
        for row in rows:
            with collected.captured():
                if row % 2 == 0:
                    warnings.warn("an even row", UserWarning, stacklevel=1)
                if row == 7:
                    logging.getLogger("deepcrate.stages.ingest.job").warning("song %d.mp3: odd", row)
                logging.getLogger("deepcrate.stages.ingest.job").info("not a warning")
            yield row

    assert spark.sparkContext.parallelize(range(10), numSlices=4).mapPartitions(work).count() == 10
    assert collected.log(stage="ingest") == 6
    lines = [r.getMessage() for r in caplog.records if r.name == "deepcrate.spark.task_warnings"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("ingest, on the executors: UserWarning: an even row (test_task_warnings.py:")
    assert lines[0].endswith("(5 times)")
    assert lines[1] == "ingest, on the executors: deepcrate.stages.ingest.job: song 7.mp3: odd"
    assert collected.log(stage="ingest") == 0  # each is logged once

    assert spark.sparkContext.parallelize(range(2), numSlices=1).mapPartitions(work).count() == 2
    assert collected.log(stage="ingest") == 1  # only what the later job added
    assert caplog.records[-1].getMessage().startswith("ingest, on the executors: UserWarning: an even row")
    assert not caplog.records[-1].getMessage().endswith("times)")


def test_the_capture_takes_only_what_it_encloses_and_restores_pythons_handling(spark):
    collected = TaskWarnings(spark.sparkContext)
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        with collected.captured():
            warnings.warn("inside", UserWarning, stacklevel=1)
        warnings.warn("after", UserWarning, stacklevel=1)
    assert [str(w.message) for w in outside] == ["after"]
    assert [m.split(" (")[0] for m in collected.accumulator.value] == ["UserWarning: inside"]


def test_distinct_messages_are_capped_and_the_rest_counted_together():
    counts = _Counts()
    merged = counts.zero({})
    for n in range(MAX_DISTINCT + 5):
        merged = counts.addInPlace(merged, {f"message {n}": 2})
    assert len(merged) == MAX_DISTINCT + 1 and merged[OTHERS] == 10
    assert sum(merged.values()) == 2 * (MAX_DISTINCT + 5)
