"""The input pipeline: the slices table as tf.data datasets (classification, slice pairs, validation)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepcrate.config import TrainSettings
from deepcrate.models.slice_reader import SliceTable

logger = logging.getLogger(__name__)


def training_dataset(table: SliceTable, *, labels: Sequence[str], settings: TrainSettings, n_slices: int,
                     first_epoch: int = 0):
    """The train split as a tf.data pipeline of (uint8 images, label) batches, reshuffled every epoch.

    Keras iterates the dataset afresh each epoch; each pass draws its order from
    ``(train.seed, epoch)``, so a resumed run sees the orders it would have seen.
    """
    next_epoch = [first_epoch]

    def batches():
        epoch_seed = int(np.random.SeedSequence([settings.seed, next_epoch[0]]).generate_state(1)[0])
        next_epoch[0] += 1
        for batch in table.shuffled_batches(split="train", labels=labels, batch_size=settings.batch_size,
                                            buffer_size=settings.shuffle_buffer, interleave=settings.interleave,
                                            seed=epoch_seed):
            yield batch.images, batch.labels

    return _dataset(batches, table.image_shape, n_batches=_n_batches(n_slices, settings.batch_size))


def pair_dataset(table: SliceTable, *, split: str, settings: TrainSettings, first_epoch: int = 0,
                 fixed_seed: bool = False):
    """Batches of slice pairs for the contrastive objective (labels are not read: zeros).

    The number of batches depends on how the songs fall into the shuffle buffer, so the
    dataset has no declared length; ``fixed_seed`` gives the same pairs every pass (validation).
    """
    import tensorflow as tf

    next_epoch = [first_epoch]

    def batches():
        epoch = 0 if fixed_seed else next_epoch[0]
        next_epoch[0] += 1
        epoch_seed = int(np.random.SeedSequence([settings.seed, epoch, 1]).generate_state(1)[0])
        for batch in table.paired_batches(split=split, batch_size=settings.batch_size,
                                          buffer_size=settings.shuffle_buffer, interleave=settings.interleave,
                                          seed=epoch_seed):
            yield batch.images, np.zeros(len(batch.images), np.int32)

    signature = (tf.TensorSpec((None, *table.image_shape), tf.uint8), tf.TensorSpec((None,), tf.int32))
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)


def validation_dataset(table: SliceTable, *, labels: Sequence[str], batch_size: int, n_slices: int):
    """The validation split in table order."""
    def batches():
        for batch in table.batches(split="validation", labels=labels, batch_size=batch_size):
            yield batch.images, batch.labels

    return _dataset(batches, table.image_shape, n_batches=_n_batches(n_slices, batch_size))


def _n_batches(n_slices: int, batch_size: int) -> int:
    return -(-n_slices // batch_size)


def _dataset(batches: Any, image_shape: tuple[int, int], *, n_batches: int):
    """A tf.data pipeline over a batch generator; the known length lets Keras plan its epochs."""
    import tensorflow as tf

    signature = (tf.TensorSpec((None, *image_shape), tf.uint8), tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)


def genre_weights(counts: dict[str, dict[str | None, int]], *, labels: Sequence[str],
                   settings: TrainSettings) -> dict[int, float] | None:
    """Loss weight of each genre index so that every genre of the train split weighs the same
    in total (``train.balance_genres``); None when off.

    Real catalogues are uneven: unweighted, a small model can settle on always answering
    the largest genre.
    """
    if not settings.balance_genres:
        return None
    train = counts.get("train", {})
    total = sum(train[genre] for genre in labels)
    return {index: total / (len(labels) * train[genre]) for index, genre in enumerate(labels)}
