"""The train stage: learn the embedding (and the genre head) from the ``slices`` table, publish a model folder.

A small package: :mod:`.checks` (the slices table and the pretrained weights before any
training), :mod:`.runs` (the work folder, checkpoints and resuming),
:mod:`.inputs` (the tf.data input pipeline), :mod:`.fitting` (the network and its fit)
and :mod:`.job` (the stage itself: train, evaluate, publish).
"""
from deepcrate.stages.training.checks import check_pretrained_weights
from deepcrate.stages.training.inputs import genre_weights, pair_dataset, training_dataset, validation_dataset
from deepcrate.stages.training.job import STAGE, TrainResult, TrainStage, train
from deepcrate.stages.training.runs import can_resume

__all__ = ["STAGE", "TrainResult", "TrainStage", "can_resume", "check_pretrained_weights",
           "genre_weights", "pair_dataset", "train", "training_dataset", "validation_dataset"]
