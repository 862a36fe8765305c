"""Heads on pretrained features: the validation ranking that keeps them, and their average (a model soup)."""
from __future__ import annotations

import numpy as np
import pytest

from deepcrate.models.architectures import EMBEDDING_SIZE
from deepcrate.models.transfer import SliceFeatures, ValidationRanking, train_head
from deepcrate.vectors.moments import standardised

pytestmark = pytest.mark.unit


def genre_features(*, songs_per_genre: int, slices: int, seed: int, prefix: str) -> SliceFeatures:
    """3 genres told apart by features 0-1; features 2-3 are loud noise."""
    rng = np.random.default_rng(seed)
    centres = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    rows, labels, songs = [], [], []
    for genre, centre in enumerate(centres):
        for song in range(songs_per_genre):
            song_centre = centre + rng.normal(0, 0.3, 2)
            for _ in range(slices):
                rows.append([*(song_centre + rng.normal(0, 0.2, 2)), *rng.normal(0, 3.0, 2)])
                labels.append(genre)
                songs.append(f"{prefix}{genre}-{song}")
    return SliceFeatures(np.array(rows), np.array(labels, np.int32), np.array(songs, dtype=object))


def projection(rows: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    weights = np.zeros((4, EMBEDDING_SIZE))
    for feature, value in rows.items():
        weights[feature, feature] = value
    return weights, np.zeros(EMBEDDING_SIZE)


def precision_by_brute_force(train: SliceFeatures, val: SliceFeatures, weights: np.ndarray,
                             bias: np.ndarray | float = 0.0) -> float:
    """Each validation song's mean slice, through the weights, against every other song; top 10 by cosine."""
    features = np.concatenate([train.features, val.features])
    song_ids = np.concatenate([train.song_ids, val.song_ids])
    labels = np.concatenate([train.labels, val.labels])
    names = sorted(set(song_ids))
    vectors = np.array([features[song_ids == name].mean(axis=0) @ weights + bias for name in names])
    genres = np.array([labels[song_ids == name][0] for name in names])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    shares = []
    for query, name in enumerate(names):
        if name not in set(val.song_ids):
            continue
        similarity = unit @ unit[query]
        similarity[query] = -np.inf
        shares.append(np.mean(genres[np.argsort(-similarity, kind="stable")[:10]] == genres[query]))
    return float(np.mean(shares))


@pytest.fixture(scope="module")
def splits():
    return (genre_features(songs_per_genre=8, slices=5, seed=1, prefix="t"),
            genre_features(songs_per_genre=4, slices=5, seed=2, prefix="v"))


def test_the_validation_ranking_is_the_evaluations(splits):
    train, val = splits
    ranking = ValidationRanking(train.features, train, val.features, val)
    for weights in (projection({0: 1, 1: 1})[0], projection({2: 1, 3: 1})[0], projection({0: 1, 1: 1, 2: 1})[0]):
        assert ranking.score(weights, np.zeros(EMBEDDING_SIZE))[0] == pytest.approx(
            precision_by_brute_force(train, val, weights))


def test_three_heads_are_averaged_into_one_that_scores_what_it_says(splits):
    train, val = splits
    settings = {"n_classes": 3, "objective": "supcon", "batch_size": 32, "max_epochs": 4, "patience": 4,
                "learning_rate": 0.01}
    head = train_head(train, val, heads=3, seed=5, **settings)
    assert [h["seed"] for h in head.trained] == [5, 6, 7] and head.averaged == [5, 6, 7]
    # Independently: each head trained alone with its seed; the average of their weights.
    alone = [train_head(train, val, heads=1, seed=seed, **settings) for seed in (5, 6, 7)]
    assert [one.validation_precision for one in alone] == pytest.approx(
        [h["validation_precision_at_10"] for h in head.trained])
    for got, expected in zip(head.embedding, zip(*(one.embedding for one in alone))):
        np.testing.assert_allclose(got, np.mean(expected, axis=0), rtol=1e-4, atol=1e-5)
    # The folded weights apply to the raw features and score what the head says they score.
    assert precision_by_brute_force(train, val, *head.embedding) == pytest.approx(head.validation_precision)
    assert head.logits[0].shape == (EMBEDDING_SIZE, 3)


def test_standardising_in_place_gives_the_copys_values():
    rng = np.random.default_rng(5)
    features = rng.normal(3.0, 2.0, (10, 4)).astype(np.float32)
    mean, scale = features.mean(axis=0, dtype=np.float64), features.std(axis=0, dtype=np.float64)
    expected = ((features - mean) / scale).astype(np.float32)
    copy = standardised(features, mean=mean, scale=scale, overwrite=False, block_rows=3)
    np.testing.assert_array_equal(copy, expected)
    assert not np.shares_memory(copy, features)
    overwritten = standardised(features, mean=mean, scale=scale, overwrite=True, block_rows=3)
    assert np.shares_memory(overwritten, features)
    np.testing.assert_array_equal(features, expected)


def test_a_head_trained_over_its_features_is_the_head_trained_on_a_copy(splits):
    train, val = splits
    settings = {"n_classes": 3, "objective": "supcon", "batch_size": 32, "max_epochs": 3, "patience": 3,
                "learning_rate": 0.01, "heads": 2}
    owned = [SliceFeatures(part.features.astype(np.float32), part.labels, part.song_ids) for part in (train, val)]
    kept = train_head(*owned, **settings)
    over = train_head(*owned, overwrite_features=True, **settings)
    for got, expected in zip(over.embedding + over.logits, kept.embedding + kept.logits):
        np.testing.assert_array_equal(got, expected)
    stacked = np.concatenate([part.features for part in owned])  # standardised where they were
    np.testing.assert_allclose(stacked.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(stacked.std(axis=0), 1.0, rtol=1e-5)
