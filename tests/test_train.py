"""Training and evaluation: model shapes, song voting, a real training run, resume, bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.cli import main
from deepcrate.config import resolve_settings
from deepcrate.errors import ModelError, TrainingError
from deepcrate.models.architectures import EMBEDDING_LAYER, OUTPUT_LAYER, build_model, embedding_model
from deepcrate.models.store import latest_model, read_model_folder
from deepcrate.stages.training import train
from deepcrate.storage.arrow_tables import ArrowTables
from deepcrate.storage.schemas import Table
from deepcrate.storage.spark_schemas import spark_schema
from deepcrate.storage.table_metadata import IngestMetadata
from deepcrate.storage.warehouse import Warehouse
from deepcrate.vectors.genre_accuracy import Evaluation, vote_songs

from helpers import copy_warehouse, delta_frame

FAST = ["train.batch_size=16", "train.progress_interval_s=1", "train.shuffle_buffer=64", "train.interleave=2"]


# -- the models ------------------------------------------------------------------------


def test_seed_model_is_the_original_architecture():
    model = build_model(preset="seed", n_classes=9)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [64, 128, 256, 512]
    assert all(c.kernel_size == (2, 2) and c.strides == (2, 2) for c in convs)
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert [p.pool_size for p in pools] == [(2, 2)] * 4
    # conv weights (2x2 kernels + bias), Dense 512->128, Dense 128->9: the original's ~755k
    expected = sum(4 * i * o + o for i, o in ((1, 64), (64, 128), (128, 256), (256, 512))) + 512 * 128 + 128 + 128 * 9 + 9
    assert model.count_params() == expected == 756_169
    names = [layer.name for layer in model.layers]
    embedding = model.get_layer(EMBEDDING_LAYER)
    assert embedding.units == 128 and embedding.activation.__name__ == "linear"  # before its ELU
    assert names[names.index(EMBEDDING_LAYER) + 1 :] == ["embedding_elu", "dropout", "logits", OUTPUT_LAYER]
    assert model.get_layer("dropout").rate == 0.5


@pytest.mark.parametrize("preset", ["seed", "improved"])
def test_presets_take_raw_slices_and_expose_the_embedding(preset):
    model = build_model(preset=preset, n_classes=5)
    assert tuple(model.input.shape) == (None, 256, 256) and model.input.dtype == "uint8"
    assert tuple(model.output.shape) == (None, 5)
    x = np.random.default_rng(0).integers(0, 256, (3, 256, 256), dtype=np.uint8)
    probabilities = np.asarray(model(x, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    embeddings = np.asarray(embedding_model(model)(x, training=False))
    assert embeddings.shape == (3, 128)
    # the inference path is deterministic: augmentation and dropout are off
    np.testing.assert_array_equal(probabilities, np.asarray(model(x, training=False)))


def test_improved_augmentation_changes_training_inputs_only():
    model = build_model(preset="improved", n_classes=3)
    x = np.full((2, 256, 256), 128, dtype=np.uint8)
    augmented = keras.Model(model.input, model.get_layer("frequency_mask").output)
    assert not np.array_equal(np.asarray(augmented(x, training=True)), np.asarray(augmented(x, training=False)))
    np.testing.assert_allclose(np.asarray(augmented(x, training=False))[..., 0], 128 / 255, rtol=1e-6)


# -- song voting and metrics -------------------------------------------------------------


def test_song_vote_sums_probabilities_rather_than_counting_argmaxes():
    song_ids = np.array(["b", "a", "a", "a", "b"])
    probabilities = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6], [0.3, 0.7]])
    songs, votes = vote_songs(song_ids, probabilities)
    assert list(songs) == ["a", "b"]
    # song a: two of three slices say class 1, but the sums are 1.7 vs 1.3: class 0
    np.testing.assert_allclose(votes, [[1.7, 1.3], [0.5, 1.5]])

    evaluation = Evaluation.from_predictions(
        model_version="v", labels=["house", "trance"], song_ids=song_ids,
        true_labels=np.array([1, 0, 0, 0, 1]), probabilities=probabilities,
    )
    metrics = evaluation.metrics()
    assert metrics["slice_accuracy"] == pytest.approx(3 / 5)  # slices 0, 1, 4 right
    assert metrics["song_accuracy"] == 1.0
    assert metrics["confusion"]["matrix"] == [[1, 0], [0, 1]]
    assert metrics["per_genre"]["house"] == {"songs": 1, "slices": 3, "song_accuracy": 1.0,
                                             "slice_accuracy": pytest.approx(1 / 3), "most_confused_with": None}


# -- the slice reader --------------------------------------------------------------------


def test_shuffled_reader_yields_every_slice_once_in_a_seeded_order(demo_warehouse):
    table = ArrowTables.current(str(demo_warehouse)).slice_table(image_shape=(256, 256))
    labels = sorted(g for g in table.genre_counts()["train"] if g)
    ordered = [(s, i) for b in table.batches(split="train", labels=labels, batch_size=7)
               for s, i in zip(b.song_ids, b.slice_idx)]

    def shuffled(seed):
        batches = list(table.shuffled_batches(split="train", labels=labels, batch_size=8,
                                              buffer_size=16, interleave=2, seed=seed))
        assert all(len(b.labels) <= 8 for b in batches)
        return [(s, i) for b in batches for s, i in zip(b.song_ids, b.slice_idx)]

    first, again, other = shuffled(1), shuffled(1), shuffled(2)
    assert sorted(first) == sorted(ordered) and len(set(first)) == len(first) == 70  # 35 songs x 2
    assert first == again and first != other and first != ordered


# -- training end to end ---------------------------------------------------------------


def test_training_lowers_the_loss_and_publishes_a_consistent_model(spark, demo_warehouse, tmp_path, capsys):
    wh = copy_warehouse(demo_warehouse, tmp_path / "wh")
    code = main(["train", "--warehouse", str(wh), "--set", "train.max_epochs=6", "--set", "train.patience=6",
                 *[a for s in FAST for a in ("--set", s)]])
    assert code == 0
    printed = capsys.readouterr().out
    assert "song accuracy" in printed and "per genre" in printed

    folder = read_model_folder(latest_model(Warehouse(spark, str(wh))))
    songs = delta_frame(spark, wh / "songs").toPandas()
    assert folder.labels == sorted(songs["genre"].unique())
    assert folder.spectrogram == SpectrogramSettings.of(resolve_settings().spectrogram)
    history = json.loads((Path(folder.path) / "history.json").read_text())
    assert len(history["loss"]) == 6 and history["loss"][-1] < history["loss"][0]

    # Independently of the training code: read the test slices with Spark, predict, vote.
    model = folder.load_keras()
    test = delta_frame(spark, wh / "slices").filter("split = 'test'").toPandas()
    images = np.stack([np.frombuffer(b, np.uint8).reshape(256, 256) for b in test["spectrogram"]])
    probabilities = np.asarray(model(images, training=False))
    truth = test["genre"].map(folder.labels.index).to_numpy()
    by_song = pd.DataFrame(probabilities).groupby(test["song_id"].to_numpy()).sum()
    song_truth = test.groupby("song_id")["genre"].first().map(folder.labels.index)
    song_accuracy = float((by_song.to_numpy().argmax(axis=1) == song_truth.loc[by_song.index].to_numpy()).mean())

    metrics = json.loads((Path(folder.path) / "metrics.json").read_text())
    assert metrics["test_songs"] == int((songs["split"] == "test").sum()) == 7
    assert metrics["test_slices"] == len(test)
    assert metrics["song_accuracy"] == pytest.approx(song_accuracy)
    assert metrics["slice_accuracy"] == pytest.approx(float((probabilities.argmax(axis=1) == truth).mean()), abs=1e-6)
    matrix = np.array(metrics["confusion"]["matrix"])
    assert matrix.sum() == 7 and np.trace(matrix) / 7 == pytest.approx(metrics["song_accuracy"])

    assert not (wh / "evaluation").exists()  # the evaluate stage's table: one writer
    for png in ("confusion.png", "training.png"):
        data = (Path(folder.path) / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not (wh / "_training").exists()  # the work folder is cleaned up once published


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("injected after epoch 2")


def test_an_interrupted_run_resumes_after_its_last_epoch(spark, demo_warehouse, tmp_path, caplog):
    wh = copy_warehouse(demo_warehouse, tmp_path / "wh")
    settings = resolve_settings(overrides=[*FAST, "train.max_epochs=4", "train.patience=4"])
    with pytest.raises(KeyboardInterrupt):
        train(spark, warehouse=str(wh), settings=settings, callbacks=[_Interrupt()])
    (run,) = os.listdir(wh / "_training")
    state = json.loads((wh / "_training" / run / "state.json").read_text())
    assert state["epochs_done"] == 2 and not state["finished"]
    assert not (wh / "models").exists()

    caplog.set_level("INFO")
    result = train(spark, warehouse=str(wh), settings=resolve_settings(), resume=True)  # the run's own settings win
    assert result.version == run and result.epochs == 4
    assert "resuming" in caplog.text and "after epoch 2" in caplog.text
    history = json.loads((wh / "models" / run / "history.json").read_text())
    assert history["loss"][:2] == state["history"]["loss"] and len(history["loss"]) == 4
    model = keras.models.load_model(wh / "models" / run / "model.keras")
    assert int(model.optimizer.iterations.numpy()) == result.best_epoch * 5  # 70 slices / 16 = 5 steps per epoch

    with pytest.raises(TrainingError, match="nothing to resume"):
        train(spark, warehouse=str(wh), settings=settings, resume=True)


# -- bad input -------------------------------------------------------------------------


def _slices_warehouse(spark, root: Path, songs: list[tuple[str, str | None, str]], *, preset: str = "seed") -> Path:
    """A warehouse whose slices table holds 2 random slices per (song_id, genre, split)."""
    rng = np.random.default_rng(0)
    rows = [(song, k, 5.12 * k, genre, split, rng.integers(0, 256, 65536, dtype=np.uint8).tobytes())
            for song, genre, split in songs for k in range(2)]
    store = Warehouse(spark, str(root), create=True)
    settings = SpectrogramSettings.of(resolve_settings(overrides=[f"spectrogram.preset={preset}"]).spectrogram)
    run = store.begin_run()
    store.write_table(run, Table.SLICES, spark.createDataFrame(rows, schema=spark_schema(Table.SLICES)),
                      metadata=IngestMetadata(deepcrate_version="test", audio=f"file:{root}/audio", spectrogram=settings,
                                              ingest={}, decoding={}, split={}))
    store.publish(run, [Table.SLICES])
    return root


def _train_fails(spark, wh: Path, *overrides: str) -> str:
    with pytest.raises(TrainingError) as error:
        train(spark, warehouse=str(wh), settings=resolve_settings(overrides=[*FAST, *overrides]))
    return str(error.value)


def test_bad_training_data_is_refused_with_a_clear_message(spark, tmp_path):
    unlabelled = _slices_warehouse(spark, tmp_path / "a", [("s1", None, "train"), ("s2", "x", "validation")])
    assert "no labelled slices in the train split (its 2 slices have no genre)" in _train_fails(spark, unlabelled)

    empty = _slices_warehouse(spark, tmp_path / "b", [("s1", "rock", "validation")])
    assert "no labelled slices in the train split (it is empty)" in _train_fails(spark, empty)

    single = _slices_warehouse(spark, tmp_path / "c", [("s1", "rock", "train"), ("s2", "rock", "validation")])
    assert "one genre only ('rock')" in _train_fails(spark, single)

    missing = _slices_warehouse(spark, tmp_path / "d", [
        ("s1", "rock", "train"), ("s2", "jazz", "train"), ("s3", "rock", "validation")])
    assert "no validation slices for jazz" in _train_fails(spark, missing)

    mel = _slices_warehouse(spark, tmp_path / "e", [("s1", "rock", "train"), ("s2", "jazz", "train")], preset="mel")
    message = _train_fails(spark, mel)
    assert "(preset: table 'mel', settings 'seed', " in message
    assert "train with spectrogram.preset=mel or re-ingest" in message
    message = _train_fails(spark, mel, "spectrogram.preset=mel", "spectrogram.slice_hop_frames=128")
    assert "(slice_hop_frames: table 256, settings 128)" in message
    assert "train with spectrogram.slice_hop_frames=256 or re-ingest" in message

    nothing = Warehouse(spark, str(tmp_path / "f"), create=True).root
    with pytest.raises(TrainingError, match="no slices table; run deepcrate ingest first"):
        train(spark, warehouse=nothing, settings=resolve_settings())


def test_cli_reports_training_errors_in_one_line(spark, tmp_path, capsys):
    wh = _slices_warehouse(spark, tmp_path / "wh", [("s1", "rock", "train"), ("s2", "rock", "validation")])
    assert main(["train", "--warehouse", str(wh)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deepcrate train: error:") and "one genre only" in err[0]
    assert main(["train", "--warehouse", str(wh), "--set", "train.model=resnet"]) == 2
    assert "train.model must be one of" in capsys.readouterr().err


def test_corrupt_model_folders_are_refused(tmp_path):
    folder = tmp_path / "20260101T000000Z-seed"
    folder.mkdir()
    with pytest.raises(ModelError, match="incomplete, missing model.keras, labels.json"):
        read_model_folder(str(folder))
    settings = SpectrogramSettings.of(resolve_settings().spectrogram)
    (folder / "labels.json").write_text('["a", "b"]')
    (folder / "spectrogram.json").write_text(json.dumps(settings.to_dict()))
    (folder / "train.json").write_text("{}")
    (folder / "_SUCCESS").write_text("")
    (folder / "model.keras").write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match="model.keras cannot be loaded"):
        read_model_folder(str(folder)).load_keras()
    build_model(preset="seed", n_classes=3).save(folder / "model.keras")
    with pytest.raises(ModelError, match="3 outputs but labels.json lists 2 genres"):
        read_model_folder(str(folder)).load_keras()
    (folder / "labels.json").write_text("[]")  # no genres: only an embedding-only network fits
    with pytest.raises(ModelError, match="lists no genres but the network's output is"):
        read_model_folder(str(folder)).load_keras()
    (folder / "labels.json").write_text('["a"]')
    with pytest.raises(ModelError, match="at least 2 genre names"):
        read_model_folder(str(folder))
    (folder / "labels.json").write_text('["a", "b"')
    with pytest.raises(ModelError, match="labels.json is not readable JSON"):
        read_model_folder(str(folder))
    (folder / "labels.json").write_text('["a", "b", "c"]')
    mel = SpectrogramSettings.of(resolve_settings(overrides=["spectrogram.preset=mel"]).spectrogram)
    with pytest.raises(ModelError, match="trained on 'seed' spectrograms and the slices table holds 'mel'"):
        read_model_folder(str(folder)).check_settings(mel, what="the slices table")
    # Overlapping slices show the same pixels: the model embeds them, as it would the stored ones.
    overlapping = SpectrogramSettings.of(resolve_settings(overrides=["spectrogram.slice_hop_frames=128"]).spectrogram)
    read_model_folder(str(folder)).check_settings(overlapping, what="the slices table")


def test_balanced_genre_weights_make_every_genre_weigh_the_same():
    from deepcrate.stages.training import genre_weights

    counts = {"train": {"rock": 300, "jazz": 100, "pop": 50, None: 999}, "validation": {"rock": 9}}
    labels = ["jazz", "pop", "rock"]
    settings = resolve_settings(overrides=["train.balance_genres=true"]).train
    weights = genre_weights(counts, labels=labels, settings=settings)
    totals = [weights[i] * counts["train"][genre] for i, genre in enumerate(labels)]
    np.testing.assert_allclose(totals, [150.0] * 3)  # 450 labelled slices shared by 3 genres
    assert genre_weights(counts, labels=labels, settings=resolve_settings().train) is None
