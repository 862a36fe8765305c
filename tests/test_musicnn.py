"""The pretrained musicnn network: the Keras port against the package's own graph, its front-end
against librosa, and training a head on its frozen features in a real warehouse."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import keras
import librosa
import numpy as np
import pandas as pd
import pytest

from deepcrate.audio.spectrogram import SpectrogramSettings, iter_slices
from deepcrate.config import resolve_settings
from deepcrate.errors import ConfigError
from deepcrate.models.architectures import (
    EMBEDDING_LAYER,
    OUTPUT_LAYER,
    build_model,
    embedding_model,
    supervised_contrastive_loss,
)
from deepcrate.models.musicnn import PENULTIMATE_LAYER, checkpoint_prefix, load_pretrained, weights_installed
from deepcrate.models.store import latest_model, read_model_folder
from deepcrate.models.transfer import feature_extractor, pretrained_model
from deepcrate.stages.embed import embed
from deepcrate.stages.evaluate import evaluate
from deepcrate.stages.training import train
from deepcrate.storage.warehouse import Warehouse

from helpers import copy_warehouse, delta_frame, make_signal

REFERENCE = Path(__file__).parent / "data" / "musicnn_reference.npz"
needs_weights = pytest.mark.skipif(not weights_installed(), reason="musicnn's weights are not installed "
                                   "(make installs them: pip install --no-deps musicnn==0.1.0)")
MUSICNN = ["spectrogram.preset=musicnn", "train.model=musicnn"]


@needs_weights
@pytest.mark.parametrize("checkpoint", ["MSD_musicnn", "MTT_musicnn"])
def test_the_port_computes_what_the_packages_own_graph_computes(checkpoint):
    # The reference was computed once by musicnn 0.1.0's own TF1 code (models.define_model and
    # its Saver, in a TF1-compatible environment) on this 400-frame slice: a longer slice than
    # the 187 frames of training also checks the "same" padding of the 128-frame filters.
    reference = np.load(REFERENCE)
    image = reference["slice"]
    model = build_model(preset="musicnn", n_classes=3, input_shape=image.shape)
    load_pretrained(model, checkpoint=checkpoint)
    features = keras.Model(model.input, model.get_layer(PENULTIMATE_LAYER).output)(image[None], training=False)
    np.testing.assert_allclose(np.asarray(features)[0], reference[checkpoint], atol=1e-4)


def test_missing_or_unknown_weights_say_what_to_do(monkeypatch):
    with pytest.raises(ConfigError, match="must be one of"):
        checkpoint_prefix("MSD_vgg")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"not installed \(MTT_musicnn\): pip install --no-deps musicnn==0.1.0"):
        checkpoint_prefix()
    assert not weights_installed()


def test_the_preset_draws_musicnns_own_front_end():
    settings = SpectrogramSettings.of(resolve_settings(overrides=["spectrogram.preset=musicnn"]).spectrogram)
    assert (settings.sample_rate, settings.n_fft, settings.hop_length, settings.n_rows, settings.slice_frames) == (
        16000, 512, 256, 96, 187)
    assert settings.to_dict()["levels"] == "musicnn"
    assert "levels" not in SpectrogramSettings.of(resolve_settings().spectrogram).to_dict()  # older tables read the same

    samples = 0.5 * make_signal(7.0, sample_rate=16000, seed=4)
    # What musicnn's own batch_data computes, with librosa (without its centring: our grid starts at sample 0)
    mel = librosa.feature.melspectrogram(y=samples, sr=16000, n_fft=512, hop_length=256, n_mels=96, center=False)
    levels = np.log10(10000 * mel + 1)
    slices = list(iter_slices(samples, settings=settings))
    assert len(slices) == (levels.shape[1] - 187) // 187 + 1 == 2
    for k, image in enumerate(slices):
        expected = np.clip(levels[:, k * 187:(k + 1) * 187], 0, 8.0) * 255 / 8.0
        assert np.abs(image[::-1].astype(float) - expected).max() <= 0.5 + 1e-3  # rows: highest band first

    # The network's input layer undoes the drawing: levels, frames first, lowest band first.
    model = build_model(preset="musicnn", n_classes=2, input_shape=(96, 187))
    restored = keras.Model(model.input, model.get_layer("musicnn_input").output)(slices[0][None])
    np.testing.assert_allclose(np.asarray(restored)[0, :, :, 0], levels[:, :187].T, atol=8.0 / 255 / 2 + 1e-4)


def test_the_model_refuses_slices_of_another_front_end():
    with pytest.raises(ConfigError, match="reads 96 mel bands"):
        build_model(preset="musicnn", n_classes=2, input_shape=(256, 256))
    with pytest.raises(ConfigError, match="objective=classify"):
        resolve_settings(overrides=[*MUSICNN, "train.objective=contrastive"])
    with pytest.raises(ConfigError, match="supcon trains the head on a pretrained network"):
        resolve_settings(overrides=["train.objective=supcon"])
    with pytest.raises(ConfigError, match="fine_tune must be one of"):
        resolve_settings(overrides=[*MUSICNN, "train.fine_tune=some"])


def in_chunks(model, images: np.ndarray, size: int = 16) -> np.ndarray:
    """``model`` on ``images`` 16 at a time: musicnn's activations take ~50 MB a slice per
    network, and a test process keeps the peak (all 70 slices at once held ~7 GB)."""
    return np.concatenate([np.asarray(model(images[i:i + size], training=False)) for i in range(0, len(images), size)])


def test_the_supervised_contrastive_loss_is_khosla_et_als():
    rng = np.random.default_rng(0)
    z, labels = rng.normal(size=(6, 4)).astype(np.float32), np.array([0, 0, 1, 1, 1, 2])
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    logits = unit @ unit.T / 0.1
    expected = []
    for i in range(6):
        others = [a for a in range(6) if a != i]
        log_normaliser = np.log(np.exp(logits[i, others]).sum())
        positives = [p for p in others if labels[p] == labels[i]]
        expected.append(-np.mean([logits[i, p] - log_normaliser for p in positives]) if positives else 0.0)
    got = np.asarray(supervised_contrastive_loss(labels, z))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)  # the lone genre-2 row adds nothing


@needs_weights
def test_a_head_on_frozen_features_learns_the_genres_and_keeps_the_pretrained_layers(spark, musicnn_warehouse,
                                                                                      tmp_path):
    settings = resolve_settings(overrides=[*MUSICNN, "train.max_epochs=40", "train.patience=40", "train.batch_size=32"])
    copy_warehouse(musicnn_warehouse, tmp_path / "wh")
    result = train(spark, warehouse=str(tmp_path / "wh"), settings=settings)

    folder = read_model_folder(latest_model(Warehouse(spark, str(tmp_path / "wh"))))
    model = folder.load_keras()
    pretrained = pretrained_model(n_classes=len(folder.labels), image_shape=(96, 187), level_range=8.0,
                                  checkpoint=settings.train.pretrained, seed=0)
    for name in ("musicnn_timbral_74", "musicnn_mid3", PENULTIMATE_LAYER,  # frozen: still the checkpoints'
                 "musicnn2_timbral_74", "musicnn2_penultimate"):
        for mine, theirs in zip(model.get_layer(name).get_weights(), pretrained.get_layer(name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    assert model.get_layer(OUTPUT_LAYER).output.shape[-1] == len(folder.labels) == 7
    history = json.loads((Path(folder.path) / "history.json").read_text())
    assert history["loss"][-1] < history["loss"][0]
    # The demo's genres are synthetic and distinct: the pretrained features separate them.
    assert result.evaluation.metrics()["song_accuracy"] >= 0.7
    assert model.get_layer(EMBEDDING_LAYER).output.shape[-1] == 128

    # The untuned network is evaluated beside the model, from the same embedding pass.
    embed(spark, warehouse=str(tmp_path / "wh"), settings=settings)
    summary = evaluate(spark, warehouse=str(tmp_path / "wh"), settings=settings)
    rows = summary.rows[summary.rows["genre"].isna()].set_index("method")
    assert list(rows.index) == ["model", "pretrained", "mfcc", "timbre", "random", "ideal"]
    # Independently: the checkpoint's features of every slice, averaged per song, cosine, top 10.
    slices = delta_frame(spark, tmp_path / "wh" / "slices").toPandas()
    songs = delta_frame(spark, tmp_path / "wh" / "songs").toPandas().set_index("song_id")
    images = np.stack([np.frombuffer(b, np.uint8).reshape(96, 187) for b in slices["spectrogram"]])
    features = in_chunks(feature_extractor(pretrained), images)
    means = pd.DataFrame(np.asarray(features, np.float64)).groupby(slices["song_id"].to_numpy()).mean()
    unit = means.to_numpy() / np.linalg.norm(means.to_numpy(), axis=1, keepdims=True)
    genres = songs.loc[means.index, "genre"].to_numpy()
    queries = np.flatnonzero(songs.loc[means.index, "split"].to_numpy() == "test")
    precision = []
    for q in queries:
        similarity = unit @ unit[q]
        similarity[q] = -np.inf
        precision.append(np.mean(genres[np.argsort(-similarity, kind="stable")[:10]] == genres[q]))
    assert rows.loc["pretrained", "precision_at_10"] == pytest.approx(np.mean(precision), abs=1e-6)
    assert 0 <= rows.loc["pretrained", "song_accuracy"] <= 1


@needs_weights
def test_the_supcon_head_learns_the_genres_too(spark, musicnn_warehouse, tmp_path):
    settings = resolve_settings(overrides=[*MUSICNN, "train.objective=supcon", "train.max_epochs=40",
                                       "train.patience=40", "train.batch_size=32"])
    copy_warehouse(musicnn_warehouse, tmp_path / "wh")
    result = train(spark, warehouse=str(tmp_path / "wh"), settings=settings)
    assert result.version.endswith("-musicnn-supcon")
    history = json.loads((Path(result.model_uri.removeprefix("file:")) / "history.json").read_text())
    assert history["loss"][-1] < history["loss"][0] and "embedding_loss" in history
    assert result.evaluation.metrics()["song_accuracy"] >= 0.7


@needs_weights
def test_the_head_kept_is_the_epoch_and_the_average_that_rank_the_validation_songs_best(spark, musicnn_warehouse, tmp_path):
    settings = resolve_settings(overrides=[*MUSICNN, "train.head_max_epochs=12", "train.head_patience=12",
                                       "train.batch_size=32"])
    copy_warehouse(musicnn_warehouse, tmp_path / "wh")
    result = train(spark, warehouse=str(tmp_path / "wh"), settings=settings)
    folder = read_model_folder(latest_model(Warehouse(spark, str(tmp_path / "wh"))))
    history = json.loads((Path(folder.path) / "history.json").read_text())
    scores = history["val_precision_at_10"]
    assert len(scores) == len(history["loss"]) + 1  # epoch 0: the principal-component start
    assert result.best_epoch == int(np.argmax(scores))  # the first of the best
    assert "best validation P@10 at epoch" in result.lines()[0]
    assert "3 heads trained" in result.lines()[1]

    # Independently, from the saved model: each validation song against the train and validation
    # songs, by the mean of its slices' embeddings, cosine, top min(10, n - 1), share of its genre.
    slices = delta_frame(spark, tmp_path / "wh" / "slices").filter("split != 'test'").toPandas()
    images = np.stack([np.frombuffer(b, np.uint8).reshape(96, 187) for b in slices["spectrogram"]])
    embedded = in_chunks(embedding_model(folder.load_keras()), images).astype(np.float64)
    means = pd.DataFrame(embedded).groupby(slices["song_id"].to_numpy()).mean()
    first = slices.groupby("song_id")[["genre", "split"]].first().loc[means.index]
    unit = means.to_numpy() / np.linalg.norm(means.to_numpy(), axis=1, keepdims=True)
    k = min(10, len(unit) - 1)
    precision = []
    for q in np.flatnonzero(first["split"].to_numpy() == "validation"):
        similarity = unit @ unit[q]
        similarity[q] = -np.inf
        precision.append(np.mean(first["genre"].to_numpy()[np.argsort(-similarity, kind="stable")[:k]]
                                 == first["genre"].iloc[q]))
    # The kept embedding is the average of 3 heads (the default), or the start where the average
    # ranks worse: what train.json says it scores, never below the start; the history is the
    # best head's.
    heads = json.loads((Path(folder.path) / "train.json").read_text())["heads"]
    assert [h["seed"] for h in heads["trained"]] == [0, 1, 2] and heads["averaged"] in ([0, 1, 2], [])
    assert np.mean(precision) == pytest.approx(heads["validation_precision_at_10"], abs=1e-6)
    assert np.mean(precision) >= scores[0] - 1e-9
    assert max(scores) == pytest.approx(max(h["validation_precision_at_10"] for h in heads["trained"]))


@needs_weights
def test_two_checkpoints_are_two_towers_each_with_its_own_weights():
    both = pretrained_model(n_classes=2, image_shape=(96, 187), level_range=8.0,
                            checkpoint="MTT_musicnn+MSD_musicnn", seed=0)
    alone = {name: pretrained_model(n_classes=2, image_shape=(96, 187), level_range=8.0, checkpoint=name, seed=0)
             for name in ("MTT_musicnn", "MSD_musicnn")}
    images = np.random.default_rng(0).integers(0, 200, size=(2, 96, 187), dtype=np.uint8)
    features = np.asarray(feature_extractor(both)(images))
    assert features.shape == (2, 400)
    np.testing.assert_allclose(features[:, :200], feature_extractor(alone["MTT_musicnn"])(images), atol=1e-5)
    np.testing.assert_allclose(features[:, 200:], feature_extractor(alone["MSD_musicnn"])(images), atol=1e-5)
    with pytest.raises(ConfigError, match="names a checkpoint twice"):
        resolve_settings(overrides=[*MUSICNN, "train.pretrained=MSD_musicnn+MSD_musicnn"])
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_settings(overrides=[*MUSICNN, "train.pretrained=MTT_musicnn+VGG"])


@needs_weights
def test_fine_tuning_all_layers_starts_from_the_checkpoint_and_moves_it(spark, musicnn_warehouse, tmp_path):
    settings = resolve_settings(overrides=[*MUSICNN, "train.fine_tune=all", "train.max_epochs=2", "train.patience=2",
                                       "train.batch_size=16", "train.shuffle_buffer=64", "train.interleave=2"])
    copy_warehouse(musicnn_warehouse, tmp_path / "wh")
    result = train(spark, warehouse=str(tmp_path / "wh"), settings=settings)
    assert result.epochs == 2 and result.evaluation is not None
    model = read_model_folder(latest_model(Warehouse(spark, str(tmp_path / "wh")))).load_keras()
    pretrained = pretrained_model(n_classes=7, image_shape=(96, 187), level_range=8.0,
                                  checkpoint=settings.train.pretrained, seed=0)
    for name in ("musicnn_timbral_74", "musicnn_mid3"):  # trained, from the checkpoint's values: close, not equal
        mine, theirs = model.get_layer(name).get_weights()[0], pretrained.get_layer(name).get_weights()[0]
        assert not np.array_equal(mine, theirs)
        assert np.abs(mine - theirs).max() < 0.1 * np.abs(theirs).max()


@needs_weights
def test_without_genres_the_catalogue_gets_the_pretrained_embedding(spark, tmp_path):
    from deepcrate.audio.demo import write_demo_catalogue
    from deepcrate.stages.features import compute_features
    from deepcrate.stages.ingest.job import ingest

    settings = resolve_settings(overrides=MUSICNN)
    write_demo_catalogue(tmp_path / "audio", songs_per_genre=3, seconds=7.0, seed=6)
    for song in (tmp_path / "audio").glob("*/*.mp3"):  # no genre folders, no manifest: no genres at all
        song.rename(tmp_path / "audio" / f"{song.parent.name}-{song.name}")
    ingest(spark, audio=str(tmp_path / "audio"), manifest=None, warehouse=str(tmp_path / "wh"), settings=settings)
    compute_features(spark, warehouse=str(tmp_path / "wh"), settings=settings)
    result = train(spark, warehouse=str(tmp_path / "wh"), settings=settings)
    assert result.evaluation is None
    folder = read_model_folder(latest_model(Warehouse(spark, str(tmp_path / "wh"))))
    assert folder.labels == []
    encoder = folder.load_keras()
    assert encoder.output_names == [EMBEDDING_LAYER]

    # The embedding is the projection of the pretrained features onto their principal components:
    # checked against numpy's own SVD of the same features.
    slices = delta_frame(spark, tmp_path / "wh" / "slices").filter("split != 'test'").toPandas()
    images = np.stack([np.frombuffer(b, np.uint8).reshape(96, 187) for b in slices["spectrogram"]])
    pretrained = pretrained_model(n_classes=2, image_shape=(96, 187), level_range=8.0,
                                  checkpoint=settings.train.pretrained, seed=0)
    features = np.asarray(in_chunks(feature_extractor(pretrained), images),
                          dtype=np.float64)
    centred = features - features.mean(axis=0)
    embedded = in_chunks(encoder, images).astype(np.float64)
    k = min(len(images) - 1, 5)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ components[:k].T
    for j in range(k):  # a component's sign is arbitrary
        sign = np.sign(expected[:, j] @ embedded[:, j])
        np.testing.assert_allclose(sign * embedded[:, j], expected[:, j], atol=2e-2 * np.abs(expected[:, j]).max())


def test_a_rebuild_without_the_weights_stops_before_any_work_in_one_line(spark, tmp_path, monkeypatch, capsys):
    from deepcrate.cli import main

    from helpers import write_audio

    write_audio(tmp_path / "audio" / "a.mp3", make_signal(4.0))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "musicnn" else real(name, *a))
    code = main(["rebuild", "--audio", str(tmp_path / "audio"), "--warehouse", str(tmp_path / "wh"),
                 *[a for s in MUSICNN for a in ("--set", s)]])
    assert code == 2
    assert "musicnn weights are not installed (MTT_musicnn): pip install --no-deps musicnn==0.1.0" in \
        capsys.readouterr().err
    assert not (tmp_path / "wh" / "songs").exists()  # nothing ingested
