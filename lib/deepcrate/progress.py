"""Progress lines on the driver while executors work: done / total, rate, time left."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Self

logger = logging.getLogger(__name__)


class Progress:
    """Log ``done/total`` every ``interval_s`` seconds from a background thread.

    Parameters
    ----------
    label : str
        What is being counted ("files decoded").
    total : int
        The expected final count.
    done : callable
        Returns the current count (a Spark accumulator's value: it grows as tasks finish).
    interval_s : float
        Seconds between lines.
    """

    def __init__(self, *, label: str, total: int, done: Callable[[], int], interval_s: float) -> None:
        self.label, self.total, self.done, self.interval_s = label, total, done, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deepcrate-progress", daemon=True)
        self._start = 0.0

    def __enter__(self) -> Self:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if exc_info[0] is None:
            self._log(final=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._log(final=False)

    def _log(self, *, final: bool) -> None:
        # Retried tasks report twice; never show more than there is.
        done = min(int(self.done()), self.total) if not final else self.total
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = done / elapsed
        if final:
            logger.info("%s: %d/%d in %.1f s (%.1f/s)", self.label, done, self.total, elapsed, rate)
            return
        left = (self.total - done) / rate if rate > 0 else float("inf")
        percent = 100.0 * done / self.total if self.total else 100.0
        eta = f"~{left:.0f} s left" if left != float("inf") else "rate not known yet"
        logger.info("%s: %d/%d (%.0f%%), %.1f/s, %s", self.label, done, self.total, percent, rate, eta)
