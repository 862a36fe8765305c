"""Train/validation/test assignment: by song, stratified by genre, deterministic."""
from __future__ import annotations

import hashlib
import math

import pandas as pd

SPLITS = ("train", "validation", "test")


def assign_splits(
    songs: pd.DataFrame, *, train: float, validation: float, test: float, seed: int
) -> pd.Series:
    """The split of each song, aligned with ``songs.index``.

    Within each genre (unlabelled songs form a group of their own) the songs are
    ordered by a seeded hash of their ``song_id`` and cut by quota: the first
    ``round(n * train)`` go to train, then validation, the rest to test. The result
    depends only on the set of songs and the seed, never on order or machine.

    Parameters
    ----------
    songs : DataFrame
        With columns ``song_id`` and ``genre`` (may be null).
    train, validation, test : float
        Fractions summing to 1.
    seed : int
        Changing it draws a different split.
    """
    result = pd.Series(index=songs.index, dtype=object)
    keys = songs["song_id"].map(lambda sid: _order_key(sid, seed=seed))
    genres = songs["genre"].fillna("\0unlabelled")
    for _, members in keys.groupby(genres):
        ordered = members.sort_values(kind="stable").index
        n = len(ordered)
        n_validation = _round_half_up(n * validation)
        n_test = min(_round_half_up(n * test), n - n_validation)
        n_train = n - n_validation - n_test
        if train > 0 and n_train == 0 and n > 0:  # a lone song trains rather than tests
            n_train, n_validation = 1, max(n_validation - 1, 0)
            n_test = n - n_train - n_validation
        labels = ["train"] * n_train + ["validation"] * n_validation + ["test"] * n_test
        result.loc[ordered] = labels
    return result


def _order_key(song_id: str, *, seed: int) -> str:
    """A song's place in its genre's seeded order."""
    return hashlib.sha256(f"{seed}:{song_id}".encode()).hexdigest()


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5 + 1e-9)


def repair_splits(songs: pd.DataFrame, *, train: float, validation: float, seed: int) -> tuple[pd.Series, list[str]]:
    """The splits of a catalogue whose kept songs lost their balance, and a line per move.

    Kept songs keep their split so that no song a trained model has seen lands in test. But
    when files are removed, a genre can be left with train songs and no validation song
    (training would refuse it) or the other way round. Such a genre gets one song moved from
    the split it has to the one it lacks: the song :func:`assign_splits` would put there over
    the genre's songs as they are now (deterministic). Test songs never move, and nothing
    moves into test.
    """
    result = songs["split"].copy()
    moves: list[str] = []
    wanted = assign_splits(songs, train=train, validation=validation, test=max(0.0, 1 - train - validation),
                           seed=seed)
    for genre, members in songs[songs["genre"].notna()].groupby("genre"):
        splits = result[members.index]
        for lacking, source, fraction in (("validation", "train", validation), ("train", "validation", train)):
            donors = members.index[splits == source]
            if fraction <= 0 or (splits == lacking).any() or len(donors) < 2:
                continue
            ordered = songs.loc[donors, "song_id"].map(lambda sid: _order_key(sid, seed=seed)).sort_values(kind="stable")
            preferred = [i for i in ordered.index if wanted[i] == lacking]
            moved = preferred[0] if preferred else ordered.index[0]
            result[moved] = lacking
            moves.append(f"genre {genre!r} had no {lacking} song left: song {songs.loc[moved, 'song_id']} "
                         f"moved from {source} to {lacking}")
            splits = result[members.index]
    return result, moves
