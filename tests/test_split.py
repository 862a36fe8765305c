import pandas as pd
import pytest

from deepcrate.stages.ingest.split import assign_splits


def catalogue(n_per_genre=40, genres=("a", "b", "c"), unlabelled=7):
    rows = [{"song_id": f"{g}{i:04x}", "genre": g} for g in genres for i in range(n_per_genre)]
    rows += [{"song_id": f"u{i:04x}", "genre": None} for i in range(unlabelled)]
    return pd.DataFrame(rows)


def split(frame, seed=0):
    return assign_splits(frame, train=0.65, validation=0.25, test=0.10, seed=seed)


def test_every_song_gets_exactly_one_split_with_exact_quotas_per_genre():
    songs = catalogue()
    songs["split"] = split(songs)
    assert songs["split"].isin(["train", "validation", "test"]).all()
    for genre, group in songs.groupby(songs["genre"].fillna("?")):
        counts = group["split"].value_counts().to_dict()
        if genre == "?":
            assert counts == {"train": 4, "validation": 2, "test": 1}  # 7 * .25 = 1.75, 7 * .1 = .7
        else:
            assert counts == {"train": 26, "validation": 10, "test": 4}


def test_split_is_independent_of_row_order_and_stable_across_calls():
    songs = catalogue()
    first = dict(zip(songs["song_id"], split(songs)))
    shuffled = songs.sample(frac=1.0, random_state=3).reset_index(drop=True)
    second = dict(zip(shuffled["song_id"], split(shuffled)))
    assert first == second


def test_seed_draws_a_different_split():
    songs = catalogue()
    assert (split(songs, seed=0) != split(songs, seed=1)).any()


@pytest.mark.parametrize("n, expected", [(1, {"train": 1}), (2, {"train": 1, "validation": 1}),
                                         (3, {"train": 2, "validation": 1})])
def test_tiny_genres_still_train(n, expected):
    songs = catalogue(n_per_genre=n, genres=("x",), unlabelled=0)
    assert split(songs).value_counts().to_dict() == expected


def test_a_genre_left_without_validation_songs_gets_one_back_from_train_and_test_never_moves():
    from deepcrate.stages.ingest.split import repair_splits

    songs = pd.DataFrame({
        "song_id": [f"s{i}" for i in range(9)],
        "genre": ["trance"] * 4 + ["house"] * 3 + ["ambient"] * 2,
        # trance lost its validation songs, house its train songs, ambient has one of each
        "split": ["train", "train", "train", "test", "validation", "validation", "test", "train", "validation"],
    })
    repaired, moves = repair_splits(songs, train=0.65, validation=0.25, seed=0)
    for genre in ("trance", "house"):
        splits = repaired[songs["genre"] == genre]
        assert {"train", "validation"} <= set(splits), genre
    assert (repaired != songs["split"]).sum() == 2 and len(moves) == 2
    assert (repaired[songs["split"] == "test"] == "test").all() and (repaired == "test").sum() == 2
    assert repaired[songs["genre"] == "ambient"].tolist() == ["train", "validation"]
    again, _ = repair_splits(songs.sample(frac=1, random_state=1), train=0.65, validation=0.25, seed=0)
    assert again.sort_index().tolist() == repaired.tolist()  # the same songs move, whatever the order
    assert any("'trance' had no validation song left" in m for m in moves)


def test_a_genre_with_one_song_left_keeps_it_in_train():
    from deepcrate.stages.ingest.split import repair_splits

    songs = pd.DataFrame({"song_id": ["a", "b"], "genre": ["x", "y"], "split": ["train", "validation"]})
    repaired, moves = repair_splits(songs, train=0.65, validation=0.25, seed=0)
    assert repaired.tolist() == ["train", "validation"] and moves == []
