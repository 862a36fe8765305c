"""Which files become songs, without Spark: duplicates, labels, kept songs, splits."""
import pandas as pd
import pytest

from deepcrate.config import SplitSettings
from deepcrate.stages.ingest.catalogue_rows import reject_before_decoding, songs_and_rejects
from deepcrate.storage.schemas import SONGS

pytestmark = pytest.mark.unit
AUDIO = "file:/music"
SPLIT = SplitSettings(train=0.6, validation=0.2, test=0.2, seed=0)


def _facts(path: str, content: str, *, reason: str | None = None) -> dict:
    row = {"path": f"{AUDIO}/{path}", "slice_idx": -1, "size_bytes": 1000, "content_sha256": content * 64,
           "reason": reason, "message": f"{path}: bad" if reason else None}
    if reason is None:
        row.update(duration_s=30.0, sample_rate=44100, channels=2, n_slices=5, cut_at_s=None, tempo_bpm=120.0,
                   tempo_confidence=0.8, key="A minor", camelot="8A", key_confidence=0.7, musical_note=None)
    return row


def test_identical_bytes_are_one_song_and_the_others_duplicates_naming_it():
    headers = pd.DataFrame([_facts("rock/b.mp3", "a"), _facts("rock/a.mp3", "a"), _facts("jazz/c.mp3", "c"),
                            _facts("jazz/bad.mp3", "d", reason="decode_error")])
    songs, rejects = songs_and_rejects(headers, labels=None, audio_uri=AUDIO, split=SPLIT)
    assert list(songs.columns[:len(SONGS.names)]) == SONGS.names
    assert sorted(songs["path"]) == [f"{AUDIO}/jazz/c.mp3", f"{AUDIO}/rock/a.mp3"]  # the first path, sorted
    assert dict(zip(songs["path"], songs["genre"])) == {f"{AUDIO}/jazz/c.mp3": "jazz", f"{AUDIO}/rock/a.mp3": "rock"}
    assert songs["song_id"].tolist() == sorted(songs["song_id"]) and set(songs["song_id"]) == {"a" * 16, "c" * 16}
    by_path = rejects.set_index("path")
    assert by_path.loc[f"{AUDIO}/rock/b.mp3", "reason"] == "duplicate"
    assert f"same content as {AUDIO}/rock/a.mp3" in by_path.loc[f"{AUDIO}/rock/b.mp3", "message"]
    assert by_path.loc[f"{AUDIO}/jazz/bad.mp3", "reason"] == "decode_error"


def test_a_kept_song_keeps_its_path_and_split_and_new_copies_of_it_are_duplicates():
    first, _ = songs_and_rejects(pd.DataFrame([_facts("x/one.mp3", "1"), _facts("x/two.mp3", "2")]),
                                 labels=None, audio_uri=AUDIO, split=SPLIT)
    kept = first.assign(split="test")  # whatever split it had, it keeps
    headers = pd.DataFrame([_facts("x/copy-of-one.mp3", "1"), _facts("x/three.mp3", "3")])
    songs, rejects = songs_and_rejects(headers, labels=None, audio_uri=AUDIO, split=SPLIT, kept=kept)
    assert sorted(songs["path"]) == [f"{AUDIO}/x/one.mp3", f"{AUDIO}/x/three.mp3", f"{AUDIO}/x/two.mp3"]
    assert (songs.set_index("path").loc[[f"{AUDIO}/x/one.mp3", f"{AUDIO}/x/two.mp3"], "split"] == "test").all()
    assert rejects["path"].tolist() == [f"{AUDIO}/x/copy-of-one.mp3"] and rejects["reason"].tolist() == ["duplicate"]


def test_manifest_labels_and_extras_attach_by_path():
    labels = pd.DataFrame({"genre": ["ambient"], "artist": ["Eno"], "title": ["1/1"], "release_date": [None],
                           "label": ["EG"]}, index=[f"{AUDIO}/any/a.mp3"])
    songs, _ = songs_and_rejects(pd.DataFrame([_facts("any/a.mp3", "a"), _facts("any/b.mp3", "b")]),
                                 labels=labels, audio_uri=AUDIO, split=SPLIT, decoded_columns=["slice_idx"])
    row = songs.set_index("path").loc[f"{AUDIO}/any/a.mp3"]
    assert (row["genre"], row["artist"], row["title"], row["label"]) == ("ambient", "Eno", "1/1", "EG")
    assert songs.columns[-1] == "label"  # a manifest extra follows the fixed columns
    assert pd.isna(songs.set_index("path").loc[f"{AUDIO}/any/b.mp3", "genre"])  # not in the manifest: unlabelled


@pytest.mark.parametrize(("path", "length", "problem", "reason"), [
    ("a.mp3", 10, "permission denied", "unreadable"), (".hidden.mp3", 10, None, "hidden_name"),
    ("a.mp3", 0, None, "empty"), ("a.txt", 10, None, "unsupported_extension"),
    ("a.mp3", 2 * 2**20, None, "too_large"), ("a.MP3", 10, None, None),
])
def test_files_rejected_before_any_decoding(path, length, problem, reason):
    row = reject_before_decoding(f"{AUDIO}/{path}", length, problem=problem, audio_uri=AUDIO,
                                 extensions=(".mp3",), max_bytes=2**20, max_mb=1)
    assert (row or {}).get("reason") == reason
