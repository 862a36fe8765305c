"""Recommendation quality: the metrics by hand, the MFCC and timbre baselines by
independent computations, and `deepcrate evaluate` on a rebuilt demo warehouse."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import librosa
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import scipy.fft
import soundfile as sf
import soxr
from deltalake import DeltaTable

from deepcrate.audio.mfcc import mfcc_statistics, song_mfcc_features
from deepcrate.audio.timbre import RIDGE, divergence_vectors, least_divergent, least_divergent_of_blocks
from deepcrate.cli import main
from deepcrate.config import DecodeLimits
from deepcrate.errors import InputError
from deepcrate.stages.evaluate import GenreProbe, _check_evaluable
from deepcrate.storage.arrow_tables import ArrowTables
from deepcrate.vectors.moments import standard_scale, standardise, standardised, streamed_moments
from deepcrate.vectors.retrieval import (
    average_precision_at_k,
    ideal_songs,
    nearest_songs,
    nearest_songs_of_blocks,
    precision_at_k,
    random_songs,
    retrieval_scores,
)

from helpers import delta_table, make_signal, write_audio

# -- the metrics, by hand ----------------------------------------------------------------


def test_precision_and_average_precision_match_hand_computed_values():
    relevant = np.array([
        [1, 0, 1, 0, 0],  # hits at ranks 1 and 3; 3 relevant songs exist
        [0, 0, 0, 0, 0],  # no hit
        [1, 1, 0, 0, 0],  # both of the only 2 relevant songs, first: perfect
        [0, 1, 1, 1, 1],  # 4 hits after a miss; 10 relevant songs exist
    ], dtype=bool)
    n_relevant = np.array([3, 4, 2, 10])
    np.testing.assert_allclose(precision_at_k(relevant, k=5), [2 / 5, 0, 2 / 5, 4 / 5])
    np.testing.assert_allclose(precision_at_k(relevant, k=2), [1 / 2, 0, 1, 1 / 2])
    np.testing.assert_allclose(average_precision_at_k(relevant, n_relevant, k=5), [
        (1 / 1 + 2 / 3) / 3,
        0.0,
        (1 / 1 + 2 / 2) / 2,
        (1 / 2 + 2 / 3 + 3 / 4 + 4 / 5) / 5,
    ])
    # Nothing relevant in the catalogue: 0, not a division by zero.
    assert average_precision_at_k(np.zeros((1, 3), bool), np.array([0]), k=3)[0] == 0


def test_a_tiny_catalogue_with_known_neighbours():
    # Two genres in two directions; song 2 (genre a) sits nearer the b songs.
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.2, 1.0], [0.0, 1.0], [0.1, 0.9], [0.05, 1.0]])
    genres = np.array(["a", "a", "a", "b", "b", "b"], dtype=object)
    queries = np.array([0, 2, 3])
    found = nearest_songs(vectors, queries, k=3)
    cosine = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ \
        (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T
    for row, query in enumerate(queries):
        order = [p for p in np.argsort(-cosine[query], kind="stable") if p != query][:3]
        assert list(found[row]) == order
    assert list(found[0][:2]) == [1, 2]  # the a songs first, nearest first
    # The catalogue read from a table: blocks in another order, each with its songs' positions.
    blocks = iter([(np.array([4, 1]), vectors[[4, 1]].astype(np.float32)), (np.array([5, 0, 3, 2]), vectors[[5, 0, 3, 2]])])
    np.testing.assert_array_equal(nearest_songs_of_blocks(blocks, vectors[queries], queries, k=3), found)
    scores = retrieval_scores(genres, queries, found, ks=(1, 3))
    # query 0: a, a, b -> P@3 2/3; query 2 (an a among b's): b, b, b -> 0; query 3: b, b, a -> 2/3
    np.testing.assert_allclose(scores["precision_at_3"], [2 / 3, 0, 2 / 3])
    np.testing.assert_allclose(scores["precision_at_1"], [1, 0, 1])
    np.testing.assert_allclose(scores["map_at_3"], [(1 + 1) / 2, 0, (1 + 1) / 2])


def test_the_ideal_ranking_puts_the_query_genre_first_and_scores_the_ceiling():
    genres = np.array(["a", "b", "a", "c", "a", "b"], dtype=object)
    queries = np.array([0, 3, 5])
    found = ideal_songs(genres, queries, k=3)
    # by hand: the other songs of the query's genre in catalogue order, then the rest
    assert found.tolist() == [[2, 4, 1], [0, 1, 2], [1, 0, 2]]
    scores = retrieval_scores(genres, queries, found, ks=(3,))
    # 2 other a's, no other c, 1 other b: P@3 = 2/3, 0, 1/3; every list as good as it can be
    np.testing.assert_allclose(scores["precision_at_3"], [2 / 3, 0, 1 / 3])
    np.testing.assert_allclose(scores["map_at_3"], [1, 0, 1])


def test_random_neighbours_are_distinct_never_the_query_and_cover_the_catalogue():
    rng = np.random.default_rng(0)
    queries = np.arange(6)
    seen = set()
    for _ in range(200):
        found = random_songs(6, queries, k=5, rng=rng)
        for query, row in zip(queries, found):
            assert query not in row and len(set(row)) == 5 and row.min() >= 0 and row.max() < 6
        seen |= set(found[0])
    assert seen == {1, 2, 3, 4, 5}


# -- the MFCC baseline against an independent computation -----------------------------------


def reference_mfcc_frames(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """The textbook recipe written out: centred 2048-point Hann STFT (hop 512, reflect-padded),
    power, 128 Slaney mel filters, 10·log10 with an 80 dB floor, orthonormal DCT-II, first 20."""
    padded = np.pad(samples.astype(np.float64), 1024, mode="constant")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / 2048)  # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(padded, 2048)[::512]
    power = np.abs(np.fft.rfft(frames * window, axis=1)).T ** 2
    mel = librosa.filters.mel(sr=sample_rate, n_fft=2048, n_mels=128) @ power
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db, db.max() - 80.0)
    return scipy.fft.dct(db, type=2, axis=0, norm="ortho")[:20]


def reference_mfcc_statistics(mfcc: np.ndarray) -> np.ndarray:
    """Deltas by the 9-point regression formula, edges repeated; mean and std of both."""
    edge = np.pad(mfcc, ((0, 0), (4, 4)), mode="edge")
    weights = np.arange(-4, 5)
    delta = sum(w * edge[:, 4 + w:edge.shape[1] - 4 + w] for w in weights if w) / np.sum(weights ** 2)
    both = np.concatenate([mfcc, delta])
    return np.concatenate([both.mean(axis=1), both.std(axis=1)])


LIMITS = DecodeLimits(max_duration_s=600, truncated_ratio=0.9, silence_dbfs=-60)


def test_mfcc_statistics_and_gaussian_match_an_independent_computation(tmp_path):
    path = write_audio(tmp_path / "song.mp3", make_signal(8.0, channels=2, seed=3))
    features, gaussian = song_mfcc_features(path.read_bytes(), name=str(path), limits=LIMITS)
    # Decoded independently: soundfile, the mean of the channels, soxr to 22,050 Hz.
    stereo, rate = sf.read(path, dtype="float32")
    samples = soxr.resample(stereo.mean(axis=1), rate, 22050, quality="HQ")
    frames = reference_mfcc_frames(samples, 22050)
    assert features.shape == (80,)
    np.testing.assert_allclose(features, reference_mfcc_statistics(frames), rtol=1e-3, atol=1e-2)
    # And the dimensions are what they claim: the first is the mean of MFCC 0, a large negative number.
    assert features[0] < -100 and np.all(features[40:] >= 0)
    # The timbre Gaussian: the frames' mean, then their (unbiased) covariance row by row.
    assert gaussian.shape == (420,) and gaussian.dtype == np.float64
    np.testing.assert_allclose(gaussian[:20], frames.mean(axis=1), rtol=1e-3, atol=1e-2)
    covariance = gaussian[20:].reshape(20, 20)
    np.testing.assert_allclose(covariance, np.cov(frames), rtol=1e-3, atol=1e-3 * np.abs(np.cov(frames)).max())
    np.testing.assert_array_equal(covariance, covariance.T)


def test_standardise_gives_zero_mean_unit_variance_columns_and_zero_for_constant_ones():
    def streamed(features: np.ndarray, **options) -> np.ndarray:  # as evaluate does, over blocks of rows
        mean, spread = streamed_moments(features[start:start + 2] for start in range(0, len(features), 2))
        return standardised(features, mean=mean, scale=standard_scale(spread), **options)

    features = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    for out in (standardise(features), streamed(features, overwrite=False)):
        np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-6)
        np.testing.assert_allclose(out[:, [0, 2]].std(axis=0), 1, atol=1e-6)
        assert (out[:, 1] == 0).all() and out.dtype == np.float32
    # By blocks, and over the features themselves: the same numbers, no copy.
    many = np.random.default_rng(0).normal(size=(1000, 7)).astype(np.float32) * 3 + 1
    expected = ((many - many.mean(axis=0, dtype=np.float64)) / many.std(axis=0, dtype=np.float64)).astype(np.float32)
    np.testing.assert_allclose(standardise(many, block_rows=64), expected, rtol=1e-6, atol=1e-6)
    overwritten = streamed(many, overwrite=True, block_rows=64)
    assert overwritten is many and np.allclose(many, expected, atol=1e-6)


def test_the_genre_probe_is_fitted_on_at_most_its_budget_of_train_and_validation_songs_evenly_spread():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    genres = np.array(["a", "b"] * 50, dtype=object)
    splits = np.array(["train"] * 60 + ["validation"] * 20 + ["test"] * 20, dtype=object)
    features = (rng.normal(size=(100, 3)) + 1.5 * (genres == "a")[:, None]).astype(np.float32)
    queries = np.arange(80, 100)

    probe = GenreProbe(genres, splits, max_songs=10)
    assert len(probe.fitted) == 10 and probe.fitted[0] == 0 and probe.fitted[-1] == 79
    assert np.all(np.diff(probe.fitted) >= 8) and set(splits[probe.fitted]) == {"train", "validation"}
    expected = LogisticRegression(max_iter=2000).fit(features[probe.fitted], genres[probe.fitted]).predict(
        features[queries])
    np.testing.assert_array_equal(probe.answers(features[probe.fitted], features[queries]), expected)
    assert len(GenreProbe(genres, splits, max_songs=1000).fitted) == 80  # below the budget: all of them
    one_genre = GenreProbe(np.array(["a"] * 100, dtype=object), splits, max_songs=10)
    assert list(one_genre.answers(features[one_genre.fitted], features[queries])) == [None] * 20


def test_a_catalogue_that_cannot_be_evaluated_is_refused_with_its_reason():
    def catalogue(genres: list[str], splits: list[str]) -> pa.Table:
        return pa.table({"song_id": [f"s{i}" for i in range(len(genres))], "genre": genres, "split": splits},
                        schema=pa.schema([("song_id", pa.string()), ("genre", pa.string()), ("split", pa.string())]))

    refused = {
        "no labelled test songs to evaluate on": [catalogue([], []), catalogue(["a", "b"] * 10, ["train"] * 20)],
        "one genre only": [catalogue(["a"] * 20, ["test"] * 2 + ["train"] * 18)],
        "10 labelled songs; precision@10 needs a query and 10 other songs": [
            catalogue(["a", "b"] * 5, ["test"] + ["train"] * 9)],
    }
    for reason, tables in refused.items():
        for table in tables:
            with pytest.raises(InputError, match=f"^wh: {re.escape(reason)}"):
                _check_evaluable(table, where="wh")
    _check_evaluable(catalogue(["a", "b"] * 5 + ["a"], ["test"] + ["train"] * 10), where="wh")  # a query, 10 others


def test_mfcc_statistics_of_a_single_frame_do_not_fail():
    assert mfcc_statistics(np.zeros(100, np.float32) + 0.1).shape == (80,)


# -- the timbre baseline's divergence against the direct formula ----------------------------


def direct_symmetric_kl(a: np.ndarray, b: np.ndarray) -> float:
    """KL(a||b) + KL(b||a) of two packed Gaussians (20 means, 20 x 20 covariance), each
    KL written out with its log-determinants, covariances ridged as the baseline does."""
    def kl(p: np.ndarray, q: np.ndarray) -> float:
        mean_p, cov_p = p[:20], p[20:].reshape(20, 20) + RIDGE * np.eye(20)
        mean_q, cov_q = q[:20], q[20:].reshape(20, 20) + RIDGE * np.eye(20)
        inverse_q = np.linalg.inv(cov_q)
        gap = mean_q - mean_p
        return 0.5 * (np.trace(inverse_q @ cov_p) + gap @ inverse_q @ gap - 20
                      + np.linalg.slogdet(cov_q)[1] - np.linalg.slogdet(cov_p)[1])
    return kl(a, b) + kl(b, a)


def random_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    out = []
    for _ in range(n):
        mixing = rng.normal(size=(20, 20)) * rng.uniform(0.5, 3.0)
        out.append(np.concatenate([rng.normal(scale=10.0, size=20) - 50.0, (mixing @ mixing.T + np.eye(20)).ravel()]))
    return np.stack(out)


def test_timbre_divergence_is_the_symmetric_kl_divergence():
    gaussians = random_gaussians(7, np.random.default_rng(0))
    queries, database = divergence_vectors(gaussians)
    assert queries.shape == database.shape == (7, 842)
    divergence = queries @ database.T / 2 - 20
    expected = np.array([[direct_symmetric_kl(a, b) for b in gaussians] for a in gaussians])
    np.testing.assert_allclose(divergence, expected, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(np.diag(divergence), 0, atol=1e-8)
    # By hand: same mean, covariances s·I and t·I give d/2 (s/t + t/s) - d.
    mean = np.full(20, -3.0)
    spherical = np.stack([np.concatenate([mean, (s - RIDGE) * np.eye(20).ravel()]) for s in (2.0, 8.0)])
    queries, database = divergence_vectors(spherical)
    assert queries[0] @ database[1] / 2 - 20 == pytest.approx(10 * (2 / 8 + 8 / 2) - 20)


def test_least_divergent_songs_come_in_order_of_divergence():
    gaussians = random_gaussians(12, np.random.default_rng(1))
    queries = np.array([0, 5, 11])
    found = least_divergent(gaussians, queries, k=4)
    for row, query in enumerate(queries):
        divergence = np.array([direct_symmetric_kl(gaussians[query], other) for other in gaussians])
        divergence[query] = np.inf
        assert list(found[row]) == list(np.argsort(divergence, kind="stable")[:4])
    # The same answer when the catalogue is searched in blocks of 5 songs.
    np.testing.assert_array_equal(least_divergent(gaussians, queries, k=4, block=5), found)
    # ... and when it comes from a table: blocks in another order, each with its songs' positions.
    order = np.random.default_rng(2).permutation(12)
    blocks = [(order[start:start + 5], gaussians[order[start:start + 5]]) for start in range(0, 12, 5)]
    centre = gaussians[:, :20].mean(axis=0)
    np.testing.assert_array_equal(
        least_divergent_of_blocks(iter(blocks), gaussians[queries], queries, centre=centre, k=4, block=2), found)
    # A song's own Gaussian repeated is its least divergent neighbour, the query itself never.
    twin = np.vstack([gaussians, gaussians[5]])
    assert least_divergent(twin, np.array([5]), k=1)[0, 0] == 12


# -- deepcrate evaluate on a rebuilt demo warehouse -----------------------------------------


def test_evaluate_writes_the_table_with_independently_checked_numbers(rebuilt, tmp_path, capsys):
    root, _, _, out = rebuilt
    wh = root / "wh"
    assert "evaluate ran" in out and "same-genre precision@10" in out
    songs = delta_table(wh / "songs").to_pandas().set_index("song_id").sort_index()
    table = delta_table(wh / "evaluation").to_pandas()
    test = songs[(songs["split"] == "test") & songs["genre"].notna()]
    assert len(test) >= 5
    genres = sorted(test["genre"].unique())
    assert len(table) == 5 * (1 + len(genres))
    assert sorted(table["method"].unique()) == ["ideal", "mfcc", "model", "random", "timbre"]

    # The model's numbers, recomputed from song_embeddings with plain numpy.
    embeddings = delta_table(wh / "song_embeddings").to_pandas().set_index("song_id").sort_index()
    vectors = np.stack(embeddings["embedding"].to_numpy()).astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = songs.loc[embeddings.index, "genre"].to_numpy()
    position = {song: i for i, song in enumerate(embeddings.index)}
    p10, p5 = [], []
    for song in test.index:
        similarity = vectors @ vectors[position[song]]
        similarity[position[song]] = -np.inf
        order = np.argsort(-similarity, kind="stable")
        p10.append(np.mean(labels[order[:10]] == test.loc[song, "genre"]))
        p5.append(np.mean(labels[order[:5]] == test.loc[song, "genre"]))
    model = table[(table["method"] == "model") & table["genre"].isna()].iloc[0]
    assert model["songs"] == len(test)
    assert model["precision_at_10"] == pytest.approx(np.mean(p10))
    assert model["precision_at_5"] == pytest.approx(np.mean(p5))
    accuracy = np.mean(embeddings.loc[test.index, "predicted_genre"] == test["genre"])
    assert model["song_accuracy"] == pytest.approx(accuracy)
    assert model["slices"] == test["n_slices"].sum()
    # Slice accuracy: each test slice's most probable genre against its song's, overall and per genre.
    outputs = ArrowTables.current(str(wh)).metadata("slice_embeddings").labels
    test_slices = delta_table(wh / "slice_embeddings").to_pandas()
    test_slices = test_slices[test_slices["song_id"].isin(test.index)]
    test_slices["genre"] = test.loc[test_slices["song_id"], "genre"].to_numpy()
    test_slices["right"] = [outputs[int(np.argmax(p))] == g
                            for p, g in zip(test_slices["genre_probabilities"], test_slices["genre"])]
    assert len(test_slices) == model["slices"]
    assert model["slice_accuracy"] == pytest.approx(test_slices["right"].mean())
    for genre, rows in test_slices.groupby("genre"):
        row = table[(table["method"] == "model") & (table["genre"] == genre)].iloc[0]
        assert (row["slices"], row["slice_accuracy"]) == (len(rows), pytest.approx(rows["right"].mean()))

    # Random neighbours: close to what chance gives (4 of the other 34 songs share a genre).
    random = table[(table["method"] == "random") & table["genre"].isna()].iloc[0]
    assert random["precision_at_10"] == pytest.approx(4 / 34, abs=0.05)
    # The ideal ranking: min(10, other songs of the genre) / 10, counted from the songs table.
    per_genre = songs["genre"].value_counts()
    ideal = table[(table["method"] == "ideal") & table["genre"].isna()].iloc[0]
    assert ideal["precision_at_10"] == pytest.approx(np.mean([min(10, per_genre[g] - 1) / 10 for g in test["genre"]]))
    assert ideal["map_at_10"] == pytest.approx(1.0)
    # Every song has its MFCC features (ingest's, from its own decode), equal to the local computation.
    features = delta_table(wh / "mfcc_features").to_pandas().set_index("song_id").sort_index()
    assert set(features.index) == set(songs.index)
    some = test.index[0]
    path = songs.loc[some, "path"].removeprefix("file:")
    local, local_gaussian = song_mfcc_features(Path(path).read_bytes(), name=path, limits=LIMITS)
    np.testing.assert_allclose(features.loc[some, "features"], local, rtol=1e-5)
    np.testing.assert_allclose(features.loc[some, "timbre"], local_gaussian, rtol=1e-5)

    # The timbre baseline's numbers, from those Gaussians by the direct divergence formula.
    gaussians = np.stack(features["timbre"].to_numpy())
    labels = songs.loc[features.index, "genre"].to_numpy()
    timbre_p10 = []
    for song in test.index:
        query = features.index.get_loc(song)
        divergence = np.array([direct_symmetric_kl(gaussians[query], other) for other in gaussians])
        divergence[query] = np.inf
        timbre_p10.append(np.mean(labels[np.argsort(divergence, kind="stable")[:10]] == test.loc[song, "genre"]))
    timbre = table[(table["method"] == "timbre") & table["genre"].isna()].iloc[0]
    assert timbre["precision_at_10"] == pytest.approx(np.mean(timbre_p10))
    assert timbre["song_accuracy"] is None or np.isnan(timbre["song_accuracy"])

    # The CLI: the same numbers, printed and written as JSON.
    copy = tmp_path / "wh"
    shutil.copytree(wh, copy)
    assert main(["evaluate", "--warehouse", str(copy), "--json", str(tmp_path / "metrics.json")]) == 0
    printed = capsys.readouterr().out
    assert "labelled songs" in printed and "P@10" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["queries"] == len(test)
    assert metrics["methods"]["model"]["precision_at_10"] == pytest.approx(np.mean(p10))
    assert set(metrics["methods"]["mfcc"]["per_genre"]) == set(genres)
    assert metrics["methods"]["timbre"]["song_accuracy"] is None
    assert "n/a" in printed and "x the timbre baseline" in printed
    again = delta_table(copy / "evaluation").to_pandas()
    key = ["method", "genre"]
    left = table.sort_values(key, ignore_index=True)
    right = again.sort_values(key, ignore_index=True)
    assert left.equals(right)


def test_evaluate_refuses_a_warehouse_without_embeddings(spark, demo_warehouse, capsys):
    assert main(["evaluate", "--warehouse", str(demo_warehouse)]) == 2
    assert "no song_embeddings table" in capsys.readouterr().err


def test_too_few_labelled_songs_are_refused_with_a_reason(rebuilt, tmp_path, capsys):
    # The demo warehouse with the genres of all but 10 songs removed: 10 labelled songs
    # cannot rank a query's 10 neighbours, so evaluate refuses (and rebuild reports
    # "not evaluated") instead of failing inside the ranking.
    root, _, _, _ = rebuilt
    copy = tmp_path / "wh"
    shutil.copytree(root / "wh", copy)
    songs = delta_table(copy / "songs")
    frame = songs.to_pandas()
    labelled = frame[frame["genre"].notna()].sort_values("split", key=lambda s: s != "test")  # test songs first
    keep = pc.is_in(songs["song_id"], value_set=pa.array(labelled["song_id"].head(10).tolist()))
    genres = pc.if_else(keep, songs["genre"], pa.scalar(None, pa.string()))
    relabelled = songs.set_column(songs.schema.get_field_index("genre"), "genre", genres)
    (first, *others) = DeltaTable(str(copy / "songs")).file_uris()  # the committed files: the first holds all
    pq.write_table(relabelled, first)
    for uri in others:
        pq.write_table(relabelled.slice(0, 0), uri)
    before = delta_table(copy / "evaluation").to_pandas()

    assert main(["evaluate", "--warehouse", str(copy)]) == 2
    assert "10 labelled songs; precision@10 needs a query and 10 other songs" in capsys.readouterr().err
    after = delta_table(copy / "evaluation").to_pandas()
    assert after.equals(before)  # nothing published
