"""CPU seconds by kind of process while a Spark job runs: where the time goes that a plain
single-process loop does not spend (used by bench/ingest.py and bench/embed.py)."""
from __future__ import annotations

import os
import threading
from pathlib import Path


class ProcessCpu:
    """CPU seconds spent while running, by kind of process: Spark's JVM, its Python workers,
    and this (driver) process: where the time goes that the plain loop does not spend."""

    KINDS = ("python_workers", "jvm", "driver_python")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.KINDS, 0.0)
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._start: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}

    def __enter__(self):
        self._start = {pid: cpu for pid, (_, cpu) in self._sample().items()}
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._last.update(self._sample())
        for pid, (kind, cpu) in self._last.items():
            self.seconds[kind] += cpu - self._start.get(pid, 0.0)

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self._last.update(self._sample())

    def _sample(self) -> dict[int, tuple[str, float]]:
        found = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(pid) == os.getpid():
                kind = "driver_python"
            elif b"pyspark.daemon" in cmdline or b"pyspark.worker" in cmdline:
                kind = "python_workers"
            elif b"java" in cmdline and b"spark" in cmdline:
                kind = "jvm"
            else:
                continue
            utime, stime = int(fields[11]), int(fields[12])  # this process's own time, not its children's
            found[int(pid)] = (kind, (utime + stime) / self._tick)
        return found
