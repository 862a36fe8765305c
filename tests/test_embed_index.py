"""Embeddings on Spark, the FAISS index, recommendations and the recommend query."""
from __future__ import annotations

import json
import shutil
import sys

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from deepcrate.cli import main
from deepcrate.config import resolve_settings
from deepcrate.errors import InputError, ModelError
from deepcrate.models.architectures import embedding_model
from deepcrate.models.store import latest_model, read_model_folder
from deepcrate.query.recommend import Catalogue, Filters
from deepcrate.spark.session import session_conf
from deepcrate.stages.embed import embed
from deepcrate.stages.index import index_songs, recommendation_blocks
from deepcrate.stages.training import train
from deepcrate.storage.warehouse import Warehouse
from deepcrate.vectors.faiss_index import build_index, neighbours
from deepcrate.vectors.similarity import exact_top_k, normalise

from helpers import copy_warehouse, delta_frame, published_folder

FAST = ["train.batch_size=16", "train.max_epochs=3", "train.shuffle_buffer=64", "train.interleave=2"]


@pytest.fixture(scope="module")
def embedded(spark, demo_warehouse, tmp_path_factory):
    """The demo warehouse with a trained model, embeddings (in many small tasks), index, recommendations."""
    wh = copy_warehouse(demo_warehouse, tmp_path_factory.mktemp("embedded") / "wh")
    settings = resolve_settings(overrides=FAST)
    train(spark, warehouse=str(wh), settings=settings)
    with session_conf(spark, {"spark.sql.files.maxPartitionBytes": str(1 << 19)}):  # ~8 slices per task
        summary = embed(spark, warehouse=str(wh), settings=resolve_settings(overrides=["embed.batch_size=5"]))
    index_songs(spark, warehouse=str(wh), settings=settings)
    return wh, summary


def _slice_embeddings(spark, wh) -> pd.DataFrame:
    return delta_frame(spark, wh / "slice_embeddings").toPandas().sort_values(["song_id", "slice_idx"])


def test_udf_embeddings_equal_the_models_own_output_and_the_model_loads_once_per_worker(spark, embedded):
    wh, summary = embedded
    assert summary.slices == 112 and summary.songs == 56
    assert 1 <= summary.model_loads <= 2  # local[2,2]: two Python workers, reused across ~14 tasks
    got = _slice_embeddings(spark, wh)
    slices = delta_frame(spark, wh / "slices").toPandas().sort_values(["song_id", "slice_idx"])
    assert list(zip(got["song_id"], got["slice_idx"])) == list(zip(slices["song_id"], slices["slice_idx"]))

    model = read_model_folder(latest_model(Warehouse(spark, str(wh)))).load_keras()
    images = np.stack([np.frombuffer(b, np.uint8).reshape(256, 256) for b in slices["spectrogram"]])
    np.testing.assert_allclose(np.stack(got["embedding"]), np.asarray(embedding_model(model)(images)), atol=1e-5)
    np.testing.assert_allclose(np.stack(got["genre_probabilities"]), np.asarray(model(images)), atol=1e-6)


def test_a_song_vector_is_the_mean_of_its_slice_vectors(spark, embedded):
    wh, _ = embedded
    slices = _slice_embeddings(spark, wh)
    songs = delta_frame(spark, wh / "song_embeddings").toPandas().set_index("song_id")
    folder = read_model_folder(latest_model(Warehouse(spark, str(wh))))
    assert len(songs) == 56 and set(songs["model_version"]) == {folder.version}
    for song_id, group in slices.groupby("song_id"):
        row = songs.loc[song_id]
        np.testing.assert_allclose(row["embedding"], np.stack(group["embedding"]).mean(axis=0), rtol=1e-5, atol=1e-6)
        summed = np.stack(group["genre_probabilities"]).sum(axis=0)
        assert row["predicted_genre"] == folder.labels[int(summed.argmax())]
        assert row["n_slices"] == len(group) == 2
        assert sorted(row["genre_probabilities"]) == sorted(folder.labels)
        assert sum(row["genre_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("batch_rows", [1, 2, 3, 7, 100])
def test_song_vectors_from_batches_sorted_by_song_equal_a_groupby_mean_wherever_the_batches_split(batch_rows):
    from deepcrate.stages.embed import _song_vectors

    rng = np.random.default_rng(batch_rows)
    counts = {"a": 1, "b": 4, "c": 2, "d": 5, "e": 1}
    rows = pd.DataFrame({"song_id": [song for song, n in counts.items() for _ in range(n)]})
    rows["embedding"] = list(rng.normal(size=(len(rows), 4)).astype(np.float32))
    rows["genre_probabilities"] = list(rng.dirichlet(np.ones(3), size=len(rows)).astype(np.float32))
    rows["pretrained"] = None
    batches = [rows.iloc[i:i + batch_rows].reset_index(drop=True) for i in range(0, len(rows), batch_rows)]
    songs = pd.concat(list(_song_vectors(labels=["x", "y", "z"], version="v")(iter(batches)))).set_index("song_id")
    assert list(songs.index) == list(counts)  # each song once, in order
    for song_id, group in rows.groupby("song_id"):
        np.testing.assert_allclose(songs.loc[song_id, "embedding"],
                                   np.stack(group["embedding"]).astype(np.float64).mean(axis=0), rtol=1e-6, atol=1e-7)
        mean = np.stack(group["genre_probabilities"]).mean(axis=0)
        assert songs.loc[song_id, "predicted_genre"] == "xyz"[int(mean.argmax())]
        assert list(songs.loc[song_id, "genre_probabilities"].values()) == pytest.approx(mean.tolist(), rel=1e-6)
        assert songs.loc[song_id, "n_slices"] == counts[song_id] and songs.loc[song_id, "pretrained"] is None


def test_recommendations_agree_with_a_brute_force_cosine_top_k(spark, embedded):
    wh, _ = embedded
    songs = delta_frame(spark, wh / "song_embeddings").toPandas().sort_values("song_id")
    ids = songs["song_id"].to_numpy()
    vectors = np.stack(songs["embedding"]).astype(np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)  # never the song itself
    table = delta_frame(spark, wh / "recommendations").toPandas()
    assert len(table) == 56 * 10
    for position, song_id in enumerate(ids):
        mine = table[table["song_id"] == song_id].sort_values("rank")
        expected = np.argsort(-cosine[position], kind="stable")[:10]
        assert list(mine["rank"]) == list(range(1, 11))
        assert list(mine["neighbor_id"]) == list(ids[expected])
        np.testing.assert_allclose(mine["similarity"], cosine[position, expected], atol=1e-5)
    assert not (table["song_id"] == table["neighbor_id"]).any()
    names = Warehouse(spark, str(wh)).tables()
    assert {"slice_embeddings", "song_embeddings", "recommendations"} <= set(names)
    assert "evaluation" not in names  # the evaluate stage's table, not training's
    assert "index" not in names and "models" not in names
    description = json.loads((published_folder(wh, "index") / "index.json").read_text())
    assert description["kind"] == "flat" and description["songs"] == 56


def test_small_blocks_give_the_same_recommendations_as_row_groups_of_a_few_files(spark, embedded, tmp_path,
                                                                                 monkeypatch):
    import pyarrow.parquet as pq

    from deepcrate.stages import index as index_stage

    wh, _ = embedded
    copy = copy_warehouse(wh, tmp_path / "wh")
    monkeypatch.setattr(index_stage, "FILE_ROWS", 100)  # 56 songs x 10 in blocks of 8 songs: 80 rows a block
    index_songs(spark, warehouse=str(copy), settings=resolve_settings(overrides=["index.block_size=8"]))
    key = ["song_id", "rank"]
    blocked = delta_frame(spark, copy / "recommendations").toPandas().sort_values(key, ignore_index=True)
    whole = delta_frame(spark, wh / "recommendations").toPandas().sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(blocked, whole)
    files = sorted(path for path in (copy / "recommendations").rglob("*.parquet"))
    current = [path for path in files if pq.read_metadata(path).num_rows in (160, 80)]
    assert [pq.read_metadata(path).num_row_groups for path in current] == [2, 2, 2, 1]  # a file rolls past 100 rows


def test_duplicates_and_the_song_itself_are_never_recommended():
    rng = np.random.default_rng(0)
    base = normalise(rng.standard_normal((6, 8)).astype(np.float32))
    vectors = np.vstack([base, base[:1]])  # song 6 is a re-encode of song 0
    index = faiss.IndexFlatIP(8)
    index.add(vectors)
    settings = resolve_settings(overrides=["index.k=5", "index.block_size=4"]).index
    table = pd.concat(b.to_pandas() for b in recommendation_blocks(index, pa.array(list("abcdefg")),
                                                                   vectors, settings))
    assert len(table) == 7 * 5
    assert not (table["song_id"] == table["neighbor_id"]).any()
    assert not ((table["song_id"] == "a") & (table["neighbor_id"] == "g")).any()
    assert not ((table["song_id"] == "g") & (table["neighbor_id"] == "a")).any()
    # exclusions beyond the first search depth widen the search
    found = neighbours(index, vectors[:1], k=3, exclude=[{0, 1, 2, 3}], duplicate_similarity=2.0)[0]
    assert [p for p, _ in found] == [p for p in np.argsort(-(vectors @ vectors[0])) if p not in {0, 1, 2, 3}][:3]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_reach_high_recall_on_clustered_vectors(kind):
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((50, 32))
    vectors = normalise((centres[rng.integers(0, 50, 5000)] + 0.3 * rng.standard_normal((5000, 32))).astype(np.float32))
    settings = resolve_settings(overrides=["index.exact_max_songs=100",
                                                                   f"index.approximate={kind}"]).index
    index, params = build_index(vectors, settings)
    assert params["kind"] == kind and index.ntotal == 5000
    _, truth = exact_top_k(vectors, vectors[:200], 10)
    _, found = index.search(vectors[:200], 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    assert recall >= 0.9


# -- the recommend query ---------------------------------------------------------------


@pytest.fixture(scope="module")
def catalogue(embedded):
    wh, _ = embedded
    return Catalogue(str(wh), settings=resolve_settings())


def _brute_force(catalogue: Catalogue, seed_position: int, allowed: np.ndarray, k: int) -> list[str]:
    vectors = normalise(np.stack([catalogue.loaded.index.reconstruct(i) for i in range(catalogue.loaded.index.ntotal)]))
    scores = vectors @ vectors[seed_position]
    order = [p for p in np.argsort(-scores, kind="stable") if p != seed_position and allowed[p]]
    return list(catalogue.songs.index[order[:k]])


def test_filters_restrict_the_neighbours_to_matching_songs(catalogue):
    songs = catalogue.songs
    seed_id = songs.index[0]
    seed = catalogue.song_seed(seed_id)
    everyone = np.ones(len(songs), dtype=bool)
    plain = catalogue.recommend([seed], k=5, filters=Filters())
    assert list(plain["song_id"]) == _brute_force(catalogue, seed.position, everyone, 5)

    dates = pd.to_datetime(songs["release_date"])
    cut = dates.median()
    older = catalogue.recommend([seed], k=5, filters=Filters(released_before=cut.date()))
    assert list(older["song_id"]) == _brute_force(catalogue, seed.position, (dates < cut).to_numpy(), 5)
    newer = catalogue.recommend([seed], k=5, filters=Filters(released_after=cut.date()))
    assert (pd.to_datetime(newer["release_date"]) > cut).all() and len(newer) == 5

    genre = songs["genre"].iloc[-1]
    same_genre = catalogue.recommend([seed], k=3, filters=Filters(genre=genre))
    assert list(same_genre["song_id"]) == _brute_force(catalogue, seed.position, (songs["genre"] == genre).to_numpy(), 3)

    # Give the seed's artist to its two nearest songs: --exclude-artist must skip them.
    nearest = list(plain["song_id"][:2])
    original = songs["artist"].copy()
    try:
        songs.loc[nearest, "artist"] = songs.at[seed_id, "artist"]
        seed = catalogue.song_seed(seed_id)
        filtered = catalogue.recommend([seed], k=5, filters=Filters(exclude_seed_artists=True))
        assert not set(nearest) & set(filtered["song_id"])
        assert list(filtered["song_id"]) == _brute_force(catalogue, seed.position, ~songs.index.isin(nearest), 5)
    finally:
        songs["artist"] = original


def test_several_seeds_use_their_mean_and_are_never_recommended(catalogue):
    a, b = catalogue.song_seed(catalogue.songs.index[0]), catalogue.song_seed(catalogue.songs.index[1])
    results = catalogue.recommend([a, b], k=54, filters=Filters())
    assert len(results) == 54 and not {catalogue.songs.index[0], catalogue.songs.index[1]} & set(results["song_id"])
    query = normalise(((a.vector + b.vector) / 2)[None, :])[0]
    vectors = normalise(np.stack([catalogue.loaded.index.reconstruct(i) for i in range(56)]))
    scores = vectors @ query
    scores[[a.position, b.position]] = -np.inf  # the seeds themselves
    np.testing.assert_allclose(results["similarity"], np.sort(scores)[::-1][:54], atol=1e-5)


def test_a_new_file_gets_the_neighbours_of_the_same_file_ingested(catalogue):
    song_id = catalogue.songs.index[5]
    path = catalogue.songs.at[song_id, "path"].removeprefix("file:")
    by_file = catalogue.recommend([catalogue.file_seed(path)], k=8, filters=Filters())
    by_song = catalogue.recommend([catalogue.song_seed(song_id)], k=8, filters=Filters())
    assert song_id not in set(by_file["song_id"])  # itself, as a duplicate of the query
    assert list(by_file["song_id"]) == list(by_song["song_id"])
    np.testing.assert_allclose(by_file["similarity"], by_song["similarity"], atol=1e-4)


def test_seeds_by_path_file_name_and_title_and_clear_errors(catalogue, tmp_path):
    song_id = catalogue.songs.index[3]
    song = catalogue.songs.loc[song_id]
    assert catalogue.resolve(song["path"]) == song_id
    assert catalogue.resolve(song["path"].removeprefix("file:")) == song_id
    assert catalogue.resolve(song["path"].rsplit("/", 1)[-1]) == song_id
    assert catalogue.resolve(f"{song['artist']} - {song['title']}".upper()) == song_id
    with pytest.raises(InputError, match="no song matches 'no such song'"):
        catalogue.resolve("no such song")
    titles = catalogue.songs["title"].value_counts()
    if (titles > 1).any():
        with pytest.raises(InputError, match="matches .* songs by title"):
            catalogue.resolve(titles.index[0])
    (tmp_path / "noise.mp3").write_bytes(b"this is not audio")
    with pytest.raises(InputError, match="^file .*noise.mp3: .*not"):
        catalogue.file_seed(str(tmp_path / "noise.mp3"))
    with pytest.raises(InputError, match="missing.mp3: No such file"):
        catalogue.file_seed(str(tmp_path / "missing.mp3"))
    with pytest.raises(InputError, match="no such genre"):
        catalogue.recommend([catalogue.song_seed(song_id)], k=3, filters=Filters(genre="polka"))


def test_recommend_cli_prints_a_table_or_json_and_fails_in_one_line(embedded, capsys):
    wh, _ = embedded
    catalogue = Catalogue(str(wh), settings=resolve_settings())
    song_id = catalogue.songs.index[0]
    assert main(["recommend", "--warehouse", str(wh), "--song", song_id, "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("songs like") and out[1].split()[:4] == ["rank", "similarity", "title", "artist"]
    assert len(out) == 3 + 3
    assert main(["recommend", "--warehouse", str(wh), "--song", song_id, "-k", "4", "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in payload] == [1, 2, 3, 4]  # a list of row objects, as every --format json
    assert main(["recommend", "--warehouse", str(wh), "--song", "nothing like it"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no song matches" in err[0]
    assert main(["recommend", "--warehouse", str(wh), "--song", song_id, "--released-before", "June"]) == 2
    assert "expected a date" in capsys.readouterr().err


def test_a_model_from_another_preset_is_refused(spark, embedded, tmp_path):
    wh, _ = embedded
    folder = tmp_path / "mel-model"
    shutil.copytree(latest_model(Warehouse(spark, str(wh))), folder)
    settings = json.loads((folder / "spectrogram.json").read_text())
    (folder / "spectrogram.json").write_text(json.dumps({**settings, "preset": "mel", "sample_rate": 22050}))
    with pytest.raises(ModelError, match="trained on 'mel' spectrograms and the slices table holds 'seed'"):
        embed(spark, warehouse=str(wh), settings=resolve_settings(), model=str(folder))


def test_the_index_summary_says_how_many_neighbours_it_really_kept(spark, embedded, tmp_path):
    wh = copy_warehouse(embedded[0], tmp_path / "wh")
    summary = index_songs(spark, warehouse=str(wh), settings=resolve_settings(overrides=["index.k=60"]))
    ranks = delta_frame(spark, wh / "recommendations").groupBy("song_id").count().toPandas()["count"]
    assert summary.songs == 56 and (summary.fewest, summary.most) == (ranks.min(), ranks.max())
    span = str(ranks.min()) if ranks.min() == ranks.max() else f"{ranks.min()} to {ranks.max()}"
    assert ranks.max() <= 55
    assert f"recommendations: {span} per song, not index.k = 60: the catalogue has 56 songs" in summary.lines()[1]
    assert "top 10 for every song" in index_songs(spark, warehouse=str(wh), settings=resolve_settings()).lines()[1]


def test_recommend_with_a_truncated_model_says_so_in_one_line(embedded, tmp_path, monkeypatch, capsys):
    import deepcrate.models.inference

    monkeypatch.setattr(deepcrate.models.inference, "_WORKER_MODELS", {})  # no copy cached by earlier tests
    wh = copy_warehouse(embedded[0], tmp_path / "wh")
    model = next((wh / "models").iterdir()) / "model.keras"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    catalogue = Catalogue(str(wh), settings=resolve_settings())
    path = catalogue.songs.iloc[0]["path"].removeprefix("file:")
    with pytest.raises(ModelError, match=r"model\.keras cannot be loaded .*rebuild it with deepcrate train"):
        catalogue.file_seed(path)
    assert main(["recommend", "--warehouse", str(wh), "--file", path]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "model.keras cannot be loaded" in err


def test_recommend_refuses_a_model_that_would_run_code_when_loaded(embedded, tmp_path, monkeypatch, capsys):
    import keras

    import deepcrate.models.inference

    monkeypatch.setattr(deepcrate.models.inference, "_WORKER_MODELS", {})
    wh = copy_warehouse(embedded[0], tmp_path / "wh")
    folder = next((wh / "models").iterdir())
    marker = tmp_path / "code-ran"
    inputs = keras.Input((4,))
    target = str(marker)  # Keras serialises the closure; a plain string it can
    unsafe = keras.Model(inputs, keras.layers.Lambda(lambda x: x + open(target, "w").write("x"),  # noqa: SIM115
                                                     output_shape=(4,))(inputs))
    unsafe.save(folder / "model.keras")
    marker.unlink(missing_ok=True)  # building the model may have run the code; loading it must not
    catalogue = Catalogue(str(wh), settings=resolve_settings())
    path = catalogue.songs.iloc[0]["path"].removeprefix("file:")
    assert main(["recommend", "--warehouse", str(wh), "--file", path]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.keras cannot be loaded" in err and "Lambda" in err
    with pytest.raises(ModelError, match="Lambda"):
        read_model_folder(str(folder)).load_keras()
    assert not marker.exists()


def test_executors_without_tensorflow_are_refused_before_a_keras_model_embeds(spark, embedded, tmp_path):
    """The lean packed environment (make package) has no TensorFlow: embedding with a Keras model
    (the seed recipe here) there is refused in one line before any slice is read, and the
    published embeddings stay as they were."""
    wh = copy_warehouse(embedded[0], tmp_path / "wh")
    blocked = tmp_path / "no-keras"
    blocked.mkdir()
    (blocked / "sitecustomize.py").write_text("import sys\nsys.modules['keras'] = None  # as if not installed\n")
    python = tmp_path / "python-without-keras"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{blocked}:$PYTHONPATH" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    before = delta_frame(spark, wh / "slice_embeddings").count()
    context = spark.sparkContext
    executors_python, context.pythonExec = context.pythonExec, str(python)  # the Python workers jobs start
    try:
        with pytest.raises(ModelError, match="^the executors' Python has no TensorFlow, and this model embeds"):
            embed(spark, warehouse=str(wh), settings=resolve_settings())
    finally:
        context.pythonExec = executors_python
    assert delta_frame(spark, wh / "slice_embeddings").count() == before
