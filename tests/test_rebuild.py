"""The rebuild job: all stages, skipping what is up to date, incremental, faults, bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from deepcrate.cli import main
from deepcrate.config import resolve_settings, to_mapping
from deepcrate.errors import InputError, ModelError, WarehouseError
from deepcrate.spark.faults import INJECT_FAILURE
from deepcrate.stages.index import index_songs
from deepcrate.stages.pipeline import Outcome, Stage
from deepcrate.stages.rebuild import STAGES, rebuild
from deepcrate.storage.schemas import TABLES as SCHEMAS
from deepcrate.storage.schemas import Table
from deepcrate.storage.warehouse import Warehouse

from helpers import delta_frame, delta_table, make_signal, table_metadata, write_audio

TABLES = ["songs", "slices", "rejects", "slice_embeddings", "song_embeddings", "recommendations"]
KEYS = {"songs": ["song_id"], "slices": ["song_id", "slice_idx"], "rejects": ["path"],
        "slice_embeddings": ["song_id", "slice_idx"], "song_embeddings": ["song_id"],
        "recommendations": ["song_id", "rank"]}


def snapshot(wh, *, drop=()) -> dict[str, pd.DataFrame]:
    """Every table as a frame sorted by its key; vectors and maps become float arrays."""
    tables = {}
    for name in TABLES:
        frame = delta_table(wh / name).to_pandas()
        for column in frame.columns:
            if frame[column].map(lambda v: isinstance(v, (np.ndarray, list))).any():
                frame[column] = frame[column].map(lambda v: np.asarray(
                    [p[1] for p in v] if len(v) and isinstance(v[0], tuple) else v, dtype=np.float64))
        frame = frame.drop(columns=[c for c in drop if c in frame.columns])
        tables[name] = frame.sort_values(KEYS[name], ignore_index=True)
    return tables


def assert_same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    """Equal rows; vectors equal to 1e-5 (TensorFlow on CPU is not bit-exact across batch sizes)."""
    for name in TABLES:
        vectors = [c for c in a[name].columns if len(a[name]) and isinstance(a[name][c].iloc[0], np.ndarray)]
        pd.testing.assert_frame_equal(a[name].drop(columns=vectors), b[name].drop(columns=vectors),
                                      check_dtype=False, obj=name)
        for column in vectors:
            np.testing.assert_allclose(np.stack(a[name][column]), np.stack(b[name][column]), atol=1e-5,
                                       err_msg=f"{name}.{column}")


def test_rebuild_runs_every_stage_then_skips_them_all(rebuilt, capsys):
    root, _, args, out = rebuilt
    assert "35 songs, 70 slices, 1 rejects" in out
    for stage in ("ingest", "train", "embed", "index", "evaluate"):
        assert f"  {stage:<8} ran" in out
    assert "  features unused       0.0 s  train.model=seed learns from the slices" in out  # the tests' seed recipe
    assert "rejected, not_audio: 1" in out and "test song accuracy" in out and "deepcrate sql" in out
    for name in TABLES + ["evaluation"]:
        assert (root / "wh" / name / "_delta_log").is_dir(), name
    recommendations = delta_table(root / "wh" / "recommendations").to_pandas()
    assert recommendations["song_id"].nunique() == 35 and (recommendations["song_id"] != recommendations["neighbor_id"]).all()
    before = snapshot(root / "wh")

    assert main(args) == 0  # the same inputs: nothing to do
    out = capsys.readouterr().out
    for stage in ("ingest", "train", "embed", "index", "evaluate"):
        assert f"  {stage:<8} skipped" in out
    assert len(list((root / "wh" / "models").iterdir())) == 1
    assert_same_tables(before, snapshot(root / "wh"))
    assert len(list((root / "wh" / "_runs").glob("0*.json"))) == 1  # nothing published: no new run


def test_rebuilding_twice_from_scratch_gives_identical_tables(spark, rebuilt, tmp_path):
    root, manifest, _, _ = rebuilt
    model = next((root / "wh" / "models").iterdir())
    settings = resolve_settings()
    kwargs = {"audio": str(root / "audio"), "manifest": str(manifest), "warehouse": str(tmp_path / "wh"),
              "settings": settings, "model": str(model)}
    first = rebuild(spark, **kwargs, force=True)
    tables = snapshot(tmp_path / "wh")
    second = rebuild(spark, **kwargs, force=True)
    assert [s.status for s in first.stages] == [s.status for s in second.stages] == ["ran", "unused", "given", "ran", "ran", "ran"]
    assert_same_tables(tables, snapshot(tmp_path / "wh"))
    assert_same_tables(tables, snapshot(root / "wh"))  # the CLI's run, with training, embeds the same way


def test_adding_songs_ingests_and_embeds_only_them(spark, rebuilt, tmp_path, capsys):
    root, _, _, _ = rebuilt
    audio, wh = tmp_path / "audio", tmp_path / "wh"
    shutil.copytree(root / "audio", audio)
    model = next((root / "wh" / "models").iterdir())
    args = ["rebuild", "--audio", str(audio), "--manifest", str(audio / "manifest.csv"), "--warehouse", str(wh),
            "--model", str(model)]
    assert main(args) == 0
    before = delta_table(wh / "songs").to_pandas().set_index("song_id")["split"]
    capsys.readouterr()
    # Two new songs (with glob characters in their names), one song removed.
    write_audio(audio / "trance" / "new [live] {1}.mp3", make_signal(11, seed=40))
    write_audio(audio / "rock_indie" / "new*2.mp3", make_signal(11, seed=41))
    removed = min((audio / "downtempo").glob("*.mp3"))
    removed.unlink()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "36 songs, 72 slices, 1 rejects" in out
    assert "3 files decoded" in out  # the two new ones and the earlier reject, which may have been fixed
    assert "4 slices embedded" in out and "index    ran" in out
    songs = delta_table(wh / "songs").to_pandas()
    assert not songs["path"].str.endswith(removed.name).any()
    new = songs[songs["path"].str.contains("new")]
    assert len(new) == 2 and new["genre"].isna().all()  # not in the manifest: unlabelled
    kept = songs[~songs["path"].str.contains("new")].set_index("song_id")["split"]
    moved = kept != before.reindex(kept.index)  # only where a removal left a genre without validation songs
    assert moved.sum() <= 1 and (kept[moved] == "validation").all() and (before[moved.index[moved]] == "train").all()

    # The same catalogue rebuilt from scratch with the same model: the same tables,
    # except the split, which an incremental ingest keeps for the songs it already had.
    rebuild(spark, audio=str(audio), manifest=str(audio / "manifest.csv"), warehouse=str(tmp_path / "full"),
            settings=resolve_settings(), model=str(model), force=True)
    assert_same_tables(snapshot(wh, drop=["split"]), snapshot(tmp_path / "full", drop=["split"]))


def test_a_task_that_fails_mid_stage_is_retried_without_duplicates(spark, rebuilt, tmp_path):
    root, manifest, _, _ = rebuilt
    model = next((root / "wh" / "models").iterdir())
    context = spark.sparkContext
    context.setJobGroup("fault-injection", "rebuild with failing first attempts")
    context.setLocalProperty(INJECT_FAILURE, "ingest,embed")
    try:
        summary = rebuild(spark, audio=str(root / "audio"), manifest=str(manifest), warehouse=str(tmp_path / "wh"),
                          settings=resolve_settings(overrides=["embed.batch_size=4"]), model=str(model))
    finally:
        context.setLocalProperty(INJECT_FAILURE, None)
        context.setLocalProperty("spark.jobGroup.id", None)
    tracker = context.statusTracker()
    stages = [s for j in tracker.getJobIdsForGroup("fault-injection") for s in tracker.getJobInfo(j).stageIds]
    failed = sum(tracker.getStageInfo(s).numFailedTasks for s in stages if tracker.getStageInfo(s))
    assert failed >= 2  # the decoding task and the embedding task each failed once
    assert (summary.songs, summary.slices) == (35, 70)
    tables = snapshot(tmp_path / "wh")
    for name in ("slices", "slice_embeddings"):
        assert not tables[name].duplicated(["song_id", "slice_idx"]).any()
    assert_same_tables(tables, snapshot(root / "wh"))


def test_bad_input_fails_before_any_work(spark, rebuilt, tmp_path):
    root, _, _, _ = rebuilt
    settings = resolve_settings()
    with pytest.raises(InputError, match="no such folder"):
        rebuild(spark, audio=str(tmp_path / "missing"), warehouse=str(tmp_path / "wh"), settings=settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no files"):
        rebuild(spark, audio=str(tmp_path / "empty"), warehouse=str(tmp_path / "wh"), settings=settings)
    (tmp_path / "file").write_text("x")
    with pytest.raises(WarehouseError, match="not writable"):
        rebuild(spark, audio=str(root / "audio"), warehouse=str(tmp_path / "file" / "wh"), settings=settings)
    model = next((root / "wh" / "models").iterdir())
    with pytest.raises(ModelError, match="trained on 'seed' spectrograms.*re-ingest with spectrogram.preset=seed"):
        rebuild(spark, audio=str(root / "audio"), warehouse=str(tmp_path / "wh2"), model=str(model),
                settings=resolve_settings(overrides=["spectrogram.preset=mel"]))
    assert not (tmp_path / "wh2" / "songs").exists()


def test_the_rebuilt_tables_are_delta_tables_and_spark_reads_what_delta_rs_reads(spark, rebuilt, capsys):
    from deltalake import DeltaTable

    root, _, _, _ = rebuilt
    wh = root / "wh"
    store = Warehouse(spark, str(wh))
    assert store.tables() == ["evaluation", "mfcc_features", "recommendations", "rejects", "slice_embeddings",
                              "slices", "song_embeddings", "songs"]
    for name in store.tables():
        ours = store.read(name).toPandas()
        theirs = DeltaTable(str(wh / name)).to_pyarrow_table().to_pandas()
        assert list(ours.columns) == list(theirs.columns) and len(ours) == len(theirs) > 0, name
        key = [c for c in ours.columns if ours[c].map(lambda v: isinstance(v, (str, int, float))).all()]
        pd.testing.assert_frame_equal(ours.sort_values(key, ignore_index=True)[key],
                                      theirs.sort_values(key, ignore_index=True)[key], check_dtype=False)
    # the whole rebuild is one published run; history shows it
    assert main(["history", "--warehouse", str(wh), "--format", "json"]) == 0
    (latest, *_) = json.loads(capsys.readouterr().out)
    assert latest["command"] == "rebuild" and latest["rows"]["songs"] == len(store.read("songs").toPandas())
    assert {"songs", "slices", "recommendations", "evaluation", "index"} <= set(latest["changed"])


def test_a_config_that_still_sets_the_removed_table_format_is_told_what_changed(rebuilt, tmp_path, capsys):
    root, _, _, _ = rebuilt
    code = main(["ingest", "--audio", str(root / "audio"), "--warehouse", str(tmp_path / "wh"),
                 "--set", "warehouse.table_format=parquet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "warehouse.table_format was removed: every warehouse is Delta now" in err
    assert not (tmp_path / "wh").exists()


def test_the_warehouse_records_what_each_stage_published_and_from_what(rebuilt):
    root, _, _, _ = rebuilt
    wh = root / "wh"
    records = {path.stem: json.loads(path.read_text()) for path in (wh / "_stages").glob("*.json")}
    assert sorted(records) == ["embed", "evaluate", "index", "ingest", "train"]
    assert len({r["fingerprint"] for r in records.values()}) == 5
    for stage, tables in (("ingest", ["songs", "slices", "rejects", "mfcc_features"]),
                          ("embed", ["slice_embeddings", "song_embeddings"]),
                          ("index", ["recommendations"]), ("evaluate", ["evaluation"])):
        assert sorted(records[stage]["versions"]) == sorted(tables)
        for table in tables:  # the run that published each table, as its metadata says
            assert records[stage]["versions"][table] == table_metadata(wh, table)["run"]
    model = next((wh / "models").iterdir())
    assert records["train"]["versions"] == {f"models/{model.name}": model.name}
    assert json.loads((model / "train.json").read_text())["fingerprint"] == records["train"]["fingerprint"]


class SongCounts(Stage):
    """A toy stage a later issue might add: songs per genre, from the songs table."""

    name = "song_counts"
    after = ("ingest",)
    writes = ("song_counts",)

    def __init__(self):
        self.runs = 0

    def settings(self, settings):
        return to_mapping(settings.split)

    def run(self, context, *, fingerprint):
        self.runs += 1
        store = context.store
        counts = store.read(Table.SONGS).groupBy("genre").count().select("genre", F.col("count").cast("int"))
        run = store.begin_run()
        store.write_table(run, "song_counts", counts)
        store.publish(run, ["song_counts"])
        return Outcome(f"{counts.count()} genres")


def test_a_new_stage_is_one_class_and_one_line_and_is_skipped_when_up_to_date(spark, rebuilt, tmp_path, monkeypatch):
    root, manifest, _, _ = rebuilt
    monkeypatch.setitem(SCHEMAS, "song_counts", pa.schema([("genre", pa.string()), ("count", pa.int32())]))
    toy = SongCounts()
    kwargs = {"audio": str(root / "audio"), "manifest": str(manifest), "warehouse": str(tmp_path / "wh"),
              "model": str(next((root / "wh" / "models").iterdir())), "stages": (*STAGES, toy)}
    first = rebuild(spark, settings=resolve_settings(), **kwargs)
    assert [(s.name, s.status) for s in first.stages] == [
        ("ingest", "ran"), ("features", "unused"), ("train", "given"), ("embed", "ran"), ("index", "ran"), ("evaluate", "ran"),
        ("song_counts", "ran")]
    counts = {r["genre"]: r["count"] for r in delta_frame(spark, tmp_path / "wh" / "song_counts").collect()}
    songs = pd.read_csv(manifest)
    assert sum(counts.values()) == 35 and counts["trance"] == (songs["genre"] == "trance").sum()

    second = rebuild(spark, settings=resolve_settings(), **kwargs)
    assert [s.status for s in second.stages] == ["skipped", "unused", "given", "skipped", "skipped", "skipped", "skipped"]
    assert toy.runs == 1

    # Another job replaced the recommendations: only the index runs again.
    index_songs(spark, warehouse=str(tmp_path / "wh"), settings=resolve_settings())
    third = rebuild(spark, settings=resolve_settings(), **kwargs)
    assert [s.status for s in third.stages] == ["skipped", "unused", "given", "skipped", "ran", "skipped", "skipped"]

    # A setting the toy declares changes its fingerprint (and ingest's): both run again.
    fourth = rebuild(spark, settings=resolve_settings(overrides=["split.seed=5"]), **kwargs)
    assert fourth.stages[0].status == "ran" and fourth.stages[-1].status == "ran" and toy.runs == 2


def test_history_as_of_rollback_and_vacuum_from_the_command_line(rebuilt, tmp_path, capsys):
    root, _, _, _ = rebuilt
    wh = tmp_path / "wh"
    shutil.copytree(root / "wh", wh)
    before = delta_table(wh / "recommendations").to_pandas().sort_values(["song_id", "rank"], ignore_index=True)
    assert main(["index", "--warehouse", str(wh), "--set", "index.k=3"]) == 0  # run 2: 3 per song
    capsys.readouterr()
    assert main(["history", "--warehouse", str(wh)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "time", "command", "files"] and set(lines[1]) == {"-", " "}
    assert lines[2].startswith("2 ") and lines[2].split()[2:] == ["index_songs", "kept"]
    assert lines[3] == "    changed: recommendations, index" and lines[4].startswith("    rows:    evaluation ")
    assert f" recommendations {3 * before['song_id'].nunique()}," in lines[4]  # run 2's: 3 per song
    assert any(line.startswith("1 ") and line.split()[2:] == ["rebuild", "kept"] for line in lines)
    assert main(["history", "--warehouse", str(wh), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0]["config"]["index"]["k"] == 3 and records[1]["config"]["train"]["max_epochs"] == 2  # issue 42
    count = 'SELECT count(*) AS n FROM recommendations'
    assert main(["sql", "--warehouse", str(wh), "--format", "csv", count]) == 0
    assert capsys.readouterr().out.splitlines()[1] == str(3 * before["song_id"].nunique())
    assert main(["sql", "--warehouse", str(wh), "--format", "csv", "--as-of", "1", count]) == 0
    assert capsys.readouterr().out.splitlines()[1] == str(len(before))

    assert main(["rollback", "--warehouse", str(wh), "--to", "1"]) == 0
    assert "run 3: the tables of run 1 are current again (changed: recommendations, index)" in capsys.readouterr().out
    after = delta_table(wh / "recommendations").to_pandas().sort_values(["song_id", "rank"], ignore_index=True)
    pd.testing.assert_frame_equal(after, before)  # row for row
    assert main(["recommend", "--warehouse", str(wh), "--song", before["song_id"][0], "-k", "10", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 10  # run 1's index and songs again

    assert main(["vacuum", "--warehouse", str(wh), "--keep", "1", "--dry-run"]) == 0
    *listed, summary = capsys.readouterr().out.splitlines()
    assert listed and all((wh / line.split("\t")[0]).is_file() for line in listed)  # nothing deleted yet
    assert summary == f"dry run: vacuum would delete {len(listed)} files " \
        f"({sum(int(line.split(chr(9))[1]) for line in listed) / 1e6:.1f} MB); nothing was deleted"
    assert main(["vacuum", "--warehouse", str(wh), "--keep", "1"]) == 0
    assert f"vacuum: deleted {len(listed)} files" in capsys.readouterr().out
    assert not any((wh / line.split("\t")[0]).exists() for line in listed)
    assert main(["sql", "--warehouse", str(wh), "--as-of", "2", count]) == 2
    assert "files of run 2 were vacuumed" in capsys.readouterr().err
    assert main(["sql", "--warehouse", str(wh), "--format", "csv", count]) == 0  # the current run reads on
    assert capsys.readouterr().out.splitlines()[1] == str(len(before))
