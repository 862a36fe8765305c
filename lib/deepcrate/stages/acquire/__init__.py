"""The acquire stage: a catalogue's audio downloaded from a manifest of URLs, politely and resumably.

:mod:`.manifest` (which file each row becomes, named safely), :mod:`.fetch` (one download: paced,
retried, renamed when whole) and :mod:`.job` (the stage, and its ``downloads`` table).
"""
from deepcrate.stages.acquire.fetch import HostPacer, fetch
from deepcrate.stages.acquire.job import AcquireSummary, acquire
from deepcrate.stages.acquire.manifest import Download, plan_downloads, read_url_manifest, safe_name

__all__ = ["AcquireSummary", "Download", "HostPacer", "acquire", "fetch", "plan_downloads",
           "read_url_manifest", "safe_name"]
