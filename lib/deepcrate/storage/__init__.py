"""The warehouse: every table's schema, all table I/O (Spark and Arrow), Delta commits, the run log, metadata.

Imports :mod:`deepcrate.spark`, :mod:`deepcrate.models` (model folders), the numerics and the foundations.
"""
