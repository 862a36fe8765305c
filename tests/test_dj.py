"""For the DJ: tempo and key in `songs`, mixable recommendations, a playlist from A to B, and
why a song was recommended, on real warehouses, checked against independent computations."""
import itertools
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from deepcrate.audio.demo import GENRES, render_song
from deepcrate.audio.musical import compatible_camelot, tempo_mixes
from deepcrate.cli import main
from deepcrate.config import resolve_settings
from deepcrate.models.store import MODELS
from deepcrate.query.recommend import Catalogue, Mixable, playlist
from deepcrate.query.recommend.explain import musical_shown
from deepcrate.stages.embed import embed
from deepcrate.stages.index import index_songs
from deepcrate.stages.ingest.job import ingest
from deepcrate.vectors.similarity import normalise

from helpers import delta_table

SLICE_S = 5.12  # the seed preset's slice (tests/conftest.py makes it the default)


@pytest.fixture(scope="module")
def catalogue(rebuilt):
    root = rebuilt[0]
    return Catalogue(str(root / "wh"), settings=resolve_settings())


def _songs(root) -> pd.DataFrame:
    return delta_table(root / "wh" / "songs").to_pandas().set_index("song_id")


def test_ingest_stores_tempo_and_key_of_every_song(rebuilt):
    songs = _songs(rebuilt[0])
    assert {"tempo_bpm", "tempo_confidence", "key", "camelot", "key_confidence", "musical_note"} <= set(songs.columns)
    assert songs["tempo_bpm"].notna().mean() >= 0.9 and songs["key"].notna().mean() >= 0.75  # 11 s songs
    known = songs[songs["key"].notna()]
    assert known["camelot"].str.fullmatch(r"(1[0-2]|[1-9])[AB]").all()
    assert (known["key"].str.endswith("minor") == known["camelot"].str.endswith("A")).all()
    unclear = songs["tempo_bpm"].isna() | songs["key"].isna()
    assert songs.loc[unclear, "musical_note"].notna().all() and songs.loc[~unclear, "musical_note"].isna().all()


def test_mixable_recommendations_keep_tempo_and_key_and_say_when_fewer(rebuilt, capsys):
    root = rebuilt[0]
    songs = _songs(root)
    seed = songs[songs["tempo_bpm"].notna() & songs["camelot"].notna()].index[0]
    tempo, code = songs.at[seed, "tempo_bpm"], songs.at[seed, "camelot"]
    assert main(["recommend", "--warehouse", str(root / "wh"), "--song", seed, "-k", "30", "--mixable",
                 "--bpm-range", "6", "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    expected = {sid for sid, row in songs.iterrows() if sid != seed and not pd.isna(row["tempo_bpm"])
                and tempo_mixes(row["tempo_bpm"], tempo, percent=6) and row["camelot"] in compatible_camelot(code)}
    assert {r["song_id"] for r in found} == expected  # every mixable song, and only those (30 > catalogue)
    for r in found:
        assert r["tempo_bpm"] == pytest.approx(songs.at[r["song_id"], "tempo_bpm"]) and r["camelot"] in compatible_camelot(code)
        assert r["tempo_confidence"] == pytest.approx(songs.at[r["song_id"], "tempo_confidence"])
        assert r["key_confidence"] == pytest.approx(songs.at[r["song_id"], "key_confidence"])
    assert [r["similarity"] for r in found] == sorted((r["similarity"] for r in found), reverse=True)
    assert main(["recommend", "--warehouse", str(root / "wh"), "--song", seed, "-k", "30", "--mixable"]) == 0
    out = capsys.readouterr().out
    assert f"(only {len(expected)} of the 30 asked for pass the filters)" in out and "bpm" in out and "camelot" in out
    assert main(["recommend", "--warehouse", str(root / "wh"), "--song", seed, "--mixable", "--bpm-range", "0"]) == 2
    assert "--bpm-range 0.0: give a percentage" in capsys.readouterr().err


def test_a_playlist_walks_from_a_to_b_through_near_neighbours(rebuilt, catalogue, capsys):
    root = rebuilt[0]
    embeddings = delta_table(root / "wh" / "song_embeddings").to_pandas().set_index("song_id")
    vectors = normalise(np.stack(embeddings["embedding"].to_numpy()).astype(np.float32))
    position = {sid: i for i, sid in enumerate(embeddings.index)}
    cosines = vectors @ vectors.T
    first, last = embeddings.index[0], embeddings.index[int(np.argmin(cosines[0]))]  # far apart
    breadth = 6
    steps = playlist(catalogue, catalogue.song_seed(first), catalogue.song_seed(last), length=6, breadth=breadth)
    ids = steps["song_id"].tolist()
    assert ids[0] == first and ids[-1] == last and len(ids) >= 6 and len(set(ids)) == len(ids)
    for before, after in itertools.pairwise(ids):
        order = [j for j in np.argsort(-cosines[position[before]], kind="stable") if j != position[before]]
        assert position[after] in order[:breadth + 1], (before, after)  # among the previous song's nearest
    towards = [cosines[position[sid], position[last]] for sid in ids]
    assert towards[-2] > towards[0]  # the sequence moves toward B
    assert main(["playlist", "--warehouse", str(root / "wh"), "--from", first, "--to", last, "--length", "5",
                 "--format", "m3u"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "#EXTM3U" and lines[1].startswith("#EXTINF:") and len(lines) >= 1 + 2 * 5
    paths = lines[2::2]
    songs = _songs(root)
    assert paths[0] == songs.at[first, "path"].removeprefix("file:") and paths[-1] == songs.at[last, "path"].removeprefix("file:")
    assert main(["playlist", "--warehouse", str(root / "wh"), "--from", first, "--to", first]) == 2
    assert "the same song" in capsys.readouterr().err


def test_a_mixable_playlist_mixes_at_every_step(rebuilt, catalogue):
    songs = _songs(rebuilt[0])
    trance = songs[(songs["genre"] == "trance") & songs["tempo_bpm"].notna()].index
    steps = playlist(catalogue, catalogue.song_seed(trance[0]), catalogue.song_seed(trance[-1]), length=4,
                               mixable=Mixable(bpm_range=8, key="any"))
    ids = steps["song_id"].tolist()
    assert ids[0] == trance[0] and ids[-1] == trance[-1] and len(set(ids)) == len(ids)
    for before, after in itertools.pairwise(ids[:-1]):  # the end is the user's choice: it need only be near
        assert tempo_mixes(songs.at[after, "tempo_bpm"], songs.at[before, "tempo_bpm"], percent=8), (before, after)


@pytest.fixture(scope="module")
def shared_passage(spark, rebuilt, tmp_path_factory):
    """Five songs, two of which (X, Y) share one passage, aligned to a slice: X's third slice is Y's fifth."""
    root = tmp_path_factory.mktemp("passage")
    audio = root / "audio"
    audio.mkdir()
    rate = 44100
    passage = render_song(GENRES[5], rng=np.random.default_rng(99), seconds=SLICE_S)
    for n, genre in enumerate(GENRES[:5]):
        samples = render_song(genre, rng=np.random.default_rng(n), seconds=30.0)
        if n in (0, 1):
            at = round((2 if n == 0 else 4) * SLICE_S * rate)
            samples[at:at + len(passage)] = passage
        sf.write(audio / f"{'XY'[n] if n < 2 else genre}.wav", samples, rate)
    settings = resolve_settings()
    wh = str(root / "wh")
    ingest(spark, audio=str(audio), manifest=None, warehouse=wh, settings=settings)
    model = next((rebuilt[0] / "wh" / MODELS).iterdir())
    embed(spark, warehouse=wh, settings=settings, model=str(model))
    index_songs(spark, warehouse=wh, settings=settings)
    return root


def test_explain_finds_the_shared_passage(shared_passage, capsys):
    wh = str(shared_passage / "wh")
    x = str(shared_passage / "audio" / "X.wav")
    assert main(["recommend", "--warehouse", wh, "--song", "X.wav", "-k", "4", "--explain", "--format", "json"]) == 0
    found = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(capsys.readouterr().out)}
    why = found["Y.wav"]["why"]
    assert why["seed_passage"] == pytest.approx([2 * SLICE_S, 3 * SLICE_S], abs=0.01)
    assert why["passage"] == pytest.approx([4 * SLICE_S, 5 * SLICE_S], abs=0.01)
    assert why["similarity"] > 0.99 and why["similarity"] > max(r["why"]["similarity"] for n, r in found.items()
                                                                 if n != "Y.wav")
    assert any("BPM" in trait for trait in why["shared"]) and any("key" in trait for trait in why["shared"])
    assert main(["recommend", "--warehouse", wh, "--song", "X.wav", "-k", "4", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "why: 0:10–0:15 of X.wav ↔ 0:20–0:26 of Y.wav" in out
    # a file that is not in the catalogue is explained from its own slices
    assert main(["recommend", "--warehouse", wh, "--file", x, "-k", "4", "--explain", "--format", "json"]) == 0
    from_file = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(capsys.readouterr().out)}
    assert from_file["Y.wav"]["why"]["passage"] == pytest.approx([4 * SLICE_S, 5 * SLICE_S], abs=0.01)


@pytest.mark.unit
def test_a_weak_tempo_or_key_is_shown_as_weak_not_hidden():
    table = pd.DataFrame({"title": ["a", "b", "c", "d"], "tempo_bpm": [96.04, 128.0, None, 140.0],
                          "tempo_confidence": [0.31, 0.8, None, np.nan], "key": ["A minor", "C major", None, "D major"],
                          "camelot": ["8A", "8B", None, "10B"], "key_confidence": [0.9, 0.45, None, None]})
    shown = musical_shown(table)
    assert shown["bpm"].tolist() == ["96.0 (weak)", "128.0", "", "140.0"]  # no confidence (an older ingest): not weak
    assert shown["key"].tolist() == ["A minor", "C major (weak)", None, "D major"]
    assert "tempo_confidence" not in shown and "key_confidence" not in shown  # left to JSON
