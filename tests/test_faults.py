"""A seeded fuzz: 200 small audio files corrupted at the byte level, ingested in one job.

Each file is an MP3, Ogg, FLAC or WAV file that is then truncated, has bytes flipped,
has a range zeroed, is given the wrong extension, or is left intact. Whatever the
damage, the job finishes and every file ends as exactly one row of ``songs`` or of
``rejects`` (with a known reason); nothing crashes, nothing is dropped.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from deepcrate.config import resolve_settings
from deepcrate.stages.ingest.job import ingest
from deepcrate.storage.warehouse import Warehouse

from helpers import make_signal, write_audio

FILES = 200
FORMATS = (("MP3", "mp3"), ("OGG", "ogg"), ("FLAC", "flac"), ("WAV", "wav"))
DAMAGE = ("intact", "truncate", "flip", "zero", "wrong_extension")
REASONS = {"empty", "not_audio", "decode_error", "truncated", "silent", "too_short", "too_large", "duplicate",
           "unsupported_extension", "hidden_name", "unreadable"}


def damage(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """``data`` with one kind of byte-level damage."""
    if kind == "truncate":
        return data[: int(len(data) * rng.uniform(0.0, 0.9))]
    buffer = bytearray(data)
    if kind == "flip":
        for position in rng.integers(0, len(buffer), size=int(rng.integers(1, 64))):
            buffer[position] ^= int(rng.integers(1, 256))
    elif kind == "zero":
        start = int(rng.integers(0, len(buffer)))
        end = min(len(buffer), start + int(rng.integers(16, 4096)))
        buffer[start:end] = bytes(end - start)
    return bytes(buffer)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """The corrupted catalogue: {relative path: (format, damage)}."""
    root = tmp_path_factory.mktemp("fuzz")
    audio, scratch = root / "audio", root / "scratch"
    rng = np.random.default_rng(2026)
    made = {}
    for number in range(FILES):
        fmt, extension = FORMATS[number % len(FORMATS)]
        kind = DAMAGE[int(rng.integers(0, len(DAMAGE)))]
        signal = make_signal(float(rng.uniform(6.0, 9.0)), seed=number, sample_rate=22050)
        clean = write_audio(scratch / f"{number}.{extension}", signal, sample_rate=22050, fmt=fmt)
        if kind == "wrong_extension":
            extension = FORMATS[(number + 1) % len(FORMATS)][1]  # an Ogg file called .mp3, and so on
        relative = f"{fmt.lower()}/{number:03d}-{kind}.{extension}"
        (audio / relative).parent.mkdir(parents=True, exist_ok=True)
        (audio / relative).write_bytes(damage(clean.read_bytes(), kind, rng))
        made[relative] = (fmt, kind)
    return root, made


def test_every_damaged_file_ends_as_one_songs_or_rejects_row_and_nothing_crashes(spark, fuzzed):
    root, made = fuzzed
    settings = resolve_settings(overrides=["ingest.max_duration_s=15", "ingest.progress_interval_s=1"])
    summary = ingest(spark, audio=str(root / "audio"), warehouse=str(root / "wh"), settings=settings)
    store = Warehouse(spark, str(root / "wh"))
    prefix = "file:" + os.path.abspath(root / "audio") + "/"
    songs = [path.removeprefix(prefix) for path in store.read("songs").toPandas()["path"]]
    rejects = store.read("rejects").toPandas()
    rejected = [path.removeprefix(prefix) for path in rejects["path"]]
    assert sorted(songs + rejected) == sorted(made)  # each file exactly once, in one table or the other
    assert set(rejects["reason"]) <= REASONS
    intact_rejected = rejects[[made[p][1] == "intact" for p in rejected]]
    assert intact_rejected.empty, intact_rejected.to_string()  # intact files are songs
    assert summary.songs == len(songs) and len(songs) > FILES // 5  # and many damaged ones still decode
