"""The ingest stage: every audio file decoded once into songs or rejects, slices and mfcc_features.

:mod:`.audio_inputs` (the folder and the manifest), :mod:`.split` (a song's split), :mod:`.catalogue_rows`
(which files become songs, in pandas) and :mod:`.job` (the stage).
"""
from deepcrate.stages.ingest.decoding import decode_file
from deepcrate.stages.ingest.job import STAGE, IngestStage, IngestSummary, ingest

__all__ = ["STAGE", "IngestStage", "IngestSummary", "decode_file", "ingest"]
