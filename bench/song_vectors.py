"""Is it the song vector or the model? Other song vectors from the same slice embeddings.

Reads warehouses that ``bench/quality.py`` rebuilt and evaluated (their ``songs``,
``slices``, ``slice_embeddings``, ``mfcc_features`` and model), builds song vectors in
several ways from the *same* trained model's slice embeddings, and scores each on the
evaluation's queries (the labelled test songs against every labelled song), as ``evaluate`` does:

- ``mean``: the unweighted mean of the slice vectors (MISSION.md step 6; what deepcrate
  publishes, so it reproduces the evaluation's model row);
- ``mean, standardised``: each dimension to mean 0, std 1 over the catalogue (as the
  MFCC baseline is);
- ``mean + std, standardised``: the slices' spread appended (256-d);
- ``the model's genre probabilities``: the mean of the slices' softmax outputs (the
  song's genre prediction, as a vector), cosine;
- ``slice matching``: no song vector; song A's similarity to song B is the mean over
  A's slices of the best cosine to one of B's slices, symmetrised (quadratic in the
  slices: a reference, not something that scales);
- ``untrained network``: the mean over the slices of the same network with fresh random
  weights, as it was before training: what training buys;
- ``spectrum, no model``: the mean and std of each spectrogram row over all of the
  song's slices (its long-term average spectrum and spread), standardised: what the
  slices say before any network sees them;
- ``MFCC``: the evaluation's baseline;
- ``timbre Gaussian, no model``: the evaluation's timbre baseline (:mod:`deepcrate.audio.timbre`,
  Mandel & Ellis 2005): a Gaussian over the song's MFCC frames, neighbours by symmetric
  KL divergence; no labels, no training;
- ``MFCC + LDA``, ``spectrum + MFCC + LDA``: those statistics projected by a linear
  discriminant analysis fitted on the train and validation songs' genres (shrinkage
  0.5): what supervision buys hand-made features;
- ``..., classifier posterior``: the genre probabilities of a logistic regression
  fitted on the train and validation songs (as ``evaluate`` fits it for the MFCC
  baseline's song accuracy) as the song vector, cosine: a song's neighbours are the songs
  the classifier is as sure of; ``timbre`` here is the timbre Gaussian's mean and upper
  triangle of its covariance, standardised.

Then, once per spectrogram preset, a reference that no split limits: every labelled
song in turn is the query, and the LDA and the classifier are fitted on *all the other*
labelled songs (leave one out), for the model-free features. It shows what these
features reach when nearly every label is known. The label-free timbre Gaussian is
scored on the same queries.

    python bench/song_vectors.py ~/.cache/deepcrate-bench/quality/seed-{0,1,2,3,4}

Warehouses are grouped by name without the trailing ``-SEED``; prints mean ± std of
P@10 and MAP@10 per group and method, and the paired change against ``mean``, then the
leave-one-out reference; writes bench/results/song_vectors.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from deepcrate.audio.mfcc import N_MFCC
from deepcrate.audio.spectrogram import SpectrogramSettings
from deepcrate.audio.timbre import least_divergent
from deepcrate.stages.evaluate import genre_probe
from deepcrate.stages.ingest.split import SPLITS
from deepcrate.storage.arrow_tables import ArrowTables
from deepcrate.vectors.moments import standardise
from deepcrate.vectors.retrieval import ideal_songs, nearest_songs, retrieval_scores
from deepcrate.vectors.similarity import normalise

if TYPE_CHECKING:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

K = 10
NEEDED = ("songs", "slices", "slice_embeddings", "mfcc_features", "models")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("warehouses", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "song_vectors.json")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for warehouse in args.warehouses:
        missing = [name for name in NEEDED if not (warehouse / name).is_dir()]
        if missing:
            print(f"{warehouse}: no {', '.join(missing)}; give warehouses that bench/quality.py rebuilt and evaluated",
                  file=sys.stderr)
            return 2
        if "timbre" not in ArrowTables.current(str(warehouse)).dataset("mfcc_features").schema.names:
            print(f"{warehouse}: mfcc_features has no timbre Gaussians; run deepcrate evaluate --warehouse {warehouse}",
                  file=sys.stderr)
            return 2
    scores: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    left_out: dict[str, dict[str, dict[str, float | None]]] = {}
    for warehouse in args.warehouses:
        group = f"{warehouse.parent.name}/{warehouse.name.rsplit('-', 1)[0]}"
        catalogue = read_catalogue(warehouse)
        images, owners = read_slices(warehouse)
        spectrum = spectrum_statistics(images, owners, catalogue["song_id"])
        by_method = score_warehouse(warehouse, catalogue, images=images, owners=owners, spectrum=spectrum)
        for method, (precision, average_precision) in by_method.items():
            scores[group][method].append((precision, average_precision))
        preset = spectrogram_preset(warehouse)
        if preset not in left_out:
            left_out[preset] = leave_one_out_reference(catalogue, spectrum)
    report = {group: {method: summary(values, baseline=methods["mean"]) for method, values in methods.items()}
              for group, methods in scores.items()}
    for group, methods in report.items():
        print(f"\n{group} (n = {methods['mean']['n']})")
        print(f"  {'song vector':46s} {'P@10':>15s} {'MAP@10':>15s} {'P@10 vs mean':>22s}")
        for method, row in methods.items():
            change = (f"{row['p10_change']:+.3f} ({row['p10_better']}/{row['n']} better)" if method != "mean"
                      else "")
            print(f"  {method:46s} {row['p10']:.3f} ± {row['p10_std']:.3f} {row['map10']:.3f} ± "
                  f"{row['map10_std']:.3f} {change:>22s}")
    for preset, rows in left_out.items():
        print(f"\nleave one out, spectrogram {preset}: every labelled song a query, LDA and classifier fitted on "
              "all the others")
        print(f"  {'features':26s} {'P@10 as is':>10s} {'P@10 LDA':>9s} {'acc. LDA':>9s} {'P@10 posterior':>15s} "
              f"{'acc. classifier':>16s} {'P@10 ceiling':>12s}")
        for features, row in rows.items():
            cells = [f"{row[key]:{width}.{'1%' if key.startswith('accuracy') else '3f'}}" if row[key] is not None
                     else f"{'–':>{width}s}"
                     for key, width in (("p10_lda", 9), ("accuracy_lda", 9), ("p10_posterior", 15),
                                        ("accuracy_posterior", 16))]
            print(f"  {features:26s} {row['p10']:10.3f} {' '.join(cells)} {row['p10_ceiling']:12.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"warehouses": [str(w) for w in args.warehouses], "groups": report,
                                    "leave_one_out": left_out}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


def slice_settings(warehouse: Path) -> SpectrogramSettings:
    """The spectrogram settings the current run's ``slices`` were made with."""
    return ArrowTables.current(str(warehouse)).metadata("slices").spectrogram


def read_table(warehouse: Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    return ArrowTables.current(str(warehouse)).read(name, columns=columns).to_pandas()


def read_catalogue(warehouse: Path) -> pd.DataFrame:
    """The labelled songs (id, genre, split) with their MFCC statistics (``features``) and
    timbre Gaussians (``timbre``), in song id order."""
    songs = read_table(warehouse, "songs", ["song_id", "genre", "split"]).dropna(subset=["genre"])
    return songs.merge(read_table(warehouse, "mfcc_features"), on="song_id").sort_values("song_id").reset_index(
        drop=True)


def spectrogram_preset(warehouse: Path) -> str:
    """The slices' spectrogram preset, as ingest recorded it (where slices start hardly
    changes a song's row statistics, so the hop is left out)."""
    return slice_settings(warehouse).preset


def score_warehouse(warehouse: Path, catalogue: pd.DataFrame, *, images: np.ndarray, owners: pd.Series,
                    spectrum: np.ndarray) -> dict[str, tuple[float, float]]:
    """P@10 and MAP@10 of each way of comparing songs, on the warehouse's evaluation queries
    (``images`` and ``owners``: its slices, as :func:`read_slices` gives them)."""
    slices = read_table(warehouse, "slice_embeddings", ["song_id", "embedding", "genre_probabilities"])
    song_slices = per_song(slices["song_id"], np.stack(slices["embedding"].to_numpy()), catalogue["song_id"])
    song_probabilities = np.stack([p.mean(axis=0) for p in per_song(
        slices["song_id"], np.stack(slices["genre_probabilities"].to_numpy()), catalogue["song_id"])])
    genres = catalogue["genre"].to_numpy(dtype=object)
    queries = np.flatnonzero(catalogue["split"].to_numpy() == "test")
    fitted = catalogue["split"].isin(["train", "validation"]).to_numpy()
    mean = np.stack([s.mean(axis=0) for s in song_slices])
    spread = np.stack([s.std(axis=0) for s in song_slices])
    hand_made = hand_made_features(catalogue, spectrum)

    def scored(found: np.ndarray) -> tuple[float, float]:
        result = retrieval_scores(genres, queries, found, ks=(K,))
        return float(result[f"precision_at_{K}"].mean()), float(result[f"map_at_{K}"].mean())

    by_vector: dict[str, Callable[[], np.ndarray]] = {
        "mean": lambda: mean,
        "mean, standardised": lambda: standardise(mean),
        "mean + std, standardised": lambda: standardise(np.hstack([mean, spread])),
        "the model's genre probabilities": lambda: song_probabilities,
        "untrained network": lambda: untrained_song_vectors(warehouse, images, owners, catalogue["song_id"]),
        "spectrum, no model": lambda: hand_made["spectrum"],
        "MFCC": lambda: hand_made["MFCC"],
        **{f"{name} + LDA": lambda name=name: discriminant_projection(hand_made[name], genres=genres, fitted=fitted)
           for name in ("MFCC", "spectrum + MFCC")},
        **{f"{name}, classifier posterior": lambda name=name: classifier_posteriors(hand_made[name], genres=genres,
                                                                                     fitted=fitted)
           for name in ("MFCC", "spectrum + MFCC", "spectrum + MFCC + timbre")},
    }
    results = {name: scored(nearest_songs(build(), queries, k=K)) for name, build in by_vector.items()}
    results["slice matching"] = scored(slice_matching_neighbours(song_slices, queries, k=K))
    results["timbre Gaussian, no model"] = scored(least_divergent(np.stack(catalogue["timbre"].to_numpy()),
                                                                  queries, k=K))
    return results


def untrained_song_vectors(warehouse: Path, images: np.ndarray, owners: pd.Series, song_ids: pd.Series
                           ) -> np.ndarray:
    """Per song, the mean embedding of its slices by the warehouse's newest model re-initialised."""
    import keras

    from deepcrate.models.architectures import embedding_model

    folder = max(p for p in (warehouse / "models").iterdir() if (p / "_SUCCESS").is_file())
    keras.utils.set_random_seed(0)
    network = embedding_model(keras.models.clone_model(keras.models.load_model(folder / "model.keras", compile=False)))
    vectors = network.predict(images, batch_size=64, verbose=0)
    return np.stack([song.mean(axis=0) for song in per_song(owners, vectors, song_ids)])


def spectrum_statistics(images: np.ndarray, owners: pd.Series, song_ids: pd.Series) -> np.ndarray:
    """Per song, the mean and std of each spectrogram row (grey levels) over all its slices' columns."""
    rows = images.shape[1]
    # each song's columns side by side: (rows, slices * frames)
    columns = (song.transpose(1, 0, 2).reshape(rows, -1).astype(np.float32)
               for song in per_song(owners, images, song_ids))
    return np.stack([np.hstack([song.mean(axis=1), song.std(axis=1)]) for song in columns])


def read_slices(warehouse: Path) -> tuple[np.ndarray, pd.Series]:
    """Every slice image of the warehouse (n, rows, frames) uint8, and the song of each."""
    settings = slice_settings(warehouse)
    table = ArrowTables.current(str(warehouse)).slice_table(image_shape=(settings.n_rows, settings.slice_frames))
    batches = [batch for split in SPLITS for batch in table.batches(split=split, labels=None, batch_size=1024)]
    return np.concatenate([b.images for b in batches]), pd.Series(np.concatenate([b.song_ids for b in batches]))


def per_song(owners: pd.Series, vectors: np.ndarray, song_ids: pd.Series) -> list[np.ndarray]:
    """The rows of ``vectors`` of each song in ``song_ids``; ``owners`` names each row's song."""
    rows_of = owners.groupby(owners).indices
    return [vectors[rows_of[song]] for song in song_ids]


def discriminant_projection(features: np.ndarray, *, genres: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """``features`` projected on the discriminant axes of the ``fitted`` songs' genres, centred on them."""
    projected = fitted_discriminant(features, genres=genres, fitted=fitted).transform(features)
    return projected - projected[fitted].mean(axis=0)


def fitted_discriminant(features: np.ndarray, *, genres: np.ndarray, fitted: np.ndarray
                        ) -> LinearDiscriminantAnalysis:
    """A linear discriminant analysis (shrinkage 0.5) of the ``fitted`` rows' genres."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.5).fit(features[fitted], genres[fitted])


def classifier_posteriors(features: np.ndarray, *, genres: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """Every song's genre probabilities by ``evaluate``'s genre probe fitted on the ``fitted`` rows."""
    return genre_probe(features[fitted], genres[fitted]).predict_proba(features)


def hand_made_features(catalogue: pd.DataFrame, spectrum: np.ndarray) -> dict[str, np.ndarray]:
    """The model-free feature sets, standardised: MFCC statistics, the spectrum's row
    statistics, both, and both with the timbre Gaussians."""
    mfcc = standardise(np.stack(catalogue["features"].to_numpy()))
    rows = standardise(spectrum)
    timbre = timbre_statistics(np.stack(catalogue["timbre"].to_numpy()))
    return {"MFCC": mfcc, "spectrum": rows, "spectrum + MFCC": np.hstack([rows, mfcc]),
            "spectrum + MFCC + timbre": np.hstack([rows, mfcc, timbre])}


def timbre_statistics(gaussians: np.ndarray) -> np.ndarray:
    """The timbre Gaussians as plain features: the mean and the covariance's upper triangle, standardised."""
    upper = np.triu_indices(N_MFCC)
    covariances = gaussians[:, N_MFCC:].reshape(-1, N_MFCC, N_MFCC)
    return standardise(np.hstack([gaussians[:, :N_MFCC], covariances[:, upper[0], upper[1]]]))


def leave_one_out_reference(catalogue: pd.DataFrame, spectrum: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Per model-free feature set: P@10 as is, after an LDA and as classifier posteriors
    (each fitted on every other labelled song), the LDA's and the classifier's accuracy on
    the left-out song, and the best P@10 the labels allow; for the timbre Gaussians (no
    fitting) P@10 as is.

    Every labelled song is a query in turn (not only the test split): the most labels
    these features could be fitted on in this catalogue.
    """
    genres = catalogue["genre"].to_numpy(dtype=object)
    everyone = np.arange(len(genres))
    ceiling = float(retrieval_scores(genres, everyone, ideal_songs(genres, everyone, k=K), ks=(K,))[
        f"precision_at_{K}"].mean())

    def precision(found: np.ndarray) -> float:
        return float(retrieval_scores(genres, everyone, found, ks=(K,))[f"precision_at_{K}"].mean())

    out = {}
    for name, features in hand_made_features(catalogue, spectrum).items():
        by_lda, by_posterior, lda_correct, posterior_correct = [], [], [], []
        for query in everyone:
            others = everyone != query
            lda = fitted_discriminant(features, genres=genres, fitted=others)
            projected = lda.transform(features)
            by_lda.append(nearest_songs(projected - projected[others].mean(axis=0), np.array([query]), k=K)[0])
            lda_correct.append(lda.predict(features[query:query + 1])[0] == genres[query])
            probe = genre_probe(features[others], genres[others])
            by_posterior.append(nearest_songs(probe.predict_proba(features), np.array([query]), k=K)[0])
            posterior_correct.append(probe.predict(features[query:query + 1])[0] == genres[query])
        out[name] = {"p10": precision(nearest_songs(features, everyone, k=K)),
                     "p10_lda": precision(np.stack(by_lda)), "accuracy_lda": float(np.mean(lda_correct)),
                     "p10_posterior": precision(np.stack(by_posterior)),
                     "accuracy_posterior": float(np.mean(posterior_correct)), "p10_ceiling": ceiling}
    timbre_found = least_divergent(np.stack(catalogue["timbre"].to_numpy()), everyone, k=K)
    out["timbre Gaussian"] = {"p10": precision(timbre_found), "p10_lda": None, "accuracy_lda": None,
                              "p10_posterior": None, "accuracy_posterior": None, "p10_ceiling": ceiling}
    return out


def slice_matching_neighbours(song_slices: list[np.ndarray], queries: np.ndarray, *, k: int) -> np.ndarray:
    """The ``k`` songs whose slices best match each query's slices (see the module doc), itself left out."""
    unit = normalise(np.concatenate(song_slices).astype(np.float32))
    bounds = np.cumsum([0, *(len(s) for s in song_slices)])
    similarity = unit @ unit.T
    # best[i, j]: for slice i, the best cosine to any slice of song j
    best = np.stack([similarity[:, start:end].max(axis=1) for start, end in pairwise(bounds)], axis=1)
    songs = np.stack([best[start:end].mean(axis=0) for start, end in pairwise(bounds)])
    songs = (songs + songs.T) / 2
    np.fill_diagonal(songs, -np.inf)
    return np.argsort(-songs[queries], axis=1, kind="stable")[:, :k]


def summary(values: list[tuple[float, float]], *, baseline: list[tuple[float, float]]) -> dict[str, float]:
    """Mean and sample standard deviation (as bench/quality.py reports them), and the paired change."""
    scores, reference = np.array(values), np.array(baseline)
    ddof = 1 if len(scores) > 1 else 0
    change = scores[:, 0] - reference[:, 0]
    return {"n": len(scores), "p10": scores[:, 0].mean(), "p10_std": scores[:, 0].std(ddof=ddof),
            "map10": scores[:, 1].mean(), "map10_std": scores[:, 1].std(ddof=ddof),
            "p10_change": change.mean(), "p10_better": int((change > 1e-9).sum())}


if __name__ == "__main__":
    sys.exit(main())
