"""musicnn (Pons & Serra, 2019) in Keras 3, with the weights its PyPI wheel ships.

The ``musicnn`` package (0.1.0, ISC licence) carries TensorFlow 1 checkpoints of
networks trained to tag music: ``MSD_musicnn`` on the Million Song Dataset (~200k
songs, 50 tags) and ``MTT_musicnn`` on MagnaTagATune. Only its files are used: the
architecture is rebuilt here layer for layer and the variables are read from the
checkpoint; none of the package's TF1 code is imported. It declares ``numpy<1.17``,
so it is installed as a carrier of weight files only::

    pip install --no-deps musicnn==0.1.0

The network reads 96 mel bands x 187 frames (3 s at 16 kHz, hop 256; the ``musicnn``
spectrogram preset) and is fully convolutional in time, so longer slices also work:

- front-end: a batch norm of the input, then timbral filters (7 frames x 38 and x 67
  bands, 204 each) and temporal filters (128, 64, 32 frames x 1 band, 51 each), each
  max-pooled over frequency: 561 features per frame;
- mid-end: three 1-d convolutions of 64 filters (7 frames) with residual connections,
  densely concatenated with the front-end: 753 features per frame;
- back-end: max and mean over time (1,506, interleaved), batch norm, Dense 200 + ReLU, batch norm:
  the 200-d ``penultimate`` features, before the tag layer (not used here).
"""
from __future__ import annotations

import importlib.util
import os

import keras
from keras import layers

from deepcrate.errors import ConfigError

CHECKPOINTS = ("MSD_musicnn", "MTT_musicnn")
DEFAULT_CHECKPOINT = "MTT_musicnn"  # train.pretrained's default
N_MELS = 96
PENULTIMATE_LAYER = "musicnn_penultimate"  # the 200-d features a head learns from
POOL_LAYER = "musicnn_pool"  # the 1,506 max + mean features before the back-end's dense layer
INSTALL_HINT = "pip install --no-deps musicnn==0.1.0 (a carrier of weight files only; see README)"

# Keras layer -> the checkpoint's TF1 variable scope, in the order musicnn's models.py creates them.
_BATCH_NORMS = {"musicnn_input_norm": "batch_normalization", "musicnn_timbral_74_norm": "batch_normalization_1",
                "musicnn_timbral_77_norm": "batch_normalization_2", "musicnn_temporal_128_norm": "batch_normalization_3",
                "musicnn_temporal_64_norm": "batch_normalization_4", "musicnn_temporal_32_norm": "batch_normalization_5",
                "musicnn_mid1_norm": "batch_normalization_6", "musicnn_mid2_norm": "batch_normalization_7",
                "musicnn_mid3_norm": "batch_normalization_8", "musicnn_pool_norm": "batch_normalization_9",
                PENULTIMATE_LAYER: "batch_normalization_10"}
_CONVOLUTIONS = {"musicnn_timbral_74": "conv2d", "musicnn_timbral_77": "conv2d_1", "musicnn_temporal_128": "conv2d_2",
                 "musicnn_temporal_64": "conv2d_3", "musicnn_temporal_32": "conv2d_4", "musicnn_mid1": "conv2d_5",
                 "musicnn_mid2": "conv2d_6", "musicnn_mid3": "conv2d_7", "musicnn_dense": "dense"}


@keras.saving.register_keras_serializable(package="deepcrate")
class MusicnnInput(layers.Layer):
    """A stored slice (uint8, rows = mel bands from the highest, columns = frames) back to
    musicnn's input: levels ``log10(1 + 10000 x)``, shape (frames, bands from the lowest, 1)."""

    def __init__(self, *, level_range: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.level_range = level_range

    def call(self, inputs):
        levels = keras.ops.cast(inputs, self.compute_dtype) * (self.level_range / 255.0)
        return keras.ops.expand_dims(keras.ops.transpose(keras.ops.flip(levels, axis=1), (0, 2, 1)), -1)

    def get_config(self):
        return {**super().get_config(), "level_range": self.level_range}


def musicnn_features(inputs, *, level_range: float):
    """The musicnn network from a uint8 slice tensor (96, frames) to its 200-d penultimate features."""
    x = MusicnnInput(level_range=level_range, name="musicnn_input")(inputs)
    x = layers.BatchNormalization(name="musicnn_input_norm")(x)
    front = []
    padded = layers.ZeroPadding2D(((3, 3), (0, 0)), name="musicnn_time_pad")(x)
    for width, bands in ((74, round(0.4 * N_MELS)), (77, round(0.7 * N_MELS))):  # 38 and 67 bands
        front.append(_pooled_over_bands(padded, f"musicnn_timbral_{width}", filters=204, kernel=(7, bands),
                                        padding="valid", bands_out=N_MELS - bands + 1))
    for frames in (128, 64, 32):
        front.append(_pooled_over_bands(x, f"musicnn_temporal_{frames}", filters=51, kernel=(frames, 1),
                                        padding="same", bands_out=N_MELS))
    front = layers.Concatenate(axis=-1, name="musicnn_front_end")(front)  # (frames, 561)
    mid1 = _mid_convolution(front, "musicnn_mid1")
    mid2 = layers.Add(name="musicnn_mid2_residual")([_mid_convolution(mid1, "musicnn_mid2"), mid1])
    mid3 = layers.Add(name="musicnn_mid3_residual")([_mid_convolution(mid2, "musicnn_mid3"), mid2])
    mid = layers.Concatenate(axis=-1, name="musicnn_mid_end")([front, mid1, mid2, mid3])  # (frames, 753)
    # musicnn flattens (features, [max, mean]): the two statistics of each feature side by side
    statistics = [layers.Reshape((-1, 1), name=f"musicnn_{name}_column")(pool(name=f"musicnn_{name}_pool")(mid))
                  for name, pool in (("max", layers.GlobalMaxPooling1D), ("mean", layers.GlobalAveragePooling1D))]
    pooled = layers.Flatten(name=POOL_LAYER)(layers.Concatenate(name="musicnn_statistics")(statistics))
    x = layers.BatchNormalization(name="musicnn_pool_norm")(pooled)
    x = layers.Dropout(0.5, name="musicnn_pool_dropout")(x)
    x = layers.Dense(200, activation="relu", name="musicnn_dense")(x)
    return layers.BatchNormalization(name=PENULTIMATE_LAYER)(x)


def _pooled_over_bands(x, name: str, *, filters: int, kernel: tuple[int, int], padding: str, bands_out: int):
    x = layers.Conv2D(filters, kernel, padding=padding, activation="relu", name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_norm")(x)
    x = layers.MaxPooling2D((1, bands_out), name=f"{name}_band_max")(x)
    return layers.Reshape((-1, filters), name=f"{name}_frames")(x)


def _mid_convolution(x, name: str):
    # musicnn's 2-d convolution spanning all features of 7 frames is a 1-d convolution
    x = layers.Conv1D(64, 7, padding="same", activation="relu", name=name)(x)
    return layers.BatchNormalization(name=f"{name}_norm")(x)


def checkpoint_prefix(name: str = DEFAULT_CHECKPOINT) -> str:
    """The path prefix of an installed musicnn checkpoint (``<prefix>.index`` and its data file).

    Raises
    ------
    ConfigError
        An unknown checkpoint, or the ``musicnn`` package (its weight files) is not installed.
    """
    if name not in CHECKPOINTS:
        raise ConfigError(f"musicnn checkpoint must be one of {CHECKPOINTS}, got {name!r}")
    spec = importlib.util.find_spec("musicnn")  # finds the package's folder without running its code
    folder = os.path.dirname(spec.origin) if spec and spec.origin else None
    if folder is None or not os.path.isfile(os.path.join(folder, name, ".index")):
        raise ConfigError(f"the musicnn weights are not installed ({name}): {INSTALL_HINT}")
    return os.path.join(folder, name) + os.sep


def weights_installed(name: str = DEFAULT_CHECKPOINT) -> bool:
    try:
        checkpoint_prefix(name)
    except ConfigError:
        return False
    return True


def load_pretrained(model: keras.Model, *, checkpoint: str) -> None:
    """Set every musicnn layer of ``model`` to the checkpoint's trained values.

    Raises
    ------
    ConfigError
        The weights are not installed, or the checkpoint does not fit the layers.
    """
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint_prefix(checkpoint))
    shapes = reader.get_variable_to_shape_map()

    def tensor(name: str):
        if name not in shapes:
            raise ConfigError(f"musicnn checkpoint {checkpoint}: no variable {name!r}")
        return reader.get_tensor(name)

    for layer_name, scope in _BATCH_NORMS.items():
        model.get_layer(layer_name).set_weights([tensor(f"{scope}/{v}") for v in
                                                 ("gamma", "beta", "moving_mean", "moving_variance")])
    for layer_name, scope in _CONVOLUTIONS.items():
        layer = model.get_layer(layer_name)
        kernel = tensor(f"{scope}/kernel")
        wanted = tuple(layer.kernel.shape)
        if kernel.shape != wanted:  # (7, features, 1, 64) -> Conv1D's (7, features, 64)
            kernel = kernel.reshape(wanted)
        layer.set_weights([kernel, tensor(f"{scope}/bias")])
