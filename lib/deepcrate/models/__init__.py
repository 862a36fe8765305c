"""The sound model: Keras architectures, musicnn, heads on pretrained features, model folders, inference.

Imports :mod:`deepcrate.audio`, :mod:`deepcrate.vectors` and the foundations; never Spark (heads in numpy need no TensorFlow).
"""
