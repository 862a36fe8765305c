"""Sound to numbers: decoding, spectrograms and slices, MFCCs, timbre, tempo and key, the demo songs.

Numerics: imports only :mod:`deepcrate.vectors` and the foundations; never Spark or TensorFlow.
"""
