"""The label-free objective: slice pairs from the shuffle buffer, and the pair loss."""
from __future__ import annotations

import numpy as np

from deepcrate.model import pair_contrastive_loss
from deepcrate.slice_reader import SliceTable


def test_pairs_are_two_different_slices_of_one_song_and_a_song_once_per_batch(demo_warehouse):
    table = SliceTable(str(demo_warehouse / "slices"), image_shape=(256, 256))
    for buffer_size in (16, 4096):  # pairs emitted while reading, and all at the end
        seen = []
        for batch in table.paired_batches(split="train", batch_size=8, buffer_size=buffer_size, interleave=2,
                                          seed=1):
            assert 4 <= len(batch.song_ids) <= 8 and len(batch.song_ids) % 2 == 0
            first, second = batch.song_ids[0::2], batch.song_ids[1::2]
            assert (first == second).all() and len(set(first)) == len(first)
            assert (batch.slice_idx[0::2] != batch.slice_idx[1::2]).all()
            seen += list(zip(batch.song_ids, batch.slice_idx))
        assert len(seen) == len(set(seen))  # no slice twice in one pass
        train_songs = {s for s, split in zip(*(table.dataset.to_table(columns=["song_id", "split"]).column(c)
                                               .to_pylist() for c in ("song_id", "split"))) if split == "train"}
        assert {s for s, _ in seen} <= train_songs and len({s for s, _ in seen}) >= len(train_songs) - 1


def test_the_pair_loss_is_low_when_partners_agree_and_high_when_they_do_not():
    rng = np.random.default_rng(0)
    songs = rng.normal(size=(6, 16)).astype(np.float32)
    aligned = np.repeat(songs, 2, axis=0)  # rows 2i and 2i+1 identical
    swapped = aligned.copy()
    swapped[1::2] = np.roll(songs, 1, axis=0)  # each row's partner is another song
    dummy = np.zeros(12, np.int32)
    good = float(np.mean(pair_contrastive_loss(dummy, aligned)))
    bad = float(np.mean(pair_contrastive_loss(dummy, swapped)))
    assert good < 0.1 < 2.0 < bad
