"""2-D maps of song vectors: UMAP where umap-learn is installed, else t-SNE or PCA.

Used by the report's catalogue map. Every method is seeded, so the same vectors give
the same map.
"""
from __future__ import annotations

import importlib.util
import logging

import numpy as np

from deepcrate.errors import InputError

logger = logging.getLogger(__name__)

METHODS = ("auto", "umap", "tsne", "pca")
TSNE_MAX_SONGS = 10_000  # scikit-learn's t-SNE takes minutes beyond this; PCA then
_NAMES = {"umap": "UMAP (umap-learn, cosine)", "tsne": "t-SNE (scikit-learn, cosine)",
          "pca": "PCA (first two components)"}


def umap_installed() -> bool:
    return importlib.util.find_spec("umap") is not None


def choose_method(method: str, *, songs: int) -> str:
    """``method`` made concrete: ``auto`` is UMAP when installed, else t-SNE up to
    :data:`TSNE_MAX_SONGS` songs, else PCA; tiny catalogues always get PCA."""
    if method not in METHODS:
        raise InputError(f"projection {method!r}: choose one of {', '.join(METHODS)}")
    if songs < 16:  # UMAP's and t-SNE's neighbourhoods need more points than this
        return "pca"
    if method == "umap" and not umap_installed():
        raise InputError("projection umap: the umap-learn package is not installed (pip install umap-learn)")
    if method != "auto":
        return method
    if umap_installed():
        return "umap"
    return "tsne" if songs <= TSNE_MAX_SONGS else "pca"


def project(vectors: np.ndarray, *, method: str = "auto") -> tuple[np.ndarray, str]:
    """The rows of ``vectors`` as points in the unit square, and the method's name for people.

    Parameters
    ----------
    vectors : np.ndarray
        (songs, dims) song embeddings.
    method : str
        ``auto``, ``umap``, ``tsne`` or ``pca`` (:func:`choose_method`).

    Returns
    -------
    points : np.ndarray
        (songs, 2) float64 in [0, 1], the aspect ratio kept.
    name : str
        What drew the map, e.g. ``"PCA (first two components)"``.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    chosen = choose_method(method, songs=len(vectors))
    if len(vectors) == 0:
        return np.zeros((0, 2)), _NAMES[chosen]
    logger.info("projecting %d song vectors with %s", len(vectors), _NAMES[chosen])
    if chosen == "umap":
        import umap

        points = umap.UMAP(n_components=2, metric="cosine", random_state=0, n_jobs=1).fit_transform(vectors)
    elif chosen == "tsne":
        from sklearn.manifold import TSNE

        points = TSNE(n_components=2, metric="cosine", init="pca", random_state=0,
                      perplexity=min(30.0, (len(vectors) - 1) / 3)).fit_transform(vectors)
    else:
        points = _pca(vectors)
    return _unit_square(np.asarray(points, dtype=np.float64)), _NAMES[chosen]


def _pca(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    if len(vectors) < 2:
        return np.zeros((len(vectors), 2))
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    components = components[:2]
    components *= np.sign(components[:, [int(np.argmax(np.abs(row))) for row in components]].diagonal())[:, None]
    points = centred @ components.T
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1])))  # one dimension only: a line


def _unit_square(points: np.ndarray) -> np.ndarray:
    low = points.min(axis=0)
    span = float((points.max(axis=0) - low).max())
    scaled = (points - low) / span if span > 0 else np.zeros_like(points)
    return scaled + (1 - scaled.max(axis=0)) / 2  # centred along the shorter side
