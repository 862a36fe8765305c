"""The features stage: the frozen musicnn networks run once per slice, on OpenVINO, into
pretrained_features; train and embed read that table; a table of other networks is refused."""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import MUSICNN

from deepcrate.audio.demo import write_demo_catalogue
from deepcrate.config import resolve_settings
from deepcrate.errors import ModelError, TrainingError, WarehouseError
from deepcrate.models.architectures import embedding_model
from deepcrate.models.feature_head import FeatureHead
from deepcrate.models.musicnn import weights_installed
from deepcrate.models.pretrained_runtime import Extractor, Network, export, from_bytes, keras_extractor
from deepcrate.models.store import latest_model, read_model_folder
from deepcrate.query.recommend import Catalogue, Filters
from deepcrate.stages.embed import embed
from deepcrate.stages.features import compute_features
from deepcrate.stages.ingest.job import ingest
from deepcrate.stages.rebuild import rebuild
from deepcrate.stages.training import train
from deepcrate.storage.warehouse import Warehouse

from helpers import copy_warehouse, delta_table

pytestmark = pytest.mark.skipif(not weights_installed(), reason="musicnn's weights are not installed")
QUICK_HEAD = [*MUSICNN, "train.head_max_epochs=3", "train.head_patience=3", "train.heads_averaged=1",
              "train.batch_size=16"]
NETWORK = Network(checkpoints="MTT_musicnn+MSD_musicnn", image_shape=(96, 187), level_range=8.0)


def slices_of(warehouse) -> pd.DataFrame:
    return delta_table(warehouse / "slices").to_pandas().sort_values(["song_id", "slice_idx"], ignore_index=True)


def images_of(slices: pd.DataFrame) -> np.ndarray:
    return np.stack([np.frombuffer(b, np.uint8).reshape(96, 187) for b in slices["spectrogram"]])


def keras_features(images: np.ndarray) -> np.ndarray:
    model = keras_extractor(NETWORK)
    return np.concatenate([np.asarray(model(images[i:i + 16], training=False)) for i in range(0, len(images), 16)])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def convolution_shapes(payload: bytes) -> set[tuple[int, int, int]]:
    """(input channels, kernel frames, kernel bands) of an exported OpenVINO extractor's convolutions."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=io.BytesIO(payload)) as archive:
        archive.extractall(tmp, filter="data")
        model = ov.Core().read_model(os.path.join(tmp, "extractor.xml"))
    return {tuple(op.input(1).get_partial_shape()[i].get_length() for i in (1, 2, 3))
            for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"}


def test_openvino_and_the_stored_table_give_the_keras_networks_features_on_real_slices(musicnn_warehouse):
    slices = slices_of(musicnn_warehouse)
    images = images_of(slices)
    expected = keras_features(images)  # what train and embed computed before the features stage

    payload = export(NETWORK, runtime="openvino")
    shapes = convolution_shapes(payload)  # the timbral front-end (7 frames x 38 / 67 bands) unfolded over time
    assert {(7, 1, 38), (7, 1, 67)} <= shapes and not any(c == 1 and f > 1 and b > 1 for c, f, b in shapes)
    openvino = Extractor(payload)(images)
    assert openvino.shape == expected.shape == (len(slices), 400)
    assert cosines(openvino, expected).min() > 1 - 1e-6
    np.testing.assert_allclose(openvino, expected, atol=1e-4)

    stored = delta_table(musicnn_warehouse / "pretrained_features").to_pandas()
    stored = stored.set_index(["song_id", "slice_idx"]).loc[list(zip(slices["song_id"], slices["slice_idx"]))]
    assert stored["slice_hash"].nunique() == len(stored)  # every slice's own pixels
    features = from_bytes(list(stored["features"]), width=400, where="test")
    assert cosines(features, expected).min() > 1 - 1e-6
    np.testing.assert_allclose(features, expected, atol=1e-4)


def test_features_are_computed_once_and_a_new_file_computes_only_its_own(spark, tmp_path):
    audio, wh = tmp_path / "audio", tmp_path / "wh"
    manifest = write_demo_catalogue(audio, songs_per_genre=2, seconds=7.0, seed=6, genres=("funky_house", "trance", "rock_indie"))
    settings = resolve_settings(overrides=QUICK_HEAD)
    ingest(spark, audio=str(audio), manifest=str(manifest), warehouse=str(wh), settings=settings)
    with pytest.raises(TrainingError, match=r"no pretrained_features table .*: run deepcrate features first"):
        train(spark, warehouse=str(wh), settings=settings)
    first = rebuild(spark, audio=str(audio), manifest=str(manifest), warehouse=str(wh), settings=settings)
    status = {stage.name: (stage.status, stage.detail) for stage in first.stages}
    assert status["features"] == ("ran", f"{first.slices} slices computed, 0 kept")
    stored = delta_table(wh / "pretrained_features").to_pandas().set_index(["song_id", "slice_idx"]).sort_index()
    assert len(stored) == first.slices

    # A changed training setting: a new head, no feature computed, embed from the stored features.
    changed = resolve_settings(overrides=[*QUICK_HEAD, "train.head_max_epochs=4"])
    second = rebuild(spark, audio=str(audio), manifest=str(manifest), warehouse=str(wh), settings=changed)
    status = {stage.name: stage.status for stage in second.stages}
    assert (status["ingest"], status["features"], status["train"], status["embed"]) == (
        "skipped", "skipped", "ran", "ran")
    assert second.model_version != first.model_version

    # The song vectors from the stored features are those of the whole network run on the slices.
    folder = read_model_folder(latest_model(Warehouse(spark, str(wh))))
    assert folder.features["network"] == delta_table_metadata_network(wh)
    slices = slices_of(wh)
    encoder = embedding_model(folder.load_keras())
    images = images_of(slices)
    on_the_fly = np.concatenate([np.asarray(encoder(images[i:i + 16], training=False))
                                 for i in range(0, len(images), 16)]).astype(np.float64)
    expected = pd.DataFrame(on_the_fly).groupby(slices["song_id"].to_numpy()).mean()
    songs = delta_table(wh / "song_embeddings").to_pandas().set_index("song_id").loc[expected.index]
    got = np.stack(songs["embedding"].to_numpy())
    assert cosines(got, expected.to_numpy()).min() > 0.9999
    np.testing.assert_allclose(got, expected.to_numpy(), atol=5e-3)

    # embed read the head from head.npz (no network loaded); a folder written before it had one
    # (the head read off model.keras) embeds the same vectors, and an unreadable one is refused.
    from_network = FeatureHead.from_model(folder.load_keras())
    saved = FeatureHead.load(str(Path(folder.path) / "head.npz"))
    for mine, theirs in zip(vars(saved).values(), vars(from_network).values()):
        np.testing.assert_array_equal(mine, theirs)
    (Path(folder.path) / "head.npz").unlink()
    embed(spark, warehouse=str(wh), settings=changed)
    again = delta_table(wh / "song_embeddings").to_pandas().set_index("song_id").loc[expected.index]
    np.testing.assert_allclose(np.stack(again["embedding"].to_numpy()), got, atol=1e-6)
    (Path(folder.path) / "head.npz").write_bytes(b"not an npz")
    with pytest.raises(ModelError, match=r"^model .*: head.npz cannot be read"):
        embed(spark, warehouse=str(wh), settings=changed)
    saved.save(str(Path(folder.path) / "head.npz"))

    # recommend --file runs the whole network on a file: a catalogue file gets its own song's neighbours.
    catalogue = Catalogue(str(wh), settings=changed)
    song_id = catalogue.songs.index[2]
    path = catalogue.songs.at[song_id, "path"].removeprefix("file:")
    by_file = catalogue.recommend([catalogue.file_seed(path)], k=4, filters=Filters())
    by_song = catalogue.recommend([catalogue.song_seed(song_id)], k=4, filters=Filters())
    assert list(by_file["song_id"]) == list(by_song["song_id"])
    np.testing.assert_allclose(by_file["similarity"], by_song["similarity"], atol=1e-4)

    # A new file: ingest alone leaves its slices without features, which embed refuses in one line...
    write_demo_catalogue(tmp_path / "extra", songs_per_genre=1, seconds=10.0, seed=9, genres=("trance",))
    shutil.copy(next((tmp_path / "extra" / "trance").iterdir()), audio / "trance" / "new.mp3")
    ingest(spark, audio=str(audio), manifest=str(manifest), warehouse=str(wh), settings=changed, incremental=True)
    with pytest.raises(WarehouseError, match=r"^warehouse .*: \d+ slices have no pretrained features .* run "
                                             r"deepcrate features"):
        embed(spark, warehouse=str(wh), settings=changed)
    # ...and the next rebuild computes the features of its slices only; the others' stay as they were.
    third = rebuild(spark, audio=str(audio), manifest=str(manifest), warehouse=str(wh), settings=changed)
    new_slices = third.slices - first.slices
    assert new_slices > 0
    status = {stage.name: (stage.status, stage.detail) for stage in third.stages}
    assert status["features"] == ("ran", f"{new_slices} slices computed, {first.slices} kept")
    after = delta_table(wh / "pretrained_features").to_pandas().set_index(["song_id", "slice_idx"]).sort_index()
    assert len(after) == third.slices
    pd.testing.assert_frame_equal(after.loc[stored.index], stored)


def delta_table_metadata_network(wh) -> str:
    from helpers import table_metadata

    return table_metadata(wh, "pretrained_features")["network"]


def test_features_of_other_networks_are_refused_in_one_line(spark, musicnn_warehouse, tmp_path):
    wh = copy_warehouse(musicnn_warehouse, tmp_path / "wh")
    both = resolve_settings(overrides=QUICK_HEAD)
    again = compute_features(spark, warehouse=str(wh), settings=both)  # the same networks: nothing to compute
    assert (again.computed, again.slices) == (0, len(slices_of(wh)))
    train(spark, warehouse=str(wh), settings=both)
    one = resolve_settings(overrides=[*QUICK_HEAD, "train.pretrained=MTT_musicnn"])
    summary = compute_features(spark, warehouse=str(wh), settings=one)
    assert summary.computed == summary.slices  # other networks: nothing kept
    assert delta_table_metadata_network(wh).startswith("MTT_musicnn:")

    with pytest.raises(ModelError, match=r"^model \S+ was trained on pretrained features of MTT_musicnn\+MSD_musicnn:"
                                         r"\w+; warehouse .* holds features of MTT_musicnn:\w+: compute them again"):
        embed(spark, warehouse=str(wh), settings=both)
    with pytest.raises(TrainingError, match=r"pretrained_features holds features of MTT_musicnn:\w+, not of "
                                            r"MTT_musicnn\+MSD_musicnn:\w+ .*run deepcrate features again"):
        train(spark, warehouse=str(wh), settings=both)


@pytest.mark.parametrize("genres", [3, 0])
def test_the_numpy_head_computes_what_the_keras_head_computes(genres):
    import keras

    from deepcrate.models.architectures import EMBEDDING_LAYER, embedding_and_genres
    from deepcrate.models.feature_head import FeatureHead

    inputs = keras.Input(shape=(400,))
    embedding, probabilities = embedding_and_genres(inputs, n_classes=max(genres, 2), seed=0)
    model = keras.Model(inputs, probabilities if genres else embedding)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # weights far from their start, so that the ELU's negative side counts
        layer.set_weights([rng.normal(scale=0.3, size=w.shape).astype(np.float32) for w in layer.get_weights()])
    features = rng.normal(size=(50, 400)).astype(np.float32)

    got_embedding, got_probabilities = FeatureHead.from_model(model)(features)
    expected = keras.Model(inputs, model.get_layer(EMBEDDING_LAYER).output)(features)
    np.testing.assert_allclose(got_embedding, np.asarray(expected), rtol=1e-5, atol=1e-4)
    assert (got_embedding < 0).any() and (got_embedding > 0).any()
    if genres:
        np.testing.assert_allclose(got_probabilities, np.asarray(model(features, training=False)), atol=1e-5)
        np.testing.assert_allclose(got_probabilities.sum(axis=1), 1, rtol=1e-5)
    else:
        assert got_probabilities.shape == (50, 0)
