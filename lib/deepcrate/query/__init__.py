"""The readers: recommend, sql (and its shell and read-only check), history, rollback and vacuum, the report.

Imports storage and below, never a stage; each reader is independent of the others.
"""
