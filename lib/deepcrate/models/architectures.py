"""The Keras genre classifiers whose penultimate layer is the song embedding.

Every preset takes raw slices, ``uint8`` of shape ``(rows, frames)``, and scale them
to [0, 1] themselves, so training, evaluation and the embedding UDF all feed the
same bytes that the ``slices`` table stores. The 128-d embedding is the output of
the Dense layer named :data:`EMBEDDING_LAYER`, before its activation
(MISSION.md step 6); the softmax output is named :data:`OUTPUT_LAYER`.
"""
from __future__ import annotations

import keras
from keras import layers

from deepcrate.config.sections import MODEL_PRESETS
from deepcrate.errors import ConfigError
from deepcrate.models.musicnn import N_MELS, musicnn_features  # also registers its layer for loading saved models

EMBEDDING_LAYER = "embedding"
OUTPUT_LAYER = "genre_probabilities"
EMBEDDING_SIZE = 128


def build_model(
    *, preset: str, n_classes: int, input_shape: tuple[int, int] = (256, 256), seed: int = 0,
    level_range: float = 8.0, towers: int = 1,
) -> keras.Model:
    """A compiled-ready (not yet compiled) classifier.

    Parameters
    ----------
    preset : {"seed", "improved", "musicnn"}
        ``seed`` is the original architecture exactly (MISSION.md step 4).
        ``improved`` uses 3x3 convolutions with group norm, global average pooling
        and training-time augmentation (random gain, time shift, frequency mask).
        ``musicnn`` is the pretrained tagging network of :mod:`deepcrate.models.musicnn`
        (randomly initialised here: :func:`deepcrate.models.musicnn.load_pretrained` sets its
        weights) with the embedding and genre layers on its 200-d features (those of
        each of ``towers`` networks, side by side); it reads
        the ``musicnn`` spectrogram preset's slices (96 mel bands).
    n_classes : int
        Number of genres.
    input_shape : (rows, frames)
    seed : int
        Seeds the augmentation and dropout layers.
    level_range : float
        ``musicnn`` only: the slices' ``db_range`` (the log10 level drawn as grey 255).
    towers : int
        ``musicnn`` only: pretrained networks side by side (one per checkpoint).

    The layers take their dtype from Keras' global dtype policy at build time
    (``mixed_bfloat16`` for mixed precision); the softmax always computes in float32.
    """
    if preset not in MODEL_PRESETS:
        raise ConfigError(f"train.model must be one of {MODEL_PRESETS}, got {preset!r}")
    if n_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 genres, got {n_classes}")
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="slice")
    if preset == "musicnn":
        if input_shape[0] != N_MELS:
            raise ConfigError(f"train.model=musicnn reads {N_MELS} mel bands (spectrogram.preset=musicnn); "
                              f"the slices have {input_shape[0]} rows")
        x = musicnn_features(inputs, level_range=level_range, towers=towers)
    else:
        x = layers.Rescaling(1.0 / 255.0, name="scale_to_unit")(inputs)
        x = layers.Reshape((*input_shape, 1), name="add_channel")(x)
        body = _seed_body if preset == "seed" else _improved_body
        x = body(x, seed=seed)
    outputs = classifier_head(x, n_classes=n_classes, seed=seed)
    return keras.Model(inputs, outputs, name=f"deepcrate_{preset}")


def slices_per_call(model: keras.Model, requested: int) -> int:
    """How many slices to pass ``model`` at once: musicnn's activations take ~50 MB a slice
    per network (204 timbral filters at every band and frame), so it gets at most 32
    slices per call with one network, 16 with two (~1.6 GB either way)."""
    towers = sum(layer.name.endswith("_penultimate") for layer in model.layers if layer.name.startswith("musicnn"))
    if towers:
        return min(requested, max(1, 32 // towers))
    return requested


def classifier_head(x, *, n_classes: int, seed: int):
    """Dense 128 (the embedding) -> ELU -> Dropout 0.5 -> Dense n -> softmax (MISSION.md step 4)."""
    return embedding_and_genres(x, n_classes=n_classes, seed=seed)[1]


def embedding_and_genres(x, *, n_classes: int, seed: int):
    """:func:`classifier_head`'s (embedding, probabilities) tensors."""
    embedding = layers.Dense(EMBEDDING_SIZE, name=EMBEDDING_LAYER)(x)
    x = layers.Activation("elu", name="embedding_elu")(embedding)
    x = layers.Dropout(0.5, name="dropout", seed=seed)(x)
    x = layers.Dense(n_classes, name="logits")(x)
    return embedding, layers.Activation("softmax", dtype="float32", name=OUTPUT_LAYER)(x)


def _seed_body(x, *, seed: int):
    """4 x [Conv2D kernel 2 stride 2, ELU, MaxPool 2], 64/128/256/512 filters, Flatten."""
    for block, filters in enumerate((64, 128, 256, 512), start=1):
        x = layers.Conv2D(filters, kernel_size=2, strides=2, name=f"conv{block}")(x)
        x = layers.Activation("elu", name=f"elu{block}")(x)
        x = layers.MaxPooling2D(pool_size=2, name=f"pool{block}")(x)
    return layers.Flatten(name="flatten")(x)


def _improved_body(x, *, seed: int):
    """Augment, then 3x3 conv blocks with group norm, then the mean over the image.

    Group norm rather than batch norm: it behaves the same in training and inference,
    so validation losses are right from the first epoch even on a small catalogue
    (batch norm's running statistics lagged for dozens of steps on the demo). A strided
    first layer keeps the cost low enough to train on a laptop CPU; global average
    pooling makes the features insensitive to where in the 5 s slice a sound falls.
    """
    x = RandomGain(max_shift=0.05, seed=seed, name="random_gain")(x)
    x = RandomTimeShift(seed=seed + 1, name="random_time_shift")(x)
    x = RandomBandMask(axis=1, max_width=24, seed=seed + 2, name="frequency_mask")(x)
    for block, filters in enumerate((24, 48, 96, 192), start=1):
        strides = 2 if block == 1 else 1
        x = layers.Conv2D(filters, kernel_size=3, strides=strides, padding="same", use_bias=False,
                          name=f"conv{block}")(x)
        x = layers.GroupNormalization(groups=8, name=f"norm{block}")(x)
        x = layers.Activation("elu", name=f"elu{block}")(x)
        if block < 4:
            x = layers.MaxPooling2D(pool_size=2, name=f"pool{block}")(x)
    return layers.GlobalAveragePooling2D(name="mean_pool")(x)


# -- training-time augmentation (identity at inference) --------------------------------
# Registered so that a saved .keras model loads wherever deepcrate is importable.


@keras.saving.register_keras_serializable(package="deepcrate")
class RandomGain(layers.Layer):
    """Shift the whole slice by one random level, as if the song were mastered louder or softer.

    Grey levels are linear in dB, so a gain is an offset: ``max_shift`` is a fraction
    of the spectrogram's dB range (0.05 of the seed preset's 120 dB is 6 dB).
    """

    def __init__(self, *, max_shift: float, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_shift, self.seed = max_shift, seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        batch = keras.ops.shape(inputs)[0]
        offset = keras.random.uniform((batch, 1, 1, 1), -self.max_shift, self.max_shift, seed=self.generator)
        return keras.ops.clip(inputs + keras.ops.cast(offset, inputs.dtype), 0.0, 1.0)

    def get_config(self):
        return {**super().get_config(), "max_shift": self.max_shift, "seed": self.seed}


@keras.saving.register_keras_serializable(package="deepcrate")
class RandomTimeShift(layers.Layer):
    """Roll each slice along time by a random number of columns (a different cut of the song)."""

    def __init__(self, *, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        frames = keras.ops.shape(inputs)[2]
        batch = keras.ops.shape(inputs)[0]
        shift = keras.random.randint((batch,), 0, frames, seed=self.generator, dtype="int32")
        # int32 indices: oneDNN has no int64 gather on CPUs without AVX-512
        columns = (keras.ops.arange(frames, dtype="int32")[None, :] + shift[:, None]) % frames
        return keras.ops.take_along_axis(inputs, columns[:, None, :, None], axis=2)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="deepcrate")
class RandomBandMask(layers.Layer):
    """SpecAugment-style mask: zero one random band of rows (axis 1: frequencies) or columns (axis 2)."""

    def __init__(self, *, axis: int, max_width: int, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.axis, self.max_width, self.seed = axis, max_width, seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        size = keras.ops.shape(inputs)[self.axis]
        batch = keras.ops.shape(inputs)[0]
        width = keras.random.randint((batch, 1), 0, self.max_width + 1, seed=self.generator)
        start = keras.random.randint((batch, 1), 0, size - self.max_width, seed=self.generator)
        position = keras.ops.arange(size)[None, :]
        keep = keras.ops.logical_or(position < start, position >= start + width)  # (batch, size)
        shape = [batch, 1, 1, 1]
        shape[self.axis] = size
        keep = keras.ops.reshape(keras.ops.cast(keep, inputs.dtype), shape)
        return inputs * keep

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "max_width": self.max_width, "seed": self.seed}


# -- the label-free objective ------------------------------------------------------------

CONTRASTIVE_TEMPERATURE = 0.1


@keras.saving.register_keras_serializable(package="deepcrate")
def pair_contrastive_loss(y_true, y_pred):
    """NT-Xent (SimCLR) over a batch of pairs: rows 2i and 2i+1 are two slices of one song.

    Each row's embedding, L2-normalised, must be more cosine-similar to its partner's
    than to every other row of the batch (the other songs), at temperature
    :data:`CONTRASTIVE_TEMPERATURE`. ``y_true`` is ignored: no labels are needed.
    """
    z = keras.ops.cast(y_pred, "float32")
    z = z / keras.ops.maximum(keras.ops.norm(z, axis=1, keepdims=True), 1e-6)
    n = keras.ops.shape(z)[0]
    rows = keras.ops.arange(n)
    logits = keras.ops.matmul(z, keras.ops.transpose(z)) / CONTRASTIVE_TEMPERATURE
    logits = logits - 1e9 * keras.ops.eye(n, dtype="float32")  # a row is not its own partner
    partner = rows + 1 - 2 * (rows % 2)
    return keras.losses.sparse_categorical_crossentropy(partner, logits, from_logits=True)


SUPCON_TEMPERATURE = 0.1


@keras.saving.register_keras_serializable(package="deepcrate")
def supervised_contrastive_loss(y_true, y_pred):
    """Supervised contrastive loss (Khosla et al. 2020) over a batch of embeddings and genre indices.

    Each row's L2-normalised embedding must be more cosine-similar to every other row
    of its genre (the positives) than to the rest of the batch, at temperature
    :data:`SUPCON_TEMPERATURE`: the geometry the recommendations rank by. A row with
    no positive in the batch adds nothing.
    """
    z = keras.ops.cast(y_pred, "float32")
    z = z / keras.ops.maximum(keras.ops.norm(z, axis=1, keepdims=True), 1e-6)
    n = keras.ops.shape(z)[0]
    eye = keras.ops.eye(n, dtype="float32")
    logits = keras.ops.matmul(z, keras.ops.transpose(z)) / SUPCON_TEMPERATURE - 1e9 * eye
    labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1, 1))
    positive = keras.ops.cast(keras.ops.equal(labels, keras.ops.transpose(labels)), "float32") * (1.0 - eye)
    log_probability = logits - keras.ops.logsumexp(logits, axis=1, keepdims=True)
    return -keras.ops.sum(positive * log_probability, axis=1) / keras.ops.maximum(keras.ops.sum(positive, axis=1), 1.0)


def embedding_model(model: keras.Model) -> keras.Model:
    """The same network cut at the embedding layer (128-d, before its activation)."""
    return keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output, name=f"{model.name}_embedding")
