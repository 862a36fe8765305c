"""How good are the recommendations? Retrieval quality on the test split, with baselines.

Each labelled test song is a query against every labelled song of the catalogue (all
splits, the query left out); its 10 nearest songs (by cosine similarity; for the timbre
baseline, by divergence) are judged by genre (:mod:`deepcrate.vectors.retrieval`). Four or five
methods answer the same queries, beside the best answer the labels allow:

- ``model``: the song embeddings (``song_embeddings``); song accuracy is the model's
  own genre prediction (summed slice votes), or for a model without a genre head the
  same logistic regression as for MFCCs, fitted on its embeddings;
- ``pretrained`` (only for a model built on a pretrained network, ``train.model=musicnn``):
  that network as it comes, untuned: the mean of each song's slices' pretrained features
  (``song_embeddings.pretrained``, computed in the same pass as the embeddings), cosine;
  song accuracy from the same logistic regression as for MFCCs. What fine-tuning must beat;
- ``mfcc``: classic MFCC statistics (:mod:`deepcrate.audio.mfcc`), standardised over the
  catalogue; song accuracy from a logistic regression fitted on the train and
  validation songs' features (at most ``evaluate.probe_max_songs`` of them);
- ``timbre``: the classic timbre model (:mod:`deepcrate.audio.timbre`): a Gaussian over each
  song's MFCC frames, the least divergent songs as neighbours; no labels, no training,
  no genre prediction (song accuracy n/a). What a trained network should beat;
- ``random``: random neighbours and random genres, averaged over several draws;
- ``ideal``: not a method but the ceiling: what a perfect ranking scores with these
  labels (every other song of the query's genre first). A genre with fewer than ``k``
  other songs cannot fill the top ``k``, so this is below 1 on small catalogues.

The MFCC features of both baselines come from ``mfcc_features``, which ingest computes
from the samples it decodes anyway: evaluating decodes nothing. Each search streams the
catalogue's vectors from their table a row group at a time; the driver holds the query
songs' vectors, their best neighbours so far, and the genre probes' bounded sample, not the
catalogue's vectors.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession

from deepcrate.audio.mfcc import N_MFCC
from deepcrate.audio.timbre import least_divergent_of_blocks
from deepcrate.config import Settings, to_mapping
from deepcrate.config.sections import EvaluateSettings
from deepcrate.errors import InputError, WarehouseError
from deepcrate.stages.pipeline import Outcome, RebuildContext, Stage
from deepcrate.storage.arrow_tables import ArrowTables
from deepcrate.storage.schemas import EVALUATION, EVALUATION_METHODS, Table
from deepcrate.storage.spark_schemas import spark_schema
from deepcrate.storage.table_metadata import EvaluationMetadata
from deepcrate.storage.warehouse import Warehouse
from deepcrate.storage.writer_lock import holds_writer_lock
from deepcrate.vectors.genre_accuracy import percent
from deepcrate.vectors.moments import standard_scale, standardised, streamed_moments
from deepcrate.vectors.retrieval import ideal_songs, nearest_songs_of_blocks, random_songs, retrieval_scores

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

logger = logging.getLogger(__name__)

KS = (5, 10)
METHODS = EVALUATION_METHODS  # pretrained: where the model has it
METRICS = tuple(f"{name}_at_{k}" for name in ("precision", "map") for k in KS)
PROBE_BLOCK = 8192  # query songs predicted at once


@dataclass
class EvaluateSummary:
    model_version: str
    queries: int  # labelled test songs
    catalogue: int  # labelled songs searched
    rows: pd.DataFrame  # the evaluation table
    seconds: float

    def lines(self) -> list[str]:
        out = [f"evaluated model {self.model_version} in {self.seconds:.1f} s: {self.queries} test songs as "
               f"queries against {self.catalogue} labelled songs",
               f"  {'method':<10}{'song acc':>9}{'P@5':>7}{'P@10':>7}{'MAP@5':>7}{'MAP@10':>8}"]
        overall = self.rows[self.rows["genre"].isna()].set_index("method")
        methods = [m for m in METHODS if m in overall.index]
        for method in methods:
            row = overall.loc[method]
            out.append(f"  {method:<10}{percent(row['song_accuracy']):>9}{row['precision_at_5']:>7.3f}"
                       f"{row['precision_at_10']:>7.3f}{row['map_at_5']:>7.3f}{row['map_at_10']:>8.3f}")
        model = overall.loc["model", "precision_at_10"]
        ratios = [f"{model / overall.loc[baseline, 'precision_at_10']:.2f}x the {name} baseline"
                  for baseline, name in (("mfcc", "MFCC"), ("timbre", "timbre"), ("pretrained", "untuned pretrained"))
                  if baseline in overall.index and overall.loc[baseline, "precision_at_10"] > 0]
        if ratios:
            out.append(f"  P@10: the model is {', '.join(ratios)}")
        per_genre = self.rows.dropna(subset=["genre"]).pivot(index="genre", columns="method", values="precision_at_10")
        out.append(f"  P@10 per genre ({' / '.join(methods)}): " + ", ".join(
            f"{genre} " + "/".join(f"{row[method]:.2f}" for method in methods) for genre, row in per_genre.iterrows()))
        return out

    def metrics(self) -> dict[str, Any]:
        """The whole evaluation as JSON-ready values (``--json FILE``)."""
        def clean(record: dict) -> dict:
            return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()}
        result: dict[str, Any] = {"model_version": self.model_version, "queries": self.queries,
                                  "catalogue": self.catalogue, "methods": {}}
        for method in [m for m in METHODS if m in set(self.rows["method"])]:
            rows = self.rows[self.rows["method"] == method]
            overall = rows[rows["genre"].isna()].iloc[0]
            result["methods"][method] = {
                **clean({k: overall[k] for k in ("song_accuracy", *METRICS)}),
                "per_genre": {r["genre"]: clean({k: r[k] for k in ("songs", "song_accuracy", *METRICS)})
                              for r in rows.dropna(subset=["genre"]).to_dict("records")},
            }
        return result


@holds_writer_lock()
def evaluate(spark: SparkSession, *, warehouse: str, settings: Settings) -> EvaluateSummary:
    """Write the ``evaluation`` table for the published song embeddings and ``mfcc_features``.

    Raises
    ------
    WarehouseError
        When ``songs`` or ``song_embeddings`` is missing.
    InputError
        When there is no labelled test song, fewer than two genres, or too few labelled
        songs to rank ``max(KS)`` neighbours.
    """
    started = time.monotonic()
    store = Warehouse(spark, warehouse)
    for name in (Table.SONGS, Table.SONG_EMBEDDINGS, Table.MFCC_FEATURES):
        if not store.exists(name):
            stage = "ingest" if name == Table.MFCC_FEATURES else "embed"
            raise WarehouseError(f"warehouse {store.root}: no {name} table; run deepcrate rebuild (or {stage}) first")
    # the songs' ids and labels stay Arrow columns (not a Python string per song and frame)
    songs = store.arrow.read(Table.SONGS, columns=["song_id", "genre", "split"])
    embedded = store.arrow.read(Table.SONG_EMBEDDINGS, columns=["song_id", "predicted_genre", "model_version"])
    version = str(embedded.column("model_version")[0].as_py()) if embedded.num_rows else ""
    labelled = songs.filter(pc.is_valid(songs.column("genre"))).join(
        embedded.drop_columns(["model_version"]), "song_id", join_type="inner")
    del songs, embedded
    _check_evaluable(labelled, where=f"warehouse {store.root}")

    run = store.begin_run()
    # ingest computed the MFCC features from its own decode: no second one
    featured = store.arrow.read(Table.MFCC_FEATURES, columns=["song_id"]).column("song_id")
    catalogue = labelled.filter(pc.is_in(labelled.column("song_id"), value_set=featured.combine_chunks())
                                ).sort_by("song_id")
    if catalogue.num_rows < labelled.num_rows:
        logger.warning("%d labelled songs have no MFCC features (an ingest older than them?) and are left out "
                       "of the evaluation", labelled.num_rows - catalogue.num_rows)
        _check_evaluable(catalogue, where=f"warehouse {store.root}")
    del labelled, featured
    keys = catalogue.column("song_id").combine_chunks()
    labels = catalogue.drop_columns(["song_id"]).to_pandas(strings_to_categorical=True)
    test = labels["split"].to_numpy(dtype=object) == "test"
    test_slices = _test_slice_counts(store, keys.filter(pa.array(test)), labels["genre"].to_numpy(dtype=object)[test])
    rows = _evaluation_rows(labels, CatalogueVectors(store.arrow, keys), version=version,
                            settings=settings.evaluate, test_slices=test_slices)
    frame = spark.createDataFrame(rows[list(EVALUATION.names)].astype(object).where(rows.notna(), None)
                                  .itertuples(index=False, name=None), schema=spark_schema(Table.EVALUATION)).coalesce(1)
    summary = EvaluateSummary(model_version=version, queries=int(test.sum()), catalogue=len(labels), rows=rows,
                              seconds=time.monotonic() - started)
    store.write_table(run, Table.EVALUATION, frame,
                      metadata=EvaluationMetadata(model_version=version, metrics=summary.metrics()))
    store.publish(run, [Table.EVALUATION])
    summary.seconds = time.monotonic() - started
    return summary


def _check_evaluable(catalogue: pa.Table, *, where: str) -> None:
    """Raise InputError unless the labelled songs (``genre``, ``split``) can be evaluated."""
    if not pc.any(pc.equal(catalogue.column("split"), "test")).as_py():
        raise InputError(f"{where}: no labelled test songs to evaluate on")
    if pc.count_distinct(catalogue.column("genre")).as_py() < 2:
        raise InputError(f"{where}: one genre only; same-genre retrieval would be trivial")
    if catalogue.num_rows <= max(KS):
        raise InputError(f"{where}: {catalogue.num_rows} labelled songs; precision@{max(KS)} needs a query and "
                         f"{max(KS)} other songs")


def _evaluation_rows(catalogue: pd.DataFrame, vectors: CatalogueVectors, *, version: str,
                     settings: EvaluateSettings, test_slices: SliceCounts) -> pd.DataFrame:
    """One row per method and genre (genre None first) for the test songs of ``catalogue`` (the
    labelled songs' ``genre``, ``split`` and ``predicted_genre``, in song id order).

    ``vectors``: the songs' vectors, streamed from their tables a row group at a time for each
    search; only the query songs' (and the genre probes' sample of songs') are held.
    ``test_slices``: the test songs' slices, and those the model's genre head gets right, per genre.
    """
    genres = catalogue["genre"].to_numpy(dtype=object)
    queries = np.flatnonzero(catalogue["split"].to_numpy() == "test")
    query_genres = genres[queries]
    probe = GenreProbe(genres, catalogue["split"].to_numpy(), max_songs=int(settings.probe_max_songs))
    k = max(KS)
    rng = np.random.default_rng(int(settings.seed))
    draws = int(settings.random_draws)
    labels = np.array(sorted(set(genres)), dtype=object)

    def scored(found: np.ndarray) -> dict[str, np.ndarray]:
        return retrieval_scores(genres, queries, found, ks=KS)

    @contextlib.contextmanager
    def method(name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        logger.info("evaluate: %s: %d test songs ranked against %d songs in %.1f s", name, len(queries),
                    len(catalogue), time.monotonic() - started)

    def nearest(table: Table, column: str, prepare: Prepare = _as_they_are) -> dict[str, np.ndarray]:
        """The scores of the cosine neighbours of the queries by ``column`` (each block ``prepare``d)."""
        blocks = ((positions, prepare(block)) for positions, block in vectors.blocks(table, column))
        return scored(nearest_songs_of_blocks(blocks, prepare(vectors.rows(table, column, queries)), queries, k=k))

    def probed(table: Table, column: str, standard: Prepare | None = None) -> np.ndarray:
        """The query songs' genres by the genre probe of ``column``, standardised over the catalogue."""
        standard = standard or _standardiser(vectors, table, column)
        return probe.answers(standard(vectors.rows(table, column, probe.fitted)),
                             standard(vectors.rows(table, column, queries)))

    with method("model"):
        scores = {"model": nearest(Table.SONG_EMBEDDINGS, "embedding")}
        model_answers = catalogue["predicted_genre"].to_numpy(dtype=object)[queries]
        if catalogue["predicted_genre"].isna().all():  # an embedding-only model: probe it as MFCCs are
            model_answers = probed(Table.SONG_EMBEDDINGS, "embedding")
        answers = {"model": model_answers}
    with method("mfcc"):
        standard_mfcc = _standardiser(vectors, Table.MFCC_FEATURES, "features")
        scores["mfcc"] = nearest(Table.MFCC_FEATURES, "features", standard_mfcc)
        answers["mfcc"] = probed(Table.MFCC_FEATURES, "features", standard_mfcc)
    if vectors.complete(Table.SONG_EMBEDDINGS, "pretrained"):
        with method("pretrained"):
            scores["pretrained"] = nearest(Table.SONG_EMBEDDINGS, "pretrained")
            answers["pretrained"] = probed(Table.SONG_EMBEDDINGS, "pretrained")
    with method("timbre"):
        gaussians = functools.partial(vectors.blocks, Table.MFCC_FEATURES, "timbre", dtype=np.float64)
        centre, _ = streamed_moments(block[:, :N_MFCC] for _, block in gaussians())  # of every song's mean
        scores["timbre"] = scored(least_divergent_of_blocks(
            gaussians(), vectors.rows(Table.MFCC_FEATURES, "timbre", queries, dtype=np.float64), queries,
            centre=centre, k=k))
    scores["ideal"] = scored(ideal_songs(genres, queries, k=k))
    random_draws = [retrieval_scores(genres, queries, random_songs(len(catalogue), queries, k=k, rng=rng), ks=KS)
                    for _ in range(draws)]
    scores["random"] = {name: np.mean([d[name] for d in random_draws], axis=0) for name in METRICS}
    correct = {method: answers[method] == query_genres for method in answers}
    correct["random"] = np.mean([rng.choice(labels, size=len(queries)) == query_genres for _ in range(draws)], axis=0)
    correct["timbre"] = correct["ideal"] = None  # rankings, not classifiers

    rows = []
    for method in [m for m in METHODS if m in scores]:
        for genre in [None, *sorted(set(query_genres))]:
            mask = np.ones(len(queries), bool) if genre is None else query_genres == genre
            row = {"model_version": version, "method": method, "genre": genre, "songs": int(mask.sum()),
                   "slices": None,
                   "song_accuracy": None if correct[method] is None else float(np.mean(correct[method][mask])),
                   "slice_accuracy": None, "most_confused_with": None,
                   **{name: float(np.mean(scores[method][name][mask])) for name in METRICS}}
            if method == "model":  # the classifier's details, as the train job reports them
                row["slices"], row["slice_accuracy"] = test_slices.of(genre)
                wrong = model_answers[mask][model_answers[mask] != genre] if genre is not None else []
                row["most_confused_with"] = pd.Series(wrong).value_counts().sort_index(
                    ).sort_values(ascending=False, kind="stable").index[0] if len(wrong) else None
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame["slices"] = frame["slices"].astype("Int64")
    return frame


def genre_probe(features: np.ndarray, genres: np.ndarray) -> LogisticRegression:
    """The logistic regression that gives the baselines (and an embedding-only model) a
    song accuracy, fitted on these songs' ``features`` and ``genres``."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=1.0).fit(features, genres)


class GenreProbe:
    """Genres of the query songs by the :func:`genre_probe` of the train and validation songs.

    At most ``max_songs`` of them are fitted on (:attr:`fitted`: evenly spaced in catalogue
    order, i.e. by song id, a hash: a sample independent of genre), so that the fit's memory
    stays bounded however large the catalogue.
    """

    def __init__(self, genres: np.ndarray, splits: np.ndarray, *, max_songs: int) -> None:
        fitted = np.flatnonzero(np.isin(splits, ["train", "validation"]))
        if len(fitted) > max_songs:
            fitted = fitted[np.linspace(0, len(fitted) - 1, max_songs).round().astype(np.int64)]
        self.fitted, self.genres = fitted, genres[fitted]

    def answers(self, fitted: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """The predicted genre of each query song, from the features of the songs :attr:`fitted`
        and of the query songs (None each when fewer than two genres are fitted)."""
        if len(set(self.genres)) < 2:
            return np.full(len(queries), None, dtype=object)
        fit = genre_probe(fitted, self.genres)
        return np.concatenate([fit.predict(queries[start:start + PROBE_BLOCK])
                               for start in range(0, len(queries), PROBE_BLOCK)] or [[]]).astype(object)


class CatalogueVectors:
    """The catalogue's vectors, a column of the warehouse's tables at a time, read a row group at a
    time (:meth:`ArrowTables.matrix_blocks`); positions are in catalogue order (``keys``: song ids)."""

    def __init__(self, tables: ArrowTables, keys: pa.Array) -> None:
        self.tables, self.keys = tables, keys

    def blocks(self, table: Table, column: str, *, dtype: type = np.float32
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(catalogue positions, vectors) of every catalogue song, a row group at a time."""
        return self.tables.matrix_blocks(table, column, keys=self.keys, dtype=dtype)

    def rows(self, table: Table, column: str, positions: np.ndarray, *, dtype: type = np.float32) -> np.ndarray:
        """The vectors of the songs at catalogue ``positions``, in that order."""
        return self.tables.matrix(table, column, keys=self.keys.take(pa.array(positions, pa.int64())), dtype=dtype)

    def complete(self, table: Table, column: str) -> bool:
        """Whether ``table`` has ``column`` with a value in every row (``pretrained``: not before it
        existed, and null for a model without a pretrained network)."""
        return self.tables.has_columns(table, [column]) and self.tables.null_count(table, column) == 0


Prepare = Callable[[np.ndarray], np.ndarray]


def _as_they_are(vectors: np.ndarray) -> np.ndarray:
    return vectors


def _standardiser(vectors: CatalogueVectors, table: Table, column: str) -> Prepare:
    """What standardises ``column``'s vectors over the catalogue (float32, in place), its mean and
    spread taken in one pass over the table."""
    mean, spread = streamed_moments(block for _, block in vectors.blocks(table, column))
    scale = standard_scale(spread)
    return functools.partial(standardised, mean=mean, scale=scale, overwrite=True)


@dataclass
class SliceCounts:
    """The test songs' slices per genre, and how many of them the model's genre head gets right
    (``correct`` is None for a model without one)."""

    genres: list[str]
    slices: np.ndarray
    correct: np.ndarray | None

    def of(self, genre: str | None) -> tuple[int, float | None]:
        """(slices, slice accuracy) of ``genre``'s test songs, or of all of them for None."""
        chosen = np.array([genre is None or name == genre for name in self.genres], dtype=bool)
        slices = int(self.slices[chosen].sum())
        if self.correct is None or not slices:
            return slices, None
        return slices, float(self.correct[chosen].sum() / slices)


def _test_slice_counts(store: Warehouse, test_songs: pa.Array, genres: np.ndarray) -> SliceCounts:
    """:class:`SliceCounts` of the ``test_songs`` (ids) of ``genres``, their slices' genre
    probabilities streamed a row group at a time and counted as they come (nothing kept per slice)."""
    labels = np.array(store.metadata(Table.SLICE_EMBEDDINGS).labels, dtype=object)
    codes, names = pd.factorize(genres, sort=True)
    names = np.asarray(names, dtype=object)
    slices = np.zeros(len(names), np.int64)
    correct = np.zeros(len(names), np.int64)
    predicting = False
    for positions, probabilities in store.arrow.matrix_blocks(Table.SLICE_EMBEDDINGS, "genre_probabilities",
                                                              keys=test_songs):
        block_codes = codes[positions]
        slices += np.bincount(block_codes, minlength=len(names))
        # no genre head (probabilities of width 0): no slice predictions
        if probabilities.shape[1] and len(labels):
            predicting = True
            right = labels[probabilities.argmax(axis=1)] == names[block_codes]
            correct += np.bincount(block_codes[right], minlength=len(names))
    return SliceCounts(genres=list(names), slices=slices, correct=correct if predicting else None)


class EvaluateStage(Stage):
    """Rebuild stage: the evaluation, when the catalogue has labelled test songs."""

    name = "evaluate"
    after = ("embed",)
    writes = (Table.EVALUATION,)

    def settings(self, settings: Settings) -> Any:
        return to_mapping(settings.evaluate)

    def run(self, context: RebuildContext, *, fingerprint: str) -> Outcome:
        try:
            summary = evaluate(context.spark, warehouse=context.warehouse, settings=context.settings)
        except InputError as exc:  # an unlabelled catalogue still gets its recommendations
            logger.warning("rebuild: not evaluated: %s", exc)
            return Outcome(f"not evaluated: {exc}", published=False)
        return Outcome(f"{summary.queries} test songs as queries")


STAGE = EvaluateStage()
