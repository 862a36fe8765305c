"""What to learn on top of pretrained networks: heads on their frozen features, per split seed.

Reads the pretrained features of every slice of one warehouse ingested with the ``musicnn``
spectrogram preset (``--features``: one checkpoint or several joined by ``+``, as
``train.pretrained`` takes them): from its ``pretrained_features`` table (the default), or
computed here with the Keras networks (``--source keras``, cached in
``~/.cache/deepcrate-bench/features``: the two compared say whether the runtime that wrote
the table changes the quality). For each split seed it draws the split exactly
as ingest does (:func:`deepcrate.stages.ingest.split.assign_splits`, default fractions), trains each
head on the train split's slices, embeds every slice, pools per song (the mean) and
ranks the test songs against every labelled song as ``deepcrate evaluate`` does
(:mod:`deepcrate.vectors.retrieval`: P@10, MAP@10; song accuracy from the head's summed slice
softmax). The validation P@10 each head was kept by is reported beside it.

Rows:

- ``as it comes``: no head, the mean of the slices' features, cosine (the evaluation's
  ``pretrained`` row);
- ``supcon, kept by validation loss``: the head before it was kept by retrieval
  (random start, cross-entropy + supervised contrastive loss, early stopping on the
  validation loss with patience 3, at most 20 epochs);
- ``supcon, kept by validation P@10`` and ``classify, kept by validation P@10``:
  :func:`deepcrate.models.transfer.train_head`, the library's own head (principal-component
  start, kept at the epoch that ranks the validation songs best), one head;
- ``supcon, N heads averaged`` (the default, ``--heads N``, 3 as ``train.heads_averaged``):
  N such heads from seeds ``seed``..``seed + N - 1``, their embedding weights averaged
  (a model soup); the validation P@10 of each is in the JSON (``trained``).

``--slices-per-song N`` trains on at most N slices of each train and validation song, chosen as
training chooses them under ``train.head_max_slices`` (the same number from every song, evenly
along it: :func:`deepcrate.models.feature_reader.chosen_slices`): how small can that budget be?
``--only-soup`` runs the product's row alone.

``--max-train-songs N`` keeps only N train songs per label (the rest stay in the
catalogue as unlabelled-for-training songs): does the head still do no harm when it
has little to learn from?

    python bench/transfer_heads.py WH --features MTT_musicnn+MSD_musicnn --seeds 0 1 2
    python bench/transfer_heads.py WH --features MTT_musicnn --max-train-songs 3
    python bench/transfer_heads.py WH --source keras  # the networks run by Keras, not the table
    python bench/transfer_heads.py WH --source keras --layer pooled      # the networks' 1,506-d pooled mid-end each
    python bench/transfer_heads.py WH --heads 5           # the soup of 5 heads
    python bench/transfer_heads.py WH --only-soup --slices-per-song 4

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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from deepcrate.models.pretrained_runtime import from_bytes
from deepcrate.models.transfer import SliceFeatures, train_head
from deepcrate.stages.ingest.split import assign_splits
from deepcrate.storage.arrow_tables import ArrowTables
from deepcrate.vectors.retrieval import nearest_songs, retrieval_scores

CACHE = Path.home() / ".cache" / "deepcrate-bench" / "features"
HEAD = {"batch_size": 128, "learning_rate": 0.001, "max_epochs": 100, "patience": 20}  # conf/local.yaml's


def read(warehouse: Path, checkpoints: str, *, layer: str = "penultimate",
         source: str = "table") -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The labelled songs, and the song id and features of every slice.

    ``source`` ``table``: the warehouse's ``pretrained_features`` table (what ``train``
    learns from; refused if it holds other networks' features); ``keras``: computed here
    with the Keras networks (once, cached), as training computed them before the table.
    ``layer`` (``keras`` only): ``penultimate`` (200-d per network, what the head learns
    from), ``pooled`` (the max and mean over time of each network's mid-end, 1,506-d per
    network, the input of its dense back-end) or ``both`` side by side.
    """
    tables = ArrowTables.current(str(warehouse))
    songs = tables.read("songs", columns=["song_id", "genre"]).to_pandas()
    if source == "table":
        if layer != "penultimate":
            raise SystemExit("--layer pooled/both: only with --source keras (the table holds the penultimate layer)")
        metadata = tables.metadata("pretrained_features")
        if metadata.checkpoints != checkpoints:
            raise SystemExit(f"{warehouse}: pretrained_features holds {metadata.checkpoints}, not {checkpoints}")
        rows = tables.read("pretrained_features", columns=["song_id", "slice_idx", "features"]).sort_by(
            [("song_id", "ascending"), ("slice_idx", "ascending")])
        features = from_bytes(rows.column("features").to_pylist(), width=metadata.width, where=str(warehouse))
        return songs, rows.column("song_id").to_numpy(zero_copy_only=False), features
    stem = f"{warehouse.resolve().as_posix().strip('/').replace('/', '_')}-{checkpoints}"
    caches = {"penultimate": CACHE / f"{stem}.npz", "pooled": CACHE / f"{stem}-pooled.npz"}
    if not all(path.exists() for path in caches.values()):
        _compute(warehouse, checkpoints, caches)
    stored = {name: np.load(path, allow_pickle=True) for name, path in caches.items()}
    song_ids = stored["penultimate"]["song_ids"]
    if layer == "both":
        return songs, song_ids, np.hstack([stored["penultimate"]["features"], stored["pooled"]["features"]])
    return songs, song_ids, stored[layer]["features"]


def _compute(warehouse: Path, checkpoints: str, caches: dict[str, Path]) -> None:
    import keras

    from deepcrate.models.musicnn import parse_checkpoints, tower
    from deepcrate.models.transfer import feature_extractor, pretrained_model

    table = ArrowTables.current(str(warehouse)).read("slices", columns=["song_id", "slice_idx", "spectrogram"])
    model = pretrained_model(n_classes=2, image_shape=(96, 187), level_range=8.0, checkpoint=checkpoints, seed=0)
    pools = [model.get_layer(f"{tower(n)}_pool").output for n in range(len(parse_checkpoints(checkpoints)))]
    extractor = keras.Model(model.input, [feature_extractor(model).output,
                                          pools[0] if len(pools) == 1 else keras.layers.Concatenate()(pools)])
    column, parts, started = table.column("spectrogram"), {"penultimate": [], "pooled": []}, time.monotonic()
    for start in range(0, len(table), 32):
        images = np.stack([np.frombuffer(b, np.uint8).reshape(96, 187) for b in column[start:start + 32].to_pylist()])
        penultimate, pooled = extractor.predict_on_batch(images)
        parts["penultimate"].append(np.asarray(penultimate, np.float32))
        parts["pooled"].append(np.asarray(pooled, np.float32))
        if start % 3200 == 0:
            print(f"{checkpoints}: {start}/{len(table)} slices, {time.monotonic() - started:.0f} s", flush=True)
    song_ids = table.column("song_id").to_numpy(zero_copy_only=False)
    CACHE.mkdir(parents=True, exist_ok=True)
    for name, path in caches.items():
        np.savez(path, song_ids=song_ids, features=np.concatenate(parts[name]))


def former_head(train: SliceFeatures, val: SliceFeatures, *, n_classes: int, seed: int):
    """(embedding weights, genre layer weights, epoch) of the head kept by validation loss."""
    import keras

    from deepcrate.models.architectures import (
        EMBEDDING_LAYER,
        OUTPUT_LAYER,
        embedding_and_genres,
        supervised_contrastive_loss,
    )

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((train.features.shape[1],))
    embedding, probabilities = embedding_and_genres(inputs, n_classes=n_classes, seed=0)
    head = keras.Model(inputs, {OUTPUT_LAYER: probabilities, EMBEDDING_LAYER: embedding})
    head.compile(optimizer=keras.optimizers.Adam(0.001), loss={OUTPUT_LAYER: "sparse_categorical_crossentropy",
                                                               EMBEDDING_LAYER: supervised_contrastive_loss})
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    fitted = head.fit(train.features, {OUTPUT_LAYER: train.labels, EMBEDDING_LAYER: train.labels},
                      validation_data=(val.features, {OUTPUT_LAYER: val.labels, EMBEDDING_LAYER: val.labels}),
                      batch_size=128, epochs=20, shuffle=True, verbose=0, callbacks=[stop])
    epoch = int(np.argmin(fitted.history["val_loss"])) + 1
    return head.get_layer(EMBEDDING_LAYER).get_weights(), head.get_layer("logits").get_weights(), epoch


def evenly_chosen(song_ids: np.ndarray, *, per_song: int) -> np.ndarray:
    """A mask of the slices (rows sorted by song, then slice) that training keeps with at most
    ``per_song`` slices a song, as the library's reader chooses them."""
    import pyarrow as pa

    from deepcrate.models.feature_reader import chosen_slices

    frame = pd.DataFrame({"song_id": song_ids})
    frame["slice_idx"] = frame.groupby("song_id").cumcount()
    counts = frame.groupby("song_id", sort=False).size()
    songs = pa.table({"song_id": counts.index.to_numpy(), "n_slices": counts.to_numpy(),
                      "genre": np.zeros(len(counts), dtype=object).astype(str)})
    chosen = chosen_slices(songs, budget=per_song * len(counts)).to_pandas()[["song_id", "slice_idx"]]
    return frame.merge(chosen.assign(kept=True), how="left", on=["song_id", "slice_idx"])["kept"].eq(True).to_numpy()


def one_seed(songs: pd.DataFrame, slice_songs: np.ndarray, features: np.ndarray, *, seed: int,
             max_train_songs: int, heads: int, slices_per_song: int = 0, only_soup: bool = False) -> dict[str, dict]:
    split = assign_splits(songs, train=0.65, validation=0.25, test=0.10, seed=seed)
    labelled = (songs.assign(split=split.to_numpy()).dropna(subset=["genre"]).sort_values("song_id")
                .reset_index(drop=True))
    if max_train_songs:
        rng = np.random.default_rng(seed)
        kept = [song for _, group in labelled[labelled["split"] == "train"].groupby("genre")
                for song in rng.permutation(group["song_id"].to_numpy())[:max_train_songs]]
        left = labelled["split"].eq("train") & ~labelled["song_id"].isin(kept)
        labelled.loc[left, "split"] = "catalogue only"
    labels = sorted(labelled.loc[labelled["split"] == "train", "genre"].unique())
    genres, splits = labelled["genre"].to_numpy(dtype=object), labelled["split"].to_numpy()
    position = pd.Series(np.arange(len(labelled)), index=labelled["song_id"]).reindex(slice_songs).to_numpy()
    in_catalogue = ~np.isnan(position)
    song_of = np.where(in_catalogue, position, -1).astype(int)
    label_of = np.array([labels.index(g) if g in labels else -1 for g in genres])
    slice_label = np.where(in_catalogue, label_of[song_of], -1)
    slice_split = np.where(in_catalogue, splits[song_of], "")
    counts = np.bincount(song_of[in_catalogue], minlength=len(labelled))
    song_means = np.zeros((len(labelled), features.shape[1]))
    np.add.at(song_means, song_of[in_catalogue], features[in_catalogue])
    song_means /= counts[:, None]
    queries = np.flatnonzero(splits == "test")
    test_slices = np.flatnonzero(in_catalogue & (slice_split == "test"))

    def part(name: str) -> SliceFeatures:
        rows = (slice_split == name) & (slice_label >= 0)
        if slices_per_song:
            rows[rows] = evenly_chosen(slice_songs[rows], per_song=slices_per_song)
        return SliceFeatures(features[rows], slice_label[rows].astype(np.int32), slice_songs[rows])

    def scores(vectors: np.ndarray) -> dict[str, float]:
        found = retrieval_scores(genres, queries, nearest_songs(vectors, queries, k=10), ks=(10,))
        return {"precision_at_10": float(found["precision_at_10"].mean()), "map_at_10": float(found["map_at_10"].mean())}

    def song_accuracy(embedding: list[np.ndarray], logits: list[np.ndarray]) -> float:
        hidden = features[test_slices] @ embedding[0] + embedding[1]
        hidden = np.where(hidden > 0, hidden, np.expm1(np.minimum(hidden, 0)))  # ELU
        z = hidden @ logits[0] + logits[1]
        probabilities = np.exp(z - z.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        votes = np.zeros((len(labelled), len(labels)))
        np.add.at(votes, song_of[test_slices], probabilities)
        return float(np.mean(np.array(labels, dtype=object)[votes[queries].argmax(axis=1)] == genres[queries]))

    train, val = part("train"), part("validation")
    results = {"as it comes": scores(song_means)}
    started = time.monotonic()
    if not only_soup:
        embedding, logits, epoch = former_head(train, val, n_classes=len(labels), seed=seed)
        results["supcon, kept by validation loss"] = {
            **scores(song_means @ embedding[0] + embedding[1]), "song_accuracy": song_accuracy(embedding, logits),
            "epoch": epoch, "train_s": round(time.monotonic() - started, 1)}
    for objective in () if only_soup else ("supcon", "classify"):  # train_head seeds Keras itself
        started = time.monotonic()
        head = train_head(train, val, n_classes=len(labels), objective=objective, seed=seed, **HEAD)
        results[f"{objective}, kept by validation P@10"] = {
            **scores(song_means @ head.embedding[0] + head.embedding[1]),
            "song_accuracy": song_accuracy(head.embedding, head.logits), "epoch": head.best_epoch,
            "validation_precision_at_10": head.history["val_precision_at_10"][head.best_epoch],
            "validation_precision_at_start": head.history["val_precision_at_10"][0],
            "train_s": round(time.monotonic() - started, 1)}
    started = time.monotonic()
    head = train_head(train, val, n_classes=len(labels), objective="supcon", heads=heads, seed=seed, **HEAD)
    results[f"supcon, {heads} heads averaged"] = {
        **scores(song_means @ head.embedding[0] + head.embedding[1]),
        "song_accuracy": song_accuracy(head.embedding, head.logits), "averaged": len(head.averaged),
        "validation_precision_at_10": head.validation_precision, "trained": head.trained,
        "train_s": round(time.monotonic() - started, 1)}
    results["queries"] = {"n": len(queries), "train_songs": int((splits == "train").sum()),
                          "train_slices": len(train.features), "validation_slices": len(val.features)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("warehouse")
    parser.add_argument("--features", default="MTT_musicnn+MSD_musicnn", help="checkpoint(s), as train.pretrained")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--source", default="table", choices=("table", "keras"),
                        help="the warehouse's pretrained_features table, or the Keras networks run here")
    parser.add_argument("--layer", default="penultimate", choices=("penultimate", "pooled", "both"),
                        help="which features of the networks the heads learn from")
    parser.add_argument("--max-train-songs", type=int, default=0, help="per label; 0: all")
    parser.add_argument("--heads", type=int, default=3, help="heads averaged in the soup row")
    parser.add_argument("--slices-per-song", type=int, default=0, help="train on at most N slices a song; 0: all")
    parser.add_argument("--only-soup", action="store_true", help="only the product's row (and the features as they come)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "transfer_heads.json"))
    args = parser.parse_args()
    songs, slice_songs, features = read(Path(args.warehouse), args.features, layer=args.layer, source=args.source)
    print(f"{len(songs)} songs, {len(features)} slices, features {features.shape[1]}-d ({args.features}, "
          f"{args.layer}, from {args.source})", flush=True)
    runs = {seed: one_seed(songs, slice_songs, features, seed=seed, max_train_songs=args.max_train_songs,
                           heads=args.heads, slices_per_song=args.slices_per_song, only_soup=args.only_soup)
            for seed in args.seeds}
    summary = {}
    n = [runs[s]["queries"]["n"] for s in args.seeds]
    slices = [runs[s]["queries"]["train_slices"] for s in args.seeds]
    print(f"\nseeds {args.seeds}, {n} test queries, max train songs per label: {args.max_train_songs or 'all'}, "
          f"slices a song: {args.slices_per_song or 'all'} ({slices} train slices)")
    for name in runs[args.seeds[0]]:
        if name == "queries":
            continue
        row = {}
        for metric in ("precision_at_10", "map_at_10", "song_accuracy", "validation_precision_at_10", "epoch",
                       "averaged", "train_s"):
            values = [runs[s][name].get(metric) for s in args.seeds]
            if all(v is not None for v in values):
                row[metric] = {"mean": float(np.mean(values)),
                               "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
        summary[name] = row
        print(f"{name:<34}" + "".join(f"  {m} {v['mean']:.3f} ± {v['std']:.3f}" for m, v in row.items()), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"warehouse": args.warehouse, "features": args.features, "source": args.source,
                               "layer": args.layer,
                               "seeds": args.seeds, "heads": args.heads,
                               "max_train_songs": args.max_train_songs, "slices_per_song": args.slices_per_song,
                               "summary": summary, "runs": runs}, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
