"""Vectors and what is measured on them: top-k, the FAISS index, retrieval metrics, genre accuracy, 2-D maps.

Numerics: imports only the foundations (errors, config, uris); never Spark or TensorFlow.
"""
