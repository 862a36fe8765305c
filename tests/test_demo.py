"""The demo catalogue: real MP3s, labelled, deterministic."""
import csv
import hashlib

import numpy as np
import soundfile as sf

from deepcrate.audio.demo import GENRES, write_demo_catalogue


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.mp3"))}


def test_demo_catalogue_is_labelled_real_mp3_and_deterministic(tmp_path):
    genres = ("funky_house", "downtempo")
    manifest = write_demo_catalogue(tmp_path / "a", songs_per_genre=2, seconds=6, seed=1, genres=genres, workers=2)
    write_demo_catalogue(tmp_path / "b", songs_per_genre=2, seconds=6, seed=1, genres=genres, workers=1)
    write_demo_catalogue(tmp_path / "c", songs_per_genre=2, seconds=6, seed=2, genres=genres, workers=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    rows = list(csv.DictReader(manifest.open(encoding="utf-8")))
    assert list(rows[0]) == ["path", "genre", "artist", "title", "release_date"]
    assert len(rows) == 4 and {r["genre"] for r in rows} == set(genres)
    for row in rows:
        assert row["path"].startswith(row["genre"] + "/")
        info = sf.info(str(tmp_path / "a" / row["path"]))
        assert info.format == "MP3" and info.samplerate == 44100
        assert abs(info.duration - 6) < 0.1


def test_styles_differ_audibly(tmp_path):
    """No drums in downtempo: far less energy in short percussive bursts than house."""
    write_demo_catalogue(tmp_path, songs_per_genre=1, seconds=6, seed=0, genres=("funky_house", "downtempo"))

    def flux(genre):
        x, _ = sf.read(next((tmp_path / genre).glob("*.mp3")))
        frames = np.abs(np.fft.rfft(x[: len(x) // 1024 * 1024].reshape(-1, 1024), axis=1))
        return np.maximum(np.diff(frames, axis=0), 0).sum(axis=1).std() / frames.sum(axis=1).mean()

    assert len(GENRES) >= 6
    assert flux("funky_house") > 2 * flux("downtempo")
