"""What to learn on top of a pretrained network: heads and song vectors over its frozen features.

Reads one warehouse that a ``train.model=musicnn`` rebuild embedded (its
``slice_embeddings.pretrained``: musicnn's 200-d features of every slice, which do not
depend on the split) and, for each split seed, draws the split exactly as ingest does
(:func:`deepcrate.split.assign_splits`, default fractions), trains each head on the
train split's slices (early stopping on the validation split), embeds every slice,
pools per song and scores the test songs as queries against every labelled song, as
``deepcrate evaluate`` does (:mod:`deepcrate.retrieval`, P@10 and MAP@10; song accuracy
from the head's own softmax where it has one).

Heads (every one ends in the 128-d embedding of the design card):

- ``as it comes``: no head, the mean of the slices' pretrained features, cosine (the
  evaluation's ``pretrained`` row);
- ``classify`` (deepcrate's default): Dense 128 -> ELU -> dropout 0.5 -> softmax,
  cross-entropy on the slices' genres (what ``train.model=musicnn`` trains);
- ``supcon``: the same embedding trained with the supervised contrastive loss
  (Khosla et al. 2020: slices of one genre are positives, temperature 0.1) beside the
  cross-entropy (weight 1 each): a metric-learning objective for cosine retrieval;
- ``supcon only``: the contrastive loss alone;
- ``classify, 3-slice context``: the features of 3 consecutive slices (~9 s) averaged
  before the head, in training and embedding: longer context per unit;
- song vectors from the ``classify`` head's slice embeddings: ``mean`` (the design
  card), ``mean + std`` (statistics pooling) and ``softmax-weighted mean`` (each slice
  weighted by its genre confidence: attention by the head's own certainty).

    python bench/transfer_heads.py ~/.cache/deepcrate-bench/quality/musicnn-0 --seeds 0 1 2
    python bench/transfer_heads.py WH --features MTT_musicnn:musicnn_pool   # other features, from WH/slices

``--features CHECKPOINT:LAYER`` computes another layer's features (``musicnn_pool``: the
1,506 max and mean statistics before the back-end's dense layer; ``musicnn_penultimate``)
of another checkpoint from the warehouse's slices instead (once; cached beside the
results in ``~/.cache/deepcrate-bench/features``).

Prints mean ± std over the seeds and writes bench/results/transfer_heads.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from deepcrate.index import list_column_matrix
from deepcrate.retrieval import ideal_songs, nearest_songs, retrieval_scores
from deepcrate.split import assign_splits

KS = (5, 10)


def read(warehouse: Path, features_from: str) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    songs = ds.dataset(str(warehouse / "songs"), format="parquet").to_table(
        columns=["song_id", "genre"]).to_pandas()
    if features_from == "pretrained":
        table = ds.dataset(str(warehouse / "slice_embeddings"), format="parquet").to_table(
            columns=["song_id", "slice_idx", "pretrained"])
        slices = table.select(["song_id", "slice_idx"]).to_pandas()
        features = list_column_matrix(table.column("pretrained"))
    else:
        slices, features = layer_features(warehouse, features_from)
    order = np.lexsort((slices["slice_idx"].to_numpy(), slices["song_id"].to_numpy()))
    return songs, slices.iloc[order].reset_index(drop=True), features[order]


def layer_features(warehouse: Path, features_from: str) -> tuple[pd.DataFrame, np.ndarray]:
    import keras

    from deepcrate.model import build_model
    from deepcrate.musicnn import load_pretrained

    checkpoint, layer = features_from.split(":")
    cache = Path.home() / ".cache" / "deepcrate-bench" / "features" / f"{warehouse.name}-{checkpoint}-{layer}.npz"
    table = ds.dataset(str(warehouse / "slices"), format="parquet").to_table(
        columns=["song_id", "slice_idx", "spectrogram"])
    slices = table.select(["song_id", "slice_idx"]).to_pandas()
    if cache.exists():
        return slices, np.load(cache)["features"]
    model = build_model(preset="musicnn", n_classes=2, input_shape=(96, 187))
    load_pretrained(model, checkpoint=checkpoint)
    extractor = keras.Model(model.input, model.get_layer(layer).output)
    column, parts = table.column("spectrogram"), []
    for start in range(0, len(slices), 32):
        images = np.stack([np.frombuffer(b, np.uint8).reshape(96, 187)
                           for b in column[start:start + 32].to_pylist()])
        parts.append(np.asarray(extractor(images, training=False), np.float32))
        if start % 3200 == 0:
            print(f"{features_from}: {start}/{len(slices)} slices", flush=True)
    features = np.concatenate(parts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, features=features)
    return slices, features


def context(features: np.ndarray, song_ids: np.ndarray, width: int) -> np.ndarray:
    """Each slice's features averaged with its neighbours in the same song (``width`` slices centred)."""
    out = np.empty_like(features)
    for song in np.unique(song_ids):
        rows = np.flatnonzero(song_ids == song)
        block = features[rows]
        cumulative = np.vstack([np.zeros((1, block.shape[1])), np.cumsum(block, axis=0)])
        half = width // 2
        starts = np.clip(np.arange(len(rows)) - half, 0, len(rows))
        stops = np.clip(np.arange(len(rows)) + half + 1, 0, len(rows))
        out[rows] = (cumulative[stops] - cumulative[starts]) / (stops - starts)[:, None]
    return out


def train_head(x_train, y_train, x_val, y_val, *, n_classes: int, objective: str, seed: int):
    """(embedder, classifier or None) trained on slices' features."""
    import keras
    from keras import layers

    from deepcrate.model import supervised_contrastive_loss

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((x_train.shape[1],))
    embedding = layers.Dense(128, name="embedding")(inputs)
    x = layers.Activation("elu")(embedding)
    x = layers.Dropout(0.5, seed=seed)(x)
    probabilities = layers.Activation("softmax", name="genre")(layers.Dense(n_classes)(x))
    outputs, losses, weights = {}, {}, {}
    if objective in ("classify", "supcon"):
        outputs["genre"], losses["genre"], weights["genre"] = probabilities, "sparse_categorical_crossentropy", 1.0
    if objective in ("supcon", "supcon only"):
        outputs["embedding"], losses["embedding"], weights["embedding"] = embedding, supervised_contrastive_loss, 1.0
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss=losses, loss_weights=weights)
    targets = {name: y_train for name in outputs}
    model.fit(x_train, targets, validation_data=(x_val, {name: y_val for name in outputs}), batch_size=256,
              epochs=100, shuffle=True, verbose=0,
              callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)])
    embedder = keras.Model(inputs, embedding)
    classifier = keras.Model(inputs, probabilities) if "genre" in outputs else None
    return embedder, classifier


def score(song_vectors: np.ndarray, genres: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    found = nearest_songs(song_vectors, queries, k=max(KS))
    scores = retrieval_scores(genres, queries, found, ks=KS)
    return {"precision_at_10": float(scores["precision_at_10"].mean()), "map_at_10": float(scores["map_at_10"].mean())}


def one_seed(songs: pd.DataFrame, slices: pd.DataFrame, features: np.ndarray, *, seed: int) -> dict[str, dict]:
    split = assign_splits(songs, train=0.65, validation=0.25, test=0.10, seed=seed)
    songs = songs.assign(split=split.to_numpy())
    labelled = songs.dropna(subset=["genre"]).sort_values("song_id").reset_index(drop=True)
    labels = sorted(labelled.loc[labelled["split"] == "train", "genre"].unique())
    index = {g: i for i, g in enumerate(labels)}
    song_ids = slices["song_id"].to_numpy()
    by_song = slices.assign(row=np.arange(len(slices))).groupby("song_id")["row"].apply(np.asarray)
    genre_of = dict(zip(labelled["song_id"], labelled["genre"]))
    split_of = dict(zip(labelled["song_id"], labelled["split"]))
    slice_split = np.array([split_of.get(s) for s in song_ids], dtype=object)
    slice_label = np.array([index.get(genre_of.get(s), -1) for s in song_ids])
    genres = labelled["genre"].to_numpy(dtype=object)
    queries = np.flatnonzero(labelled["split"].to_numpy() == "test")
    rows = [by_song[s] for s in labelled["song_id"]]

    def pool(per_slice: np.ndarray, how: str = "mean", weights: np.ndarray | None = None) -> np.ndarray:
        if how == "mean":
            return np.stack([per_slice[r].mean(axis=0) for r in rows])
        if how == "mean + std":
            pooled = np.stack([np.concatenate([per_slice[r].mean(axis=0), per_slice[r].std(axis=0)]) for r in rows])
            return (pooled - pooled.mean(axis=0)) / (pooled.std(axis=0) + 1e-9)
        return np.stack([(per_slice[r] * weights[r, None]).sum(axis=0) / weights[r].sum() for r in rows])

    def song_accuracy(classifier, inputs) -> float:
        probabilities = np.asarray(classifier.predict(inputs, batch_size=4096, verbose=0))
        voted = np.stack([probabilities[rows[q]].sum(axis=0) for q in queries])
        return float(np.mean(np.array(labels, dtype=object)[voted.argmax(axis=1)] == genres[queries]))

    results = {"as it comes": score(pool(features), genres, queries),
               "as it comes, standardised": score(
                   (pool(features) - pool(features).mean(axis=0)) / (pool(features).std(axis=0) + 1e-9),
                   genres, queries)}
    results["ideal"] = {"precision_at_10": float(retrieval_scores(genres, queries, ideal_songs(genres, queries, k=10),
                                                                  ks=KS)["precision_at_10"].mean())}
    for name, objective, width in (("classify", "classify", 1), ("supcon", "supcon", 1),
                                   ("supcon only", "supcon only", 1), ("classify, 3-slice context", "classify", 3)):
        inputs = features if width == 1 else context(features, song_ids, width)
        train, val = (slice_split == "train") & (slice_label >= 0), (slice_split == "validation") & (slice_label >= 0)
        started = time.monotonic()
        embedder, classifier = train_head(inputs[train], slice_label[train], inputs[val], slice_label[val],
                                          n_classes=len(labels), objective=objective, seed=seed)
        seconds = time.monotonic() - started
        embedded = np.asarray(embedder.predict(inputs, batch_size=4096, verbose=0))
        results[name] = {**score(pool(embedded), genres, queries), "train_s": round(seconds, 1),
                         "song_accuracy": song_accuracy(classifier, inputs) if classifier else None}
        if name == "classify":
            confidence = np.asarray(classifier.predict(inputs, batch_size=4096, verbose=0)).max(axis=1)
            results["classify, mean + std pooling"] = score(pool(embedded, "mean + std"), genres, queries)
            results["classify, confidence-weighted mean"] = score(pool(embedded, "weighted", confidence),
                                                                  genres, queries)
    results["queries"] = {"n": len(queries)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("warehouse")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--features", default="pretrained", help="pretrained, or CHECKPOINT:LAYER")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "transfer_heads.json"))
    args = parser.parse_args()
    songs, slices, features = read(Path(args.warehouse), args.features)
    print(f"{len(songs)} songs, {len(slices)} slices, features {features.shape[1]}-d", flush=True)
    runs = {seed: one_seed(songs, slices, features, seed=seed) for seed in args.seeds}
    names = list(runs[args.seeds[0]])
    summary = {}
    print(f"\nseeds {args.seeds}; mean ± std over seeds ({[runs[s]['queries']['n'] for s in args.seeds]} queries)")
    for name in names:
        if name == "queries":
            continue
        row = {}
        for metric in ("precision_at_10", "map_at_10", "song_accuracy", "train_s"):
            values = [runs[s][name].get(metric) for s in args.seeds]
            if all(v is not None for v in values):
                row[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))}
        summary[name] = row
        print(f"{name:<38}" + "".join(f"  {m} {v['mean']:.3f} ± {v['std']:.3f}" for m, v in row.items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"warehouse": args.warehouse, "features": args.features, "seeds": args.seeds, "summary": summary, "runs": runs},
                              indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
