"""PNG figures a person can look at: the confusion matrix and the training curves."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path: str, *, matrix: np.ndarray, labels: Sequence[str], title: str) -> None:
    """Rows = true genre, columns = predicted; colour = share of the row, text = song count."""
    plt = _pyplot()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = 1.2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted genre")
    ax.set_ylabel("true genre")
    ax.set_title(title)
    for (row, col), count in np.ndenumerate(matrix):
        if count:
            ax.text(col, row, str(count), ha="center", va="center",
                    color="white" if shares[row, col] > 0.5 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the genre's songs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(path: str, *, history: dict[str, list[float]], title: str) -> None:
    """Loss and accuracy per epoch, training and validation (loss alone for the contrastive objective),
    and the validation songs' P@10 from epoch 0 where the head was kept by it."""
    plt = _pyplot()
    metrics = ["loss", *(["accuracy"] if history.get("accuracy") else [])]
    retrieval = history.get("val_precision_at_10")
    fig, axes = plt.subplots(1, len(metrics) + bool(retrieval), figsize=(5 * (len(metrics) + bool(retrieval)), 4),
                             squeeze=False)
    if retrieval:
        ax = axes[0][-1]
        ax.plot(np.arange(len(retrieval)), retrieval, "--s", markersize=3, label="validation songs (kept: best)")
        ax.set_xlabel("epoch (0: the pretrained start)")
        ax.set_ylabel("song P@10")
        ax.grid(alpha=0.3)
        ax.legend()
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, metric in zip(axes[0], metrics):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = history.get(prefix + metric)
            if values:
                ax.plot(epochs, values, style, markersize=3, label=("validation " if prefix else "train ") + metric)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(f"slice {metric}")
        ax.grid(alpha=0.3)
        if ax.get_lines():  # a history without this metric (a head kept at its start) draws none
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
