"""Progress lines on the driver while executors work: done / total, rate, time left.

Spark's accumulators reach the driver only when a task ends, so a task holding many
files or slices would leave a stage at 0 % for minutes. Executors therefore also send
their counts as they go, in UDP datagrams to the driver (at most twice a second per
worker, a few microseconds each); the driver shows the larger of the two counts. A
datagram lost, or a firewall between executors and driver, costs only timeliness: the
accumulator stays exact and the final line uses it.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Self

SEND_EVERY_S = 0.5

logger = logging.getLogger(__name__)


class Progress:
    """Log ``done/total`` every ``interval_s`` seconds from a background thread.

    Parameters
    ----------
    label : str
        What is being counted ("files decoded").
    total : int
        The expected final count.
    done : callable or LiveCount
        The current count: a :class:`LiveCount` the tasks add to (it moves while they run,
        and is closed at the end), or a callable.
    interval_s : float
        Seconds between lines.
    """

    def __init__(self, *, label: str, total: int, done: Callable[[], int] | LiveCount, interval_s: float) -> None:
        self.label, self.total, self.interval_s = label, total, interval_s
        self._count = done if isinstance(done, LiveCount) else None
        self.done = (lambda: done.value) if isinstance(done, LiveCount) else done
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
        if self._count is not None:
            self._count.close()
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


class LiveCount:
    """A count that tasks raise with :meth:`add`: a Spark accumulator (exact, at each task's end)
    plus datagrams to the driver while the task runs (see the module doc).

    Parameters
    ----------
    accumulator
        ``spark.sparkContext.accumulator(0)``.
    driver_host : str, optional
        Where executors reach the driver (``spark.driver.host``); None: the accumulator only.
    """

    def __init__(self, accumulator, *, driver_host: str | None) -> None:
        self.accumulator = accumulator
        self._listener = _Listener.start(driver_host) if driver_host else None
        self.sender = LiveSender(self._listener.address if self._listener else None)

    def __getstate__(self) -> dict:  # what a task receives: no socket, no thread
        return {"accumulator": self.accumulator, "sender": self.sender, "_listener": None}

    def add(self, count: int = 1) -> None:
        self.accumulator.add(count)
        self.sender.add(count)

    @property
    def value(self) -> int:
        """On the driver: what the tasks have counted so far."""
        live = self._listener.received if self._listener else 0
        return max(int(self.accumulator.value), live)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()


class LiveSender:
    """The executors' side of a live count: picklable, opens its socket on first use."""

    def __init__(self, address: tuple[str, int] | None) -> None:
        self.address = address
        self._socket: socket.socket | None = None
        self._pending = 0
        self._sent_at = 0.0

    def __getstate__(self) -> dict:
        return {"address": self.address}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["address"])

    def add(self, count: int = 1) -> None:
        if self.address is None:
            return
        self._pending += count
        now = time.monotonic()
        if now - self._sent_at < SEND_EVERY_S:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._socket.sendto(str(self._pending).encode("ascii"), self.address)
            self._pending = 0
        except OSError:  # unreachable driver: the accumulator still counts
            self.address = None
        self._sent_at = now


class _Listener:
    """The driver's side: sums the counts executors send."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self.address = sock.getsockname()
        self.received = 0
        self._thread = threading.Thread(target=self._run, name="deepcrate-progress-listener", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, host: str) -> _Listener | None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((socket.gethostbyname(host), 0))
            sock.settimeout(0.2)
        except OSError as exc:
            logger.debug("no live progress (%s): lines move as tasks end", exc)
            return None
        return cls(sock)

    def _run(self) -> None:
        while self._socket.fileno() >= 0:
            try:
                data, _ = self._socket.recvfrom(64)
                self.received += int(data)
            except (TimeoutError, ValueError):
                continue
            except OSError:
                return

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=1)
