"""Which files become songs: the per-file facts of a decode turned into ``songs`` and
``rejects`` rows (deduplicated, labelled, split). Plain pandas, no Spark: ingest wires it
to the executors' output, and tests check it on frames they build.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

from deepcrate.audio.decode import DUPLICATE, EMPTY, HIDDEN_NAME, TOO_LARGE, UNREADABLE, UNSUPPORTED_EXTENSION
from deepcrate.config.sections import SplitSettings
from deepcrate.stages.ingest.audio_inputs import LABEL_COLUMNS, folder_genre, normalise_path, skipped_by_spark
from deepcrate.stages.ingest.split import assign_splits, repair_splits
from deepcrate.storage.schemas import SONGS

logger = logging.getLogger(__name__)


def reject_before_decoding(
    path: str, length: int, *, problem: str | None, audio_uri: str, extensions: tuple[str, ...], max_bytes: int,
    max_mb: float
) -> dict[str, str] | None:
    """The reject row of a file that is not even read, or None when it is to be decoded."""
    if problem is not None:
        return reject_row(path, UNREADABLE, problem)
    if skipped_by_spark(path, audio_uri=audio_uri):
        return reject_row(path, HIDDEN_NAME, f"{path}: Spark skips names starting with '.' or '_'; "
                       "rename it to ingest it")
    if length == 0:
        return reject_row(path, EMPTY, f"{path}: file is empty (0 bytes)")
    if not path.lower().endswith(extensions):
        return reject_row(path, UNSUPPORTED_EXTENSION, f"{path}: not an audio file by its extension "
                       f"(ingest reads {', '.join(extensions)})")
    if length > max_bytes:
        return reject_row(path, TOO_LARGE, f"{path}: {length / 2**20:.1f} MiB is over the {max_mb} MiB "
                       "limit (ingest.max_file_mb); not decoded")
    return None


def reject_row(path: str, reason: str, message: str) -> dict[str, str]:
    return {"path": path, "reason": reason, "message": message}


def songs_and_rejects(
    headers: pd.DataFrame,
    *,
    labels: pd.DataFrame | None,
    audio_uri: str,
    split: SplitSettings,
    kept: pd.DataFrame | None = None,
    decoded_columns: Sequence[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn per-file results into song rows (deduplicated, labelled, split) and rejects.

    ``kept`` are songs of an earlier ingest: they keep their path and split, and a
    decoded file with the same content is their duplicate. ``decoded_columns``: the
    per-file facts' own columns (any other column is a manifest extra).
    """
    kept = kept if kept is not None else pd.DataFrame(columns=SONGS.names)
    headers = headers.sort_values("path", ignore_index=True)
    failed = headers[headers["reason"].notna()]
    decoded = headers[headers["reason"].isna()].copy()
    # Identical bytes are one song: a kept song, else the first path (sorted), keeps it.
    first_path = decoded.groupby("content_sha256")["path"].transform("first")
    kept_path = decoded["content_sha256"].map(dict(zip(kept["content_sha256"], kept["path"])))
    first_path = kept_path.fillna(first_path)
    duplicates = decoded[decoded["path"] != first_path]
    new = decoded[decoded["path"] == first_path].copy()
    rejects = pd.concat([
        failed[["path", "reason", "message"]],
        pd.DataFrame({
            "path": duplicates["path"],
            "reason": DUPLICATE,
            "message": [f"{p}: same content as {q} (song_id {s[:16]}); ingested once"
                        for p, q, s in zip(duplicates["path"], first_path[duplicates.index],
                                           duplicates["content_sha256"])],
        }),
    ], ignore_index=True)

    new["song_id"] = new["content_sha256"].str[:16]
    new = attach_labels(new, labels=labels, audio_uri=audio_uri)
    # Only new songs are drawn: a kept song moving split would leak into a trained model's test.
    new["split"] = assign_splits(
        new, train=split.train, validation=split.validation, test=split.test, seed=split.seed
    )
    computed = [c for c in SONGS.names if c not in LABEL_COLUMNS]
    kept = attach_labels(kept[computed].copy(), labels=labels, audio_uri=audio_uri)
    songs = pd.concat([kept, new], ignore_index=True) if len(kept) else new
    extras = [c for c in songs.columns if c not in SONGS.names and c not in decoded_columns]
    songs = songs[SONGS.names + extras].sort_values("song_id", ignore_index=True)
    songs["split"], moves = repair_splits(songs, train=split.train, validation=split.validation,
                                          seed=split.seed)
    for move in moves:
        logger.warning("split: %s (files were removed)", move)
    return songs, rejects


def attach_labels(songs: pd.DataFrame, *, labels: pd.DataFrame | None, audio_uri: str) -> pd.DataFrame:
    """Songs with genre, artist, title, release_date and extras from the manifest or the folders."""
    songs = songs.drop(columns=[c for c in LABEL_COLUMNS if c in songs.columns])
    if labels is None:
        songs["genre"] = [folder_genre(p, audio_uri=audio_uri) for p in songs["path"]]
        for column in LABEL_COLUMNS[1:]:
            songs[column] = None
        return songs
    keys = songs["path"].map(normalise_path)
    found = keys.isin(labels.index)
    if (~found).any():
        logger.warning("%d songs are not in the manifest and stay unlabelled (first: %s)",
                       int((~found).sum()), songs.loc[~found, "path"].iloc[0])
    attached = labels.reindex(keys)
    attached.index = songs.index
    return songs.join(attached)
