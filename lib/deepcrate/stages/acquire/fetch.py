"""Fetching one download politely: paced per host, retried, streamed to ``.partial/`` and renamed when whole."""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from deepcrate import __version__
from deepcrate.audio.decode import DECODE_ERROR, TRUNCATED, check_whole
from deepcrate.config import Settings
from deepcrate.errors import AudioError
from deepcrate.stages.acquire.manifest import DOWNLOADED, FAILED, INCOMPLETE, Download

logger = logging.getLogger(__name__)

PARTIAL = ".partial"


class HostPacer:
    """Spaces the starts of requests to one host by at least ``delay_s`` seconds.

    ``clock`` and ``sleep`` are ``time.monotonic`` and ``time.sleep`` unless a test
    hands in its own.
    """

    def __init__(self, delay_s: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.delay_s = delay_s
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}

    def wait(self, host: str) -> float:
        """Block until this request to ``host`` may start; return the start time it was given."""
        with self._lock:  # reserve a start time, then sleep outside the lock
            now = self._clock()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + self.delay_s
        if start > now:
            self._sleep(start - now)
        return start


class _Refused(Exception):
    """A failure that retrying cannot fix (4xx, wrong type, too large)."""

    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class _Retryable(Exception):
    def __init__(self, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class _Incomplete(_Retryable):
    """The body ended, but the audio in it is cut short."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise _Refused(f"redirected to a URL that is not http(s): {newurl!r}", code)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects())


def fetch(item: Download, *, audio_dir: Path, settings: Settings, pacer: HostPacer) -> Download:
    """Download one planned item into ``audio_dir`` (retrying what may pass), fill in its status."""
    final = audio_dir / item.path
    host = urllib.parse.urlsplit(item.url).netloc.lower()
    for attempt in range(1, settings.acquire.retries + 2):
        item.attempts = attempt
        pacer.wait(host)
        try:
            item.http_status, item.bytes = _stream(item.url, final, audio_dir=audio_dir, settings=settings)
            item.status, item.error = DOWNLOADED, None
            return item
        except _Refused as exc:
            item.status, item.http_status, item.error = FAILED, exc.http_status, str(exc)
            return item
        except _Retryable as exc:
            item.status = INCOMPLETE if isinstance(exc, _Incomplete) else FAILED
            item.http_status, item.error = exc.http_status, str(exc)
        if attempt <= settings.acquire.retries:
            pause = settings.acquire.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random() / 2)  # jitter
            logger.debug("%s: %s; retry %d in %.1f s", item.url, item.error, attempt, pause)
            time.sleep(pause)
    item.error = f"{item.error} (gave up after {item.attempts} attempts)"
    return item


def _check_whole(path: Path, *, name: str, settings: Settings, status: int) -> None:
    try:
        check_whole(path.read_bytes(), name=name, truncated_ratio=settings.ingest.truncated_ratio)
    except AudioError as exc:
        if exc.reason in (TRUNCATED, DECODE_ERROR):
            raise _Incomplete(f"cut short: {exc}", status) from None
        raise _Refused(f"not audio: {exc}", status) from None


def _stream(url: str, final: Path, *, audio_dir: Path, settings: Settings) -> tuple[int, int]:
    """GET ``url`` to a temporary file, check it, rename it to ``final``; (HTTP status, bytes)."""
    limit = int(settings.acquire.max_file_mb * 1024 * 1024)
    request = urllib.request.Request(url, headers={"User-Agent": f"deepcrate-acquire/{__version__}"})
    partial = audio_dir / PARTIAL / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".part")
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _OPENER.open(request, timeout=settings.acquire.timeout_s) as response:
            status = response.status
            content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if not any(content_type.startswith(t) for t in settings.acquire.content_types):
                raise _Refused(f"content type {content_type or 'missing'!r} is not audio", status)
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected and expected.isdigit() else None
            if expected is not None and expected > limit:
                raise _Refused(f"too large: {expected / 1e6:.1f} MB > acquire.max_file_mb", status)
            received = 0
            with open(partial, "wb") as out:
                while chunk := response.read(1 << 16):
                    received += len(chunk)
                    if received > limit:
                        raise _Refused(f"too large: over {settings.acquire.max_file_mb:g} MB and still sending", status)
                    out.write(chunk)
            if expected is not None and received != expected:
                raise _Retryable(f"cut off: {received} of {expected} bytes", status)
            if received == 0:
                raise _Retryable("empty response", status)
            if expected is None:  # nothing says how long the body should be: ask the audio itself
                _check_whole(partial, name=final.name, settings=settings, status=status)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        return status, received
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:  # urllib refuses redirects to file: and the like this way
            raise _Refused(f"redirected to a URL that is not http(s): {exc.headers.get('Location')!r}",
                           exc.code) from None
        message = f"HTTP {exc.code} {exc.reason}"
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable(message, exc.code) from None
        raise _Refused(message, exc.code) from None
    except http.client.IncompleteRead as exc:
        raise _Retryable(f"cut off: {len(exc.partial)} bytes then the connection closed") from None
    except TimeoutError:
        raise _Retryable(f"timed out after {settings.acquire.timeout_s:g} s") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, _Refused):
            raise exc.reason from None
        raise _Retryable(f"connection failed: {exc.reason}") from None
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        raise _Retryable(f"connection failed: {type(exc).__name__}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)


# -- the whole job ---------------------------------------------------------------------
