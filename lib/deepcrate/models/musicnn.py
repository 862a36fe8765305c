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

Both checkpoints read the same input, so a model can hold both networks side by side
(``train.pretrained=MTT_musicnn+MSD_musicnn``, the default): one tower per checkpoint,
their penultimate features concatenated (400-d, layer :data:`CONCAT_LAYER`). The
first tower's layers are named ``musicnn_*``, the second's ``musicnn2_*``.
"""
from __future__ import annotations

import importlib.util
import os

import keras
from keras import layers

from deepcrate.config.sections import CHECKPOINTS, parse_checkpoints
from deepcrate.errors import ConfigError

DEFAULT_CHECKPOINT = "MTT_musicnn"
N_MELS = 96
PENULTIMATE_LAYER = "musicnn_penultimate"  # the first tower's 200-d features
POOL_LAYER = "musicnn_pool"  # the first tower's 1,506 max + mean features before the back-end's dense layer
CONCAT_LAYER = "musicnn_concat"  # several towers: their penultimate features side by side
INSTALL_HINT = "pip install --no-deps musicnn==0.1.0 (a carrier of weight files only; see README)"

# A tower's layer (after its prefix) -> the checkpoint's TF1 variable scope, in the order musicnn's
# models.py creates them.
_BATCH_NORMS = {"input_norm": "batch_normalization", "timbral_74_norm": "batch_normalization_1",
                "timbral_77_norm": "batch_normalization_2", "temporal_128_norm": "batch_normalization_3",
                "temporal_64_norm": "batch_normalization_4", "temporal_32_norm": "batch_normalization_5",
                "mid1_norm": "batch_normalization_6", "mid2_norm": "batch_normalization_7",
                "mid3_norm": "batch_normalization_8", "pool_norm": "batch_normalization_9",
                "penultimate": "batch_normalization_10"}
_CONVOLUTIONS = {"timbral_74": "conv2d", "timbral_77": "conv2d_1", "temporal_128": "conv2d_2",
                 "temporal_64": "conv2d_3", "temporal_32": "conv2d_4", "mid1": "conv2d_5",
                 "mid2": "conv2d_6", "mid3": "conv2d_7", "dense": "dense"}


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


def tower(position: int) -> str:
    """The layer-name prefix of the ``position``-th pretrained network of a model."""
    return "musicnn" if position == 0 else f"musicnn{position + 1}"


def musicnn_features(inputs, *, level_range: float, towers: int = 1):
    """The musicnn network(s) from a uint8 slice tensor (96, frames) to their penultimate
    features: 200-d for one tower, the towers' side by side (:data:`CONCAT_LAYER`) for several."""
    x = MusicnnInput(level_range=level_range, name="musicnn_input")(inputs)
    features = [_tower(x, tower(position)) for position in range(towers)]
    return features[0] if towers == 1 else layers.Concatenate(name=CONCAT_LAYER)(features)


def pretrained_layer(model: keras.Model) -> str | None:
    """The name of ``model``'s pretrained features layer (what a head learns from), or None."""
    names = {layer.name for layer in model.layers}
    return next((name for name in (CONCAT_LAYER, PENULTIMATE_LAYER) if name in names), None)


def _tower(x, name: str):
    x = layers.BatchNormalization(name=f"{name}_input_norm")(x)
    front = []
    padded = layers.ZeroPadding2D(((3, 3), (0, 0)), name=f"{name}_time_pad")(x)
    for width, bands in ((74, round(0.4 * N_MELS)), (77, round(0.7 * N_MELS))):  # 38 and 67 bands
        front.append(_pooled_over_bands(padded, f"{name}_timbral_{width}", filters=204, kernel=(7, bands),
                                        padding="valid", bands_out=N_MELS - bands + 1))
    for frames in (128, 64, 32):
        front.append(_pooled_over_bands(x, f"{name}_temporal_{frames}", filters=51, kernel=(frames, 1),
                                        padding="same", bands_out=N_MELS))
    front = layers.Concatenate(axis=-1, name=f"{name}_front_end")(front)  # (frames, 561)
    mid1 = _mid_convolution(front, f"{name}_mid1")
    mid2 = layers.Add(name=f"{name}_mid2_residual")([_mid_convolution(mid1, f"{name}_mid2"), mid1])
    mid3 = layers.Add(name=f"{name}_mid3_residual")([_mid_convolution(mid2, f"{name}_mid3"), mid2])
    mid = layers.Concatenate(axis=-1, name=f"{name}_mid_end")([front, mid1, mid2, mid3])  # (frames, 753)
    # musicnn flattens (features, [max, mean]): the two statistics of each feature side by side
    statistics = [layers.Reshape((-1, 1), name=f"{name}_{stat}_column")(pool(name=f"{name}_{stat}_pool")(mid))
                  for stat, pool in (("max", layers.GlobalMaxPooling1D), ("mean", layers.GlobalAveragePooling1D))]
    pooled = layers.Flatten(name=f"{name}_pool")(layers.Concatenate(name=f"{name}_statistics")(statistics))
    x = layers.BatchNormalization(name=f"{name}_pool_norm")(pooled)
    x = layers.Dropout(0.5, name=f"{name}_pool_dropout")(x)
    x = layers.Dense(200, activation="relu", name=f"{name}_dense")(x)
    return layers.BatchNormalization(name=f"{name}_penultimate")(x)


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
    """Set the layers of ``model``'s musicnn towers to the checkpoints' trained values:
    ``checkpoint`` is one name or several joined by ``+`` (one per tower, in order).

    Raises
    ------
    ConfigError
        The weights are not installed, or a checkpoint does not fit the layers.
    """
    for position, name in enumerate(parse_checkpoints(checkpoint)):
        _load_tower(model, prefix=tower(position), checkpoint=name)


def _load_tower(model: keras.Model, *, prefix: str, checkpoint: str) -> None:
    import tensorflow as tf

    reader = tf.compat.v1.train.NewCheckpointReader(checkpoint_prefix(checkpoint))
    shapes = reader.get_variable_to_shape_map()

    def tensor(name: str):
        if name not in shapes:
            raise ConfigError(f"musicnn checkpoint {checkpoint}: no variable {name!r}")
        return reader.get_tensor(name)

    for suffix, scope in _BATCH_NORMS.items():
        model.get_layer(f"{prefix}_{suffix}").set_weights([tensor(f"{scope}/{v}") for v in
                                                 ("gamma", "beta", "moving_mean", "moving_variance")])
    for suffix, scope in _CONVOLUTIONS.items():
        layer = model.get_layer(f"{prefix}_{suffix}")
        kernel = tensor(f"{scope}/kernel")
        wanted = tuple(layer.kernel.shape)
        if kernel.shape != wanted:  # (7, features, 1, 64) -> Conv1D's (7, features, 64)
            kernel = kernel.reshape(wanted)
        layer.set_weights([kernel, tensor(f"{scope}/bias")])
