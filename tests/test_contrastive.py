"""The label-free objective: slice pairs from the shuffle buffer, and the pair loss."""
from __future__ import annotations

import numpy as np

from deepcrate.models.architectures import pair_contrastive_loss
from deepcrate.storage.arrow_tables import ArrowTables

from helpers import delta_table


def test_pairs_are_two_different_slices_of_one_song_and_a_song_once_per_batch(demo_warehouse):
    table = ArrowTables.current(str(demo_warehouse)).slice_table(image_shape=(256, 256))
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
    assert good < 0.1
    assert bad > 2.0


def test_an_unlabelled_catalogue_gets_an_embedding_only_model_and_recommendations(spark, tmp_path, capsys):
    """No genres at all: the contrastive objective still trains, embed and index run, evaluate is skipped."""
    import json
    import shutil

    import keras

    from deepcrate.audio.demo import write_demo_catalogue
    from deepcrate.cli import main
    from deepcrate.models.architectures import embedding_model  # noqa: F401  registers the custom layers

    labelled = tmp_path / "labelled"
    write_demo_catalogue(labelled, songs_per_genre=2, seconds=11.0, seed=7, genres=("trance", "hip_hop", "rock_indie"))
    audio = tmp_path / "audio"  # one flat folder, no manifest: no genre anywhere
    audio.mkdir()
    for file in labelled.glob("*/*.mp3"):
        shutil.copyfile(file, audio / f"{file.parent.name}-{file.name}")
    wh = tmp_path / "wh"
    assert main(["rebuild", "--audio", str(audio), "--warehouse", str(wh), "--set", "train.objective=contrastive",
                 "--set", "train.max_epochs=2", "--set", "train.batch_size=8",
                 "--set", "split.train=0.5", "--set", "split.validation=0.34", "--set", "split.test=0.16"]) == 0
    out = capsys.readouterr().out
    assert "not evaluated" in out and "test song accuracy n/a" in out

    (model_dir,) = (wh / "models").iterdir()
    assert json.loads((model_dir / "labels.json").read_text()) == []
    assert not (model_dir / "metrics.json").exists()
    encoder = keras.models.load_model(model_dir / "model.keras", compile=False)
    assert encoder.output_names == ["embedding"]

    slices = delta_table(wh / "slices").to_pandas()
    songs = delta_table(wh / "song_embeddings").to_pandas().set_index("song_id")
    assert len(songs) == 6 and songs["predicted_genre"].isna().all()
    assert all(len(p) == 0 for p in songs["genre_probabilities"])
    for song_id, group in slices.groupby("song_id"):  # the song vector: the encoder's mean over its slices
        images = np.stack([np.frombuffer(b, np.uint8).reshape(256, 256) for b in group["spectrogram"]])
        expected = np.asarray(encoder(images, training=False)).mean(axis=0)
        np.testing.assert_allclose(songs.loc[song_id, "embedding"], expected, atol=1e-4)

    recommendations = delta_table(wh / "recommendations").to_pandas()
    assert (recommendations.groupby("song_id").size() == 5).all() and len(recommendations) == 30
    assert not (recommendations["song_id"] == recommendations["neighbor_id"]).any()
