"""Genre accuracy on the test split: per slice, and per song by summed softmax votes.

A song's genre is the argmax of the *sum* of its slices' softmax outputs
(MISSION.md step 5), so one confident slice can outvote two unsure ones.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def vote_songs(song_ids: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum the slices' class probabilities per song.

    Parameters
    ----------
    song_ids : ndarray, shape (n_slices,)
    probabilities : ndarray, shape (n_slices, n_classes)

    Returns
    -------
    songs : ndarray, shape (n_songs,)
        The distinct song ids, sorted.
    votes : ndarray, shape (n_songs, n_classes)
        Summed probabilities; ``votes.argmax(axis=1)`` is each song's genre.
    """
    songs, position = np.unique(np.asarray(song_ids), return_inverse=True)
    votes = np.zeros((len(songs), probabilities.shape[1]), dtype=np.float64)
    np.add.at(votes, position, probabilities)
    return songs, votes


@dataclass
class Evaluation:
    """Predictions for every test slice and song, and the metrics they give."""

    model_version: str
    labels: list[str]
    slice_true: np.ndarray  # (n_slices,) label index
    slice_pred: np.ndarray
    song_ids: np.ndarray  # (n_songs,)
    song_true: np.ndarray
    song_pred: np.ndarray

    @classmethod
    def from_predictions(
        cls,
        *,
        model_version: str,
        labels: Sequence[str],
        song_ids: np.ndarray,
        true_labels: np.ndarray,
        probabilities: np.ndarray,
    ) -> Evaluation:
        """Score slice predictions; every slice of a song must carry the song's label."""
        songs, votes = vote_songs(song_ids, probabilities)
        _, first = np.unique(np.asarray(song_ids), return_index=True)
        return cls(
            model_version=model_version,
            labels=list(labels),
            slice_true=np.asarray(true_labels),
            slice_pred=probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, int),
            song_ids=songs,
            song_true=np.asarray(true_labels)[first],
            song_pred=votes.argmax(axis=1) if len(votes) else np.zeros(0, int),
        )

    @property
    def confusion(self) -> np.ndarray:
        """Song counts: row = true genre, column = predicted genre."""
        n = len(self.labels)
        matrix = np.zeros((n, n), dtype=np.int64)
        np.add.at(matrix, (self.song_true, self.song_pred), 1)
        return matrix

    def metrics(self) -> dict[str, Any]:
        """Everything as plain JSON-ready values (``metrics.json``)."""
        per_genre = {}
        for index, genre in enumerate(self.labels):
            row = self._genre_row(index)
            per_genre[genre] = {k: row[k] for k in ("songs", "slices", "song_accuracy", "slice_accuracy",
                                                    "most_confused_with")}
        return {
            "model_version": self.model_version,
            "labels": self.labels,
            "test_songs": len(self.song_ids),
            "test_slices": len(self.slice_true),
            "song_accuracy": _accuracy(self.song_true, self.song_pred),
            "slice_accuracy": _accuracy(self.slice_true, self.slice_pred),
            "chance": 1.0 / len(self.labels),
            "per_genre": per_genre,
            "confusion": {"level": "song", "rows": "true genre", "columns": "predicted genre",
                          "matrix": self.confusion.tolist()},
        }

    def report_lines(self) -> list[str]:
        """A short report in the manner of the original's per-genre list."""
        m = self.metrics()
        lines = [
            f"test split: {m['test_songs']} songs, {m['test_slices']} slices, {len(self.labels)} genres "
            f"(chance {percent(m['chance'])})",
            f"song accuracy  {percent(m['song_accuracy'])}",
            f"slice accuracy {percent(m['slice_accuracy'])}",
            "per genre (songs right / songs):",
        ]
        ranked = sorted(m["per_genre"].items(), key=lambda kv: -(kv[1]["song_accuracy"] or -1))
        width = max(len(g) for g in self.labels)
        for genre, row in ranked:
            right = round((row["song_accuracy"] or 0) * row["songs"])
            confused = f"  most often taken for {row['most_confused_with']}" if row["most_confused_with"] else ""
            lines.append(f"  {genre:<{width}}  {percent(row['song_accuracy']):>6}  {right}/{row['songs']}{confused}")
        return lines

    def _genre_row(self, index: int) -> dict[str, Any]:
        songs = self.song_true == index
        slices = self.slice_true == index
        wrong = self.song_pred[songs & (self.song_pred != index)]
        confused = None
        if len(wrong):
            counts = np.bincount(wrong, minlength=len(self.labels))
            confused = self.labels[int(counts.argmax())]
        return {
            "songs": int(songs.sum()),
            "slices": int(slices.sum()),
            "song_accuracy": _accuracy(self.song_true[songs], self.song_pred[songs]),
            "slice_accuracy": _accuracy(self.slice_true[slices], self.slice_pred[slices]),
            "most_confused_with": confused,
        }


def _accuracy(true: np.ndarray, pred: np.ndarray) -> float | None:
    return float(np.mean(true == pred)) if len(true) else None


def percent(value: float | None) -> str:
    """A share as ``12.3%``; ``n/a`` where there is none (None or NaN)."""
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.1f}%"
