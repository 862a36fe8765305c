"""A baseline commit's code beside this checkout's, for benchmarks that measure both in one run."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.002  # how often a running command's memory is read (~2 % of a core)


@contextmanager
def baseline_checkout(commit: str) -> Iterator[Path]:
    """A temporary git worktree of ``commit`` (its folder), removed afterwards."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(folder), commit],
                       check=True, capture_output=True)
        try:
            yield folder
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], capture_output=True)


def env_running(lib: Path) -> dict[str, str]:
    """This process's environment with ``lib`` (a checkout's ``lib``) first on ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(lib), os.environ.get("PYTHONPATH", "")])}


@dataclass
class Peaks:
    """A process's peak memory (MB) and wall time: ``resident`` is the kernel's high-water mark of its
    resident size (``VmHWM``), file pages it maps included; ``anonymous`` the largest anonymous resident
    size seen (``RssAnon``, polled: the kernel keeps no mark of it), what the process itself holds and
    the kernel cannot take back by dropping cached file pages."""

    resident: float
    anonymous: float
    seconds: float
    output: str


def peak_of(command: list[str], lib: Path) -> Peaks:
    """Run ``command`` with ``lib`` first on ``PYTHONPATH``: its peak memory, seconds and output (Linux).

    The resident peak is the kernel's high-water mark, read until the process ends: polling the
    resident size missed short peaks (355 MB polled where the mark said 412). The anonymous peak
    has no mark, so it is polled every :data:`POLL_S`: every 20 ms missed peaks of a few
    milliseconds (one 2,016-song evaluate read 247 MB, the next 225; every 2 ms, 230 and 231).
    """
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env_running(lib))
        status, resident, anonymous = Path(f"/proc/{process.pid}/status"), 0.0, 0.0
        while process.poll() is None:
            try:
                text = status.read_text()
            except OSError:
                text = ""
            resident = max(resident, _status_mb(text, "VmHWM"))
            anonymous = max(anonymous, _status_mb(text, "RssAnon"))
            time.sleep(POLL_S)
        log.seek(0)
        output = log.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return Peaks(resident, anonymous, time.monotonic() - started, output)


def _status_mb(status: str, field: str) -> float:
    found = re.search(rf"^{field}:\s+(\d+) kB", status, flags=re.MULTILINE)
    return int(found.group(1)) / 1024 if found else 0.0
