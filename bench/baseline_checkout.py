"""A baseline commit's code beside this checkout's, for benchmarks that measure both in one run."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def peak_of(command: list[str], lib: Path) -> tuple[float, float, str]:
    """Run ``command`` with ``lib`` first on ``PYTHONPATH``: (its peak resident MB, seconds, its output).

    The peak is the kernel's high-water mark (``VmHWM``, Linux), read until the process ends:
    polling the resident size missed short peaks (355 MB polled where the mark said 412).
    """
    started = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env_running(lib))
        status, peak = Path(f"/proc/{process.pid}/status"), 0.0
        while process.poll() is None:
            try:
                found = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), flags=re.MULTILINE)
                peak = max(peak, int(found.group(1)) / 1024) if found else peak
            except OSError:
                pass
            time.sleep(0.05)
        log.seek(0)
        output = log.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return peak, time.monotonic() - started, output
