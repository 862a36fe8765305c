"""The Spark session and what runs beside every job: progress, executors' warnings, injected faults.

Imports only the foundations; nothing here knows about tables or models.
"""
