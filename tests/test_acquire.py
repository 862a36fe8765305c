"""Acquire against a real HTTP server on 127.0.0.1 with injected faults."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import ClassVar

import pytest
import soundfile as sf

from deepcrate.cli import main
from deepcrate.config import resolve_settings
from deepcrate.errors import InputError
from deepcrate.stages.acquire import HostPacer, acquire, plan_downloads, read_url_manifest, safe_name
from deepcrate.stages.ingest.job import ingest

from helpers import delta_frame, make_signal

LIMIT_MB = 0.2
TIMEOUT_S = 3  # roomy, so that a loaded test machine never times out a healthy download
FAST = ["acquire.retries=1", "acquire.backoff_s=0.01", f"acquire.timeout_s={TIMEOUT_S}", "acquire.per_host_delay_s=0",
        f"acquire.max_file_mb={LIMIT_MB}", "acquire.workers=4"]


def _mp3(seed: int) -> bytes:
    out = io.BytesIO()
    sf.write(out, make_signal(6.0, seed=seed), 44100, format="MP3")
    return out.getvalue()


BODIES = {f"{name}.mp3": _mp3(seed) for seed, name in enumerate(["a", "b", "c", "h1", "h2", "same1", "same2", "d", "e"])}


class _Handler(BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}
    lock = threading.Lock()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        with self.lock:
            self.hits[self.path] = self.hits.get(self.path, 0) + 1
            hit = self.hits[self.path]
        path = self.path
        if path.startswith("/ok/"):
            return self._send(BODIES[path[len("/ok/"):]])
        if path == "/flaky.mp3":
            return self._send(BODIES["d.mp3"]) if hit > 1 else self._status(500)
        if path == "/missing.mp3":
            return self._status(404)
        if path == "/slow.mp3":
            time.sleep(2 * TIMEOUT_S)  # past the client's timeout, every time
            return self._send(BODIES["a.mp3"])
        if path in ("/cut-once.mp3", "/cut.mp3"):
            body = BODIES["e.mp3"]
            if path == "/cut-once.mp3" and hit > 1:
                return self._send(body)
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])  # then the connection closes
            return None
        if path in ("/no-length.mp3", "/no-length-cut.mp3", "/no-length-cut-once.mp3"):
            # no Content-Length: only the audio itself can tell a body cut short
            body = BODIES["b.mp3"]
            whole = path == "/no-length.mp3" or (path == "/no-length-cut-once.mp3" and hit > 1)
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.end_headers()
            self.wfile.write(body if whole else body[: len(body) // 2])
            return None
        if path == "/no-length-page.mp3":
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.end_headers()
            self.wfile.write(b"<html>an error page served as audio</html>")
            return None
        if path == "/page.mp3":
            return self._send(b"<html>not found, really</html>", content_type="text/html; charset=utf-8")
        if path == "/redirect.mp3":
            return self._status(302, location="/ok/c.mp3")
        if path == "/redirect-file.mp3":
            return self._status(302, location="file:///etc/passwd")
        if path == "/huge.mp3":
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.send_header("Content-Length", str(int(LIMIT_MB * 1024 * 1024) + 1))
            self.end_headers()
            return None
        if path == "/endless.mp3":  # no Content-Length: the body ends when the connection does
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"\xff" * 65536)
            except OSError:
                pass  # the client hung up, as it should
            return None
        return self._status(404)

    def _send(self, body: bytes, *, content_type: str = "audio/mpeg"):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # a client that timed out has gone

    def _status(self, code: int, *, location: str | None = None):
        self.send_response(code)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server():
    _Handler.hits = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = sorted({k for r in rows for k in r}, key=lambda c: (c != "url", c))
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _table(spark, wh: Path) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for row in delta_frame(spark, wh / "downloads").collect():
        key = row["url"].rsplit("/", 1)[-1] if "://127.0.0.1:" in row["url"] else row["url"]
        table.setdefault(key, row.asDict())  # the first row of a repeated URL
    return table


def test_every_url_ends_intact_or_as_a_clear_error_and_a_rerun_downloads_nothing_twice(spark, server, tmp_path):
    rows = [
        {"url": f"{server}/ok/a.mp3", "genre": "house", "artist": "Ann", "title": "First", "label": "L1",
         "catalogue_number": "CAT-1", "release_date": "2001-02-03", "bpm": "124"},
        {"url": f"{server}/ok/b.mp3", "genre": "house", "artist": "Bob", "title": "Second"},
        {"url": f"{server}/flaky.mp3", "genre": "trance", "title": "Flaky"},
        {"url": f"{server}/missing.mp3", "genre": "trance", "title": "Missing"},
        {"url": f"{server}/slow.mp3", "genre": "trance", "title": "Slow"},
        {"url": f"{server}/cut-once.mp3", "genre": "trance", "title": "Cut once"},
        {"url": f"{server}/cut.mp3", "genre": "trance", "title": "Cut"},
        {"url": f"{server}/page.mp3", "genre": "trance", "title": "Page"},
        {"url": f"{server}/redirect.mp3", "genre": "trance", "title": "Redirected"},
        {"url": f"{server}/redirect-file.mp3", "genre": "trance", "title": "Redirected to a file"},
        {"url": f"{server}/huge.mp3", "genre": "trance", "title": "Huge"},
        {"url": f"{server}/endless.mp3", "genre": "trance", "title": "Endless"},
        {"url": f"{server}/ok/h1.mp3", "genre": "../../..", "title": "../../etc/passwd"},
        {"url": f"{server}/ok/h2.mp3", "genre": "dub", "artist": "\x00evil\nname", "title": "a/b\\c:d*e?.mp3"},
        {"url": f"{server}/ok/same1.mp3", "genre": "dub", "artist": "Twin", "title": "Song"},
        {"url": f"{server}/ok/same2.mp3", "genre": "dub", "artist": "Twin", "title": "Song"},
        {"url": f"{server}/ok/a.mp3", "genre": "house", "title": "the same URL again"},
        {"url": "ftp://127.0.0.1/x.mp3", "genre": "dub", "title": "ftp"},
        {"url": "file:///etc/passwd", "genre": "dub", "title": "local"},
    ]
    manifest = _manifest(tmp_path / "urls.csv", rows)
    audio, wh = tmp_path / "audio", tmp_path / "wh"
    settings = resolve_settings(overrides=FAST)
    summary = acquire(spark, manifest=str(manifest), audio=str(audio), warehouse=str(wh), settings=settings)

    table = _table(spark, wh)
    assert len(delta_frame(spark, wh / "downloads").collect()) == len(rows)  # one row per manifest row
    expected = {  # url tail -> (status, http_status, attempts, words in the error)
        "a.mp3": ("downloaded", 200, 1, None),
        "flaky.mp3": ("downloaded", 200, 2, None),
        "missing.mp3": ("failed", 404, 1, "HTTP 404"),
        "slow.mp3": ("failed", None, 2, f"timed out after {TIMEOUT_S} s (gave up after 2 attempts)"),
        "cut-once.mp3": ("downloaded", 200, 2, None),
        "cut.mp3": ("failed", 200, 2, "cut off"),
        "page.mp3": ("failed", 200, 1, "content type 'text/html' is not audio"),
        "redirect.mp3": ("downloaded", 200, 1, None),
        "redirect-file.mp3": ("failed", 302, 1, "redirected to a URL that is not http(s)"),
        "huge.mp3": ("failed", 200, 1, "too large"),
        "endless.mp3": ("failed", 200, 1, "still sending"),
        "ftp://127.0.0.1/x.mp3": ("failed", None, 0, "not an http(s) URL"),
        "file:///etc/passwd": ("failed", None, 0, "not an http(s) URL"),
    }
    for key, (status, http_status, attempts, words) in expected.items():
        row = table[key]
        assert (row["status"], row["http_status"], row["attempts"]) == (status, http_status, attempts), row
        assert (row["error"] is None) if words is None else (words in row["error"]), row
    assert summary.counts() == {"downloaded": 9, "failed": 9, "duplicate": 1}

    # Downloaded files are intact, under the audio folder, named safely and uniquely.
    served = {"a.mp3": "a.mp3", "flaky.mp3": "d.mp3", "cut-once.mp3": "e.mp3", "redirect.mp3": "c.mp3",
              "b.mp3": "b.mp3", "h1.mp3": "h1.mp3", "h2.mp3": "h2.mp3", "same1.mp3": "same1.mp3",
              "same2.mp3": "same2.mp3"}
    with open(audio / "manifest.csv", encoding="utf-8", newline="") as stream:
        listed = {r["url"].rsplit("/", 1)[-1]: r for r in csv.DictReader(stream)}
    assert sorted(listed) == sorted(served)
    for key, body in served.items():
        file = audio / listed[key]["path"]
        assert file.resolve().is_relative_to(audio.resolve())
        assert hashlib.sha256(file.read_bytes()).digest() == hashlib.sha256(BODIES[body]).digest()
    assert listed["h1.mp3"]["path"] == "unlabelled/etc passwd.mp3"
    assert listed["h2.mp3"]["path"] == "dub/evil name - a b c d e .mp3.mp3"
    assert (listed["same1.mp3"]["path"], listed["same2.mp3"]["path"]) == ("dub/Twin - Song.mp3", "dub/Twin - Song (2).mp3")
    assert listed["a.mp3"]["label"] == "L1" and listed["a.mp3"]["catalogue_number"] == "CAT-1"
    assert listed["a.mp3"]["bpm"] == "124" and listed["a.mp3"]["release_date"] == "2001-02-03"
    assert table["a.mp3"]["path"] == "house/Ann - First.mp3"
    files = sorted(str(p.relative_to(audio)) for p in audio.rglob("*") if p.is_file())
    assert files == sorted([*(r["path"] for r in listed.values()), "manifest.csv"])  # no half files, no .partial

    # A rerun downloads nothing it already has; it tries the failures again.
    ok_hits = {p: n for p, n in _Handler.hits.items() if p.startswith("/ok/")}
    again = acquire(spark, manifest=str(manifest), audio=str(audio), warehouse=str(wh), settings=settings)
    assert {p: n for p, n in _Handler.hits.items() if p.startswith("/ok/")} == ok_hits
    assert again.counts() == {"present": 9, "failed": 9, "duplicate": 1}
    assert _Handler.hits["/missing.mp3"] == 2

    # The folder chains straight into ingest, labels included.
    result = ingest(spark, audio=str(audio), manifest=str(audio / "manifest.csv"), warehouse=str(wh),
                    settings=resolve_settings())
    songs = delta_frame(spark, wh / "songs").toPandas()
    assert len(songs) == 9 and result.songs == 9
    first = songs[songs["title"] == "First"].iloc[0]
    assert (first["genre"], first["artist"], first["label"], first["bpm"]) == ("house", "Ann", "L1", "124")


def test_a_rerun_after_a_crash_before_the_manifest_keeps_the_finished_files(spark, server, tmp_path):
    rows = [{"url": f"{server}/ok/{name}", "genre": "g"} for name in ("a.mp3", "b.mp3")]
    manifest, audio = _manifest(tmp_path / "urls.csv", rows), tmp_path / "audio"
    settings = resolve_settings(overrides=FAST)
    acquire(spark, manifest=str(manifest), audio=str(audio), warehouse=str(tmp_path / "wh"), settings=settings)
    (audio / "manifest.csv").unlink()  # as if killed after the downloads, before the manifest
    (audio / ".partial").mkdir()
    (audio / ".partial" / "leftover.part").write_bytes(b"half a file")
    hits = dict(_Handler.hits)
    again = acquire(spark, manifest=str(manifest), audio=str(audio), warehouse=str(tmp_path / "wh"), settings=settings)
    assert _Handler.hits == hits and again.counts() == {"present": 2}
    assert [d.bytes for d in again.downloads] == [len(BODIES["a.mp3"]), len(BODIES["b.mp3"])]
    assert not (audio / ".partial").exists() and (audio / "manifest.csv").is_file()


def test_pacer_gives_each_host_start_times_spaced_by_the_delay():
    slept: list[float] = []
    pacer = HostPacer(0.3, clock=lambda: 100.0, sleep=slept.append)  # a clock that stands still
    with ThreadPoolExecutor(max_workers=4) as pool:
        starts = sorted(pool.map(lambda _: pacer.wait("a.example"), range(4)))
    assert starts == pytest.approx([100.0, 100.3, 100.6, 100.9])
    assert sorted(slept) == pytest.approx([0.3, 0.6, 0.9])  # the first request does not wait
    assert pacer.wait("b.example") == 100.0  # another host has its own schedule
    assert HostPacer(0.0, clock=lambda: 5.0, sleep=slept.append).wait("a.example") == 5.0


def test_requests_to_one_host_wait_for_each_other(spark, server, tmp_path, monkeypatch):
    starts: list[float] = []

    class RecordingPacer(HostPacer):
        def wait(self, host: str) -> float:
            start = super().wait(host)
            starts.append(start)
            return start

    monkeypatch.setattr("deepcrate.stages.acquire.job.HostPacer", RecordingPacer)
    rows = [{"url": f"{server}/ok/{name}", "genre": "g"} for name in ("a.mp3", "b.mp3", "c.mp3", "d.mp3")]
    settings = resolve_settings(overrides=[*FAST, "acquire.per_host_delay_s=0.3"])
    summary = acquire(spark, manifest=str(_manifest(tmp_path / "urls.csv", rows)), audio=str(tmp_path / "audio"),
                      warehouse=str(tmp_path / "wh"), settings=settings)
    assert summary.counts() == {"downloaded": 4}
    starts.sort()
    assert len(starts) == 4  # 4 workers, yet one schedule: pacers per worker would start them together
    assert min(b - a for a, b in pairwise(starts)) >= 0.3 - 1e-9


def test_distributed_downloads_on_spark_executors(spark, server, tmp_path, capsys):
    rows = [{"url": f"{server}/ok/{name}", "genre": "g", "title": name} for name in ("a.mp3", "b.mp3", "c.mp3")]
    rows.append({"url": f"{server}/missing.mp3", "genre": "g"})
    manifest = _manifest(tmp_path / "urls.csv", rows)
    code = main(["acquire", "--manifest", str(manifest), "--audio", str(tmp_path / "audio"), "--warehouse",
                 str(tmp_path / "wh"), "--workers", "2", *[a for s in FAST for a in ("--set", s)],
                 "--set", "acquire.distributed=true"])
    assert code == 0
    out = capsys.readouterr().out
    assert "4 URLs" in out and "3 downloaded" in out and "1 failed" in out and "HTTP 404" in out
    for name in ("a", "b", "c"):
        data = (tmp_path / "audio" / "g" / f"{name}.mp3.mp3").read_bytes()
        assert data == BODIES[f"{name}.mp3"]


def test_manifests_in_csv_and_json_lines(tmp_path):
    jsonl = tmp_path / "urls.jsonl"
    jsonl.write_text('{"url": "http://x/1.mp3", "Genre": "House", "year": 2001}\n\n{"url": "http://x/2.ogg"}\n')
    rows = read_url_manifest(jsonl)
    assert rows == [{"url": "http://x/1.mp3", "genre": "House", "year": "2001"}, {"url": "http://x/2.ogg"}]
    planned = plan_downloads(rows)
    assert [p.path for p in planned] == ["House/1.mp3", "unlabelled/2.ogg"]
    (tmp_path / "bad.csv").write_text("link,genre\nhttp://x/1.mp3,a\n")
    with pytest.raises(InputError, match="needs a 'url' column"):
        read_url_manifest(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text('{"url": "http://x"}\n{oops\n')
    with pytest.raises(InputError, match="line 2 is not JSON"):
        read_url_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(InputError, match="no such file"):
        read_url_manifest(tmp_path / "none.csv")


@pytest.mark.parametrize("raw, safe", [
    ("../../etc/passwd", "etc passwd"),
    ("..", "track"),
    (".hidden", "hidden"),
    ("a\x00b\x1fc\u200bd", "a b c d"),  # control and format characters
    ("Café  Über", "Café Über"),
    ("x" * 400, "x" * 150),
    ("é" * 100, "é" * 75),  # cut at a character boundary within 150 bytes
])
def test_safe_names(raw, safe):
    assert safe_name(raw) == safe
    assert json.dumps(safe_name(raw))  # always valid text


def test_a_body_without_content_length_is_kept_only_when_the_audio_is_whole(spark, server, tmp_path):
    rows = [{"url": f"{server}/{name}.mp3", "genre": "g", "title": name}
            for name in ("no-length", "no-length-cut", "no-length-cut-once", "no-length-page")]
    audio, wh = tmp_path / "audio", tmp_path / "wh"
    settings = resolve_settings(overrides=FAST)
    summary = acquire(spark, manifest=str(_manifest(tmp_path / "urls.csv", rows)), audio=str(audio), warehouse=str(wh),
                      settings=settings)
    table = _table(spark, wh)
    assert (table["no-length.mp3"]["status"], table["no-length.mp3"]["attempts"]) == ("downloaded", 1)
    assert (table["no-length-cut-once.mp3"]["status"], table["no-length-cut-once.mp3"]["attempts"]) == ("downloaded", 2)
    cut = table["no-length-cut.mp3"]
    assert (cut["status"], cut["http_status"], cut["attempts"]) == ("partial", 200, 2)
    assert "truncated: decoded" in cut["error"] and "its header promises" in cut["error"]
    page = table["no-length-page.mp3"]
    assert (page["status"], page["attempts"]) == ("failed", 1) and "not audio" in page["error"]
    assert summary.counts() == {"downloaded": 2, "partial": 1, "failed": 1}
    kept = list(audio.rglob("*.mp3"))  # only the whole ones are in the audio folder
    assert len(kept) == 2 and all(sf.info(path).frames > 0 for path in kept)
    # a partial download is fetched again by the next run; the whole ones are not
    acquire(spark, manifest=str(_manifest(tmp_path / "urls.csv", rows)), audio=str(audio), warehouse=str(wh),
            settings=settings)
    assert _Handler.hits["/no-length-cut.mp3"] == 4 and _Handler.hits["/no-length.mp3"] == 1
