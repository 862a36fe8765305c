"""Ingest end to end on real Spark with real encoded files, good and bad."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from deepcrate.config import resolve_settings
from deepcrate.errors import InputError
from deepcrate.query.history import vacuum
from deepcrate.stages.ingest.job import ingest
from deepcrate.storage.warehouse import Warehouse

from helpers import make_signal, reference_seed_slice, write_audio

CONFIG = ["ingest.max_file_mb=2", "ingest.max_duration_s=15", "ingest.progress_interval_s=1"]

GOOD = {  # relative path -> (seconds, sample rate, channels, format)
    "rock/song one.mp3": (12, 44100, 1, "MP3"),
    "rock/ünïcødé café #1 100%.mp3": (11, 48000, 2, "MP3"),
    "jazz/low [8k].mp3": (11, 8000, 1, "MP3"),
    "jazz/stereo 22k.mp3": (11, 22050, 2, "MP3"),
    "jazz/tone.wav": (6, 44100, 2, "WAV"),
    "jazz/tone.flac": (6, 44100, 1, "FLAC"),
    "jazz/tone.ogg": (6, 44100, 2, "OGG"),
    "loose.mp3": (6, 44100, 1, "MP3"),
    "mixes/long mix.mp3": (40, 44100, 2, "MP3"),
}
BAD = {
    "bad/empty.mp3": "empty",
    "bad/notes.mp3": "not_audio",
    "bad/random.mp3": "not_audio",
    "bad/truncated.mp3": "truncated",
    "bad/corrupt.flac": "decode_error",
    "bad/silent.mp3": "silent",
    "bad/short.mp3": "too_short",
    "bad/huge.wav": "too_large",
    "rock/zz copy of song one.mp3": "duplicate",
    "cover.jpg": "unsupported_extension",
    "rock/_hidden.mp3": "hidden_name",
    ".hidden folder/song.mp3": "hidden_name",
}


def build_catalogue(root: Path) -> Path:
    for n, (relative, (seconds, rate, channels, fmt)) in enumerate(GOOD.items()):
        write_audio(root / relative, make_signal(seconds, sample_rate=rate, channels=channels, seed=n),
                    sample_rate=rate, fmt=fmt)
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp3").write_bytes(b"")
    (bad / "notes.mp3").write_text("not audio at all\n" * 50)
    (bad / "random.mp3").write_bytes(np.random.default_rng(0).bytes(20000))
    whole = write_audio(root / "tmp.mp3", make_signal(12, seed=20)).read_bytes()
    (root / "tmp.mp3").unlink()
    (bad / "truncated.mp3").write_bytes(whole[: len(whole) // 2])
    flac = bytearray(write_audio(bad / "corrupt.flac", make_signal(12, seed=21), fmt="FLAC").read_bytes())
    for i in range(len(flac) // 3, len(flac) // 3 + 2000):
        flac[i] = (flac[i] * 7 + 13) % 256
    (bad / "corrupt.flac").write_bytes(bytes(flac))
    write_audio(bad / "silent.mp3", np.zeros(44100 * 8, np.float32))
    write_audio(bad / "short.mp3", make_signal(3, seed=22))
    write_audio(bad / "huge.wav", make_signal(30, channels=2, seed=23), fmt="WAV")  # 5.3 MB > 2 MB
    shutil.copy(root / "rock/song one.mp3", root / "rock/zz copy of song one.mp3")
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    write_audio(root / "rock/_hidden.mp3", make_signal(6, seed=24))
    write_audio(root / ".hidden folder/song.mp3", make_signal(6, seed=25))
    return root


def uri(root: Path, relative: str) -> str:
    return "file:" + os.path.abspath(root / relative)


def tables(spark, warehouse: Path) -> dict[str, pd.DataFrame]:
    store = Warehouse(spark, str(warehouse))
    return {name: store.read(name).toPandas() for name in ("songs", "slices", "rejects")}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    return build_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="module")
def ingested(spark, catalogue, tmp_path_factory):
    warehouse = tmp_path_factory.mktemp("wh") / "warehouse"
    summary = ingest(spark, audio=str(catalogue), warehouse=str(warehouse), settings=resolve_settings(overrides=CONFIG))
    return summary, warehouse, tables(spark, warehouse)


def test_every_file_ends_in_exactly_one_table(ingested, catalogue):
    _, _, t = ingested
    on_disk = {"file:" + os.path.join(d, f) for d, _, files in os.walk(catalogue) for f in files}
    accounted = list(t["songs"]["path"]) + list(t["rejects"]["path"])
    assert sorted(accounted) == sorted(on_disk)


def test_rejects_carry_the_right_reason_and_name_the_file(ingested, catalogue):
    summary, _, t = ingested
    rejects = t["rejects"].set_index("path")
    for relative, reason in BAD.items():
        row = rejects.loc[uri(catalogue, relative)]
        assert row["reason"] == reason, relative
        assert os.path.basename(relative) in row["message"]
    assert "song one.mp3" in rejects.loc[uri(catalogue, "rock/zz copy of song one.mp3"), "message"]
    assert summary.rejects == pd.Series(BAD).value_counts().to_dict()


def test_songs_record_what_each_file_is(ingested, catalogue):
    summary, _, t = ingested
    songs = t["songs"].set_index("path")
    assert len(songs) == len(GOOD) == summary.songs
    for relative, (seconds, rate, channels, _) in GOOD.items():
        song = songs.loc[uri(catalogue, relative)]
        data = (catalogue / relative).read_bytes()
        assert song["content_sha256"] == hashlib.sha256(data).hexdigest()
        assert song["song_id"] == song["content_sha256"][:16]
        assert song["size_bytes"] == len(data)
        assert (song["sample_rate"], song["channels"]) == (rate, channels)
        assert song["duration_s"] == pytest.approx(seconds, abs=0.1)
        expected_genre = relative.split("/")[0] if "/" in relative else None
        assert song["genre"] == expected_genre
    mix = songs.loc[uri(catalogue, "mixes/long mix.mp3")]
    assert mix["cut_at_s"] == 15.0 and mix["n_slices"] == 2  # 15 s -> 749 columns -> 2 slices
    assert songs.drop(uri(catalogue, "mixes/long mix.mp3"))["cut_at_s"].isna().all()
    assert songs.loc[uri(catalogue, "rock/song one.mp3"), "n_slices"] == 2
    assert songs.loc[uri(catalogue, "jazz/tone.wav"), "n_slices"] == 1


def test_slices_match_songs_and_keep_one_split_per_song(ingested):
    summary, _, t = ingested
    songs, slices = t["songs"], t["slices"]
    assert len(slices) == songs["n_slices"].sum() == summary.slices
    per_song = slices.groupby("song_id")["slice_idx"].agg(sorted)
    for song in songs.itertuples():
        assert per_song[song.song_id] == list(range(song.n_slices))
    merged = slices.merge(songs[["song_id", "split", "genre"]], on="song_id", suffixes=("", "_song"))
    assert (merged["split"] == merged["split_song"]).all()
    assert merged["genre"].equals(merged["genre_song"])
    assert slices.groupby("song_id")["split"].nunique().max() == 1
    np.testing.assert_allclose(slices["offset_s"], slices["slice_idx"] * 5.12)
    assert slices["spectrogram"].map(len).eq(256 * 256).all()


def test_stored_slice_equals_an_independent_decode_and_stft(ingested, catalogue):
    _, _, t = ingested
    songs = t["songs"].set_index("path")
    song_id = songs.loc[uri(catalogue, "rock/song one.mp3"), "song_id"]
    stored = t["slices"][t["slices"]["song_id"] == song_id].sort_values("slice_idx")
    samples, rate = sf.read(catalogue / "rock/song one.mp3", dtype="float64")
    assert rate == 44100 and len(stored) == 2
    for k, blob in enumerate(stored["spectrogram"]):
        image = np.frombuffer(blob, np.uint8).reshape(256, 256).astype(int)
        assert np.abs(image - reference_seed_slice(samples, k)).max() <= 1


def test_rerun_gives_identical_tables(spark, ingested, catalogue):
    _, warehouse, before = ingested
    assert sorted(p.name for p in warehouse.iterdir() if not p.name.startswith("_")) == ["mfcc_features", "rejects", "slices", "songs"]
    for dead in (warehouse / "_scratch" / "20260101T000000-dead" / "decoded", warehouse / "decoded" / "run"):
        dead.mkdir(parents=True)  # a killed job's decoded files, and where an older version left them for good
        (dead / "part-0.parquet").write_bytes(b"x" * 1000)
    ingest(spark, audio=str(catalogue), warehouse=str(warehouse), settings=resolve_settings(overrides=CONFIG))
    assert not (warehouse / "_scratch").exists() and not (warehouse / "decoded").exists()
    after = tables(spark, warehouse)
    keys = {"songs": ["song_id"], "slices": ["song_id", "slice_idx"], "rejects": ["path"]}
    for name, key in keys.items():
        pd.testing.assert_frame_equal(
            before[name].sort_values(key, ignore_index=True), after[name].sort_values(key, ignore_index=True)
        )


def test_crash_while_writing_leaves_the_published_tables(spark, ingested, catalogue, monkeypatch):
    _, warehouse, before = ingested
    original = Warehouse.write_table

    def crash_on_slices(self, run, name, frame, **kwargs):
        original(self, run, name, frame, **kwargs)
        if name == "slices":
            raise RuntimeError("simulated crash")

    published = {p.name for p in (warehouse / "songs").iterdir()}
    monkeypatch.setattr(Warehouse, "write_table", crash_on_slices)
    other = resolve_settings(overrides=CONFIG + ["split.seed=99"])  # would change every split
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(spark, audio=str(catalogue), warehouse=str(warehouse), settings=other)
    monkeypatch.undo()
    (abandoned,) = {p.name for p in (warehouse / "songs").iterdir()} - published  # its files, read by nobody
    after = tables(spark, warehouse)
    pd.testing.assert_frame_equal(before["songs"].sort_values("song_id", ignore_index=True),
                                  after["songs"].sort_values("song_id", ignore_index=True))
    vacuum(warehouse=str(warehouse), keep=1)  # deletes them
    assert not list((warehouse / "songs" / abandoned).glob("*.parquet"))
    assert list((warehouse / "songs").glob("*/*.parquet"))


def test_manifest_supplies_labels_and_extra_columns(spark, catalogue, tmp_path, caplog):
    manifest = tmp_path / "labels.csv"
    pd.DataFrame([
        {"path": "rock/song one.mp3", "genre": "indie", "artist": "A", "title": "One",
         "release_date": "2001-02-03", "Catalogue Number": "CAT-1"},
        {"path": str(catalogue / "jazz/tone.wav"), "genre": "ambient", "artist": "B", "title": "Tone",
         "release_date": "someday", "Catalogue Number": ""},
        {"path": "./jazz/low [8k].mp3", "genre": "lofi", "artist": "", "title": "", "release_date": "",
         "Catalogue Number": ""},
        {"path": "not/there.mp3", "genre": "x", "artist": "", "title": "", "release_date": "",
         "Catalogue Number": ""},
    ]).to_csv(manifest, index=False)
    warehouse = tmp_path / "wh"
    ingest(spark, audio=str(catalogue), manifest=str(manifest), warehouse=str(warehouse),
           settings=resolve_settings(overrides=CONFIG))
    songs = tables(spark, warehouse)["songs"].set_index("path")
    one = songs.loc[uri(catalogue, "rock/song one.mp3")]
    assert (one["genre"], one["artist"], one["title"], str(one["release_date"])) == ("indie", "A", "One", "2001-02-03")
    assert one["catalogue_number"] == "CAT-1"
    tone = songs.loc[uri(catalogue, "jazz/tone.wav")]
    assert tone["genre"] == "ambient" and tone["release_date"] is None
    assert songs.loc[uri(catalogue, "jazz/low [8k].mp3"), "genre"] == "lofi"
    assert songs.loc[uri(catalogue, "loose.mp3"), "genre"] is None  # not in the manifest
    assert "the manifest lists 1 files not found" in caplog.text and "not/there.mp3" in caplog.text


def test_missing_audio_folder_is_a_clear_error(spark, tmp_path):


    with pytest.raises(InputError, match="no such folder"):
        ingest(spark, audio=str(tmp_path / "nope"), warehouse=str(tmp_path / "wh"), settings=resolve_settings())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no files"):
        ingest(spark, audio=str(tmp_path / "empty"), warehouse=str(tmp_path / "wh"), settings=resolve_settings())


def test_mel_preset_ingest_resamples_and_records_its_settings(spark, tmp_path):
    import soxr

    from deepcrate.audio.spectrogram import SpectrogramSettings, iter_slices

    write_audio(tmp_path / "audio" / "x" / "a.mp3", make_signal(12, sample_rate=48000, channels=2, seed=1),
                sample_rate=48000)
    settings = resolve_settings(overrides=["spectrogram.preset=mel"])
    summary = ingest(spark, audio=str(tmp_path / "audio"), warehouse=str(tmp_path / "wh"), settings=settings)
    assert (summary.songs, summary.slices) == (1, 2)  # 12 s at 22.05 kHz: 596 columns
    store = Warehouse(spark, str(tmp_path / "wh"))
    assert store.metadata("slices").spectrogram == SpectrogramSettings.of(settings.spectrogram)
    stored = store.read("slices").orderBy("slice_idx").collect()
    samples, rate = sf.read(tmp_path / "audio" / "x" / "a.mp3", dtype="float32")
    mono = soxr.resample(samples.mean(axis=1), rate, 22050, quality="HQ")
    expected = list(iter_slices(mono, settings=SpectrogramSettings.of(settings.spectrogram)))
    for row, image in zip(stored, expected, strict=True):
        got = np.frombuffer(row.spectrogram, np.uint8).reshape(256, 256).astype(int)
        assert np.abs(got - image.astype(int)).max() <= 1


def test_overlapping_slices_are_ingested_with_their_offsets(spark, tmp_path):
    from deepcrate.audio.spectrogram import SpectrogramSettings

    path = tmp_path / "audio" / "x" / "a.mp3"
    write_audio(path, make_signal(11, seed=4), sample_rate=44100)
    settings = resolve_settings(overrides=["spectrogram.slice_hop_frames=128"])
    summary = ingest(spark, audio=str(tmp_path / "audio"), warehouse=str(tmp_path / "wh"), settings=settings)
    assert (summary.songs, summary.slices) == (1, 3)  # 550 columns: starts 0, 128, 256
    store = Warehouse(spark, str(tmp_path / "wh"))
    assert store.metadata("slices").spectrogram.slice_hop_frames == 128
    assert store.metadata("slices").spectrogram == SpectrogramSettings.of(settings.spectrogram)
    stored = store.read("slices").orderBy("slice_idx").toPandas()
    np.testing.assert_allclose(stored["offset_s"], [0.0, 2.56, 5.12])
    samples, _ = sf.read(path, dtype="float32")
    for row in stored.itertuples():
        got = np.frombuffer(row.spectrogram, np.uint8).reshape(256, 256).astype(int)
        assert np.abs(got - reference_seed_slice(samples[row.slice_idx * 128 * 882 :], 0)).max() <= 1


def test_a_file_listed_twice_with_two_genres_is_named_with_both_and_the_first_kept(tmp_path, caplog):
    from deepcrate.stages.ingest.audio_inputs import read_manifest

    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,genre\nrock/a.mp3,rock\n./rock/a.mp3,jazz\nrock/b.mp3,rock\nrock/b.mp3,rock\n")
    caplog.set_level("WARNING")
    table = read_manifest(str(manifest), audio_uri="file:" + str(tmp_path))
    assert table.loc["file:" + str(tmp_path / "rock" / "a.mp3"), "genre"] == "rock" and len(table) == 2
    assert "rock/a.mp3 is listed with genres ['rock', 'jazz']; the first row's, 'rock', is kept" in caplog.text
    assert "rock/b.mp3 is listed with genres" not in caplog.text  # the same genre twice: nothing to say


def test_an_empty_manifest_is_one_line(tmp_path):
    from deepcrate.stages.ingest.audio_inputs import read_manifest


    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.csv: is empty \(it needs a header line"):
        read_manifest(str(tmp_path / "empty.csv"), audio_uri="file:" + str(tmp_path))


def test_links_that_cannot_be_opened_become_rejects_and_the_job_goes_on(spark, tmp_path):
    audio = tmp_path / "audio"
    for seed in range(3):
        write_audio(audio / "rock" / f"s{seed}.mp3", make_signal(11, seed=seed))
    (audio / "rock" / "broken.mp3").symlink_to(tmp_path / "nowhere.mp3")
    (audio / "rock" / "loop.mp3").symlink_to("loop.mp3")
    (audio / "rock" / "again").symlink_to(audio / "rock", target_is_directory=True)  # a folder loop
    (audio / "rock" / "alias.mp3").symlink_to(audio / "rock" / "s0.mp3")  # a working link: same bytes as s0
    summary = ingest(spark, audio=str(audio), warehouse=str(tmp_path / "wh"), settings=resolve_settings(overrides=CONFIG))
    store = Warehouse(spark, str(tmp_path / "wh"))
    rejects = store.read("rejects").toPandas().set_index("path")
    songs = store.read("songs").toPandas()
    assert summary.songs == 3 and len(songs) == 3
    assert len(songs) + len(rejects) == 7  # every entry accounted for
    root = f"file:{audio}/rock"
    assert rejects.loc[f"{root}/broken.mp3", "reason"] == "unreadable"
    assert "nowhere.mp3: cannot be opened: No such file" in rejects.loc[f"{root}/broken.mp3", "message"]
    assert "Too many levels of symbolic links" in rejects.loc[f"{root}/loop.mp3", "message"]
    assert "a symlink to a folder, not followed" in rejects.loc[f"{root}/again", "message"]
    assert rejects.loc[f"{root}/s0.mp3", "reason"] == "duplicate"  # the link sorts first and keeps the song


def test_a_colon_in_a_file_name_makes_a_song_not_a_failed_job(spark, tmp_path):
    audio = tmp_path / "audio"  # issue 43: "a:b.mp3" failed the job (URISyntaxException on its .crc)
    write_audio(audio / "a:b.mp3", make_signal(6, seed=1))
    write_audio(audio / "house" / "Artist: Title.mp3", make_signal(6, seed=2))
    write_audio(audio / "house" / "plain.mp3", make_signal(6, seed=3))
    summary = ingest(spark, audio=str(audio), warehouse=str(tmp_path / "wh"), settings=resolve_settings(overrides=CONFIG))
    songs = Warehouse(spark, str(tmp_path / "wh")).read("songs").toPandas().set_index("path")
    assert summary.songs == 3 and sum(summary.rejects.values()) == 0
    assert songs.loc[f"file:{audio}/house/Artist: Title.mp3", "genre"] == "house"
    assert f"file:{audio}/a:b.mp3" in songs.index
    assert list(tmp_path.rglob("*.crc")) == []  # local files go through Hadoop's raw file system


@pytest.mark.parametrize("text, message", [
    ("path,genre\na.mp3,house,extra\nb.mp3,trance\n", "line 2 has 3 fields, the header names 2 (path, genre)"),
    ("path,genre,Genre\na.mp3,house,trance\n", "columns 'genre', 'Genre' all become column 'genre'"),
    ("path,a b,a-b\na.mp3,1,2\n", "columns 'a b', 'a-b' all become column 'a_b'"),
])
def test_a_manifest_whose_columns_would_shift_or_merge_is_refused_in_one_line(tmp_path, text, message):
    from deepcrate.stages.ingest.audio_inputs import read_manifest

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(text)
    with pytest.raises(InputError) as refused:
        read_manifest(str(manifest), audio_uri="file:" + str(tmp_path))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_a_manifest_row_with_fewer_fields_keeps_its_label(tmp_path):
    from deepcrate.stages.ingest.audio_inputs import read_manifest

    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,genre,artist\na.mp3,house\nb.mp3,trance,Someone\n")
    table = read_manifest(str(manifest), audio_uri="file:" + str(tmp_path))
    assert table["genre"].tolist() == ["house", "trance"] and table["artist"].tolist() == [None, "Someone"]


def test_removing_a_genres_validation_songs_is_repaired_by_the_next_incremental_ingest(spark, tmp_path, caplog):
    audio, wh = tmp_path / "audio", tmp_path / "wh"
    for n in range(6):
        write_audio(audio / ("trance" if n < 3 else "house") / f"s{n}.mp3", make_signal(6, seed=n))
    settings = resolve_settings(overrides=CONFIG)
    ingest(spark, audio=str(audio), warehouse=str(wh), settings=settings, incremental=True)
    songs = Warehouse(spark, str(wh)).read("songs").toPandas()
    for path in songs.loc[(songs["genre"] == "trance") & (songs["split"] == "validation"), "path"]:
        os.unlink(path[len("file:"):])  # issue 43: training then refused "no validation slices for trance"
    caplog.set_level("WARNING")
    ingest(spark, audio=str(audio), warehouse=str(wh), settings=settings, incremental=True)
    after = Warehouse(spark, str(wh)).read("songs").toPandas().set_index("song_id")
    assert set(after.loc[after["genre"] == "trance", "split"]) == {"train", "validation"}
    assert "genre 'trance' had no validation song left" in caplog.text
    before = songs.set_index("song_id")["split"].reindex(after.index)
    moved = after.index[after["split"] != before]
    assert len(moved) == 1  # one song moved: a trance song, from train to validation
    assert (after.loc[moved[0], "genre"], before[moved[0]], after.loc[moved[0], "split"]) == \
        ("trance", "train", "validation")
