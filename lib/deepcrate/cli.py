"""The ``deepcrate`` command: one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from deepcrate.errors import DeepcrateError

logger = logging.getLogger("deepcrate")


# Commands that only read: they answer on stdout and say nothing on stderr unless something is
# wrong (or -v is given), as psql and sqlite3 do.
READERS = frozenset({"sql", "recommend", "playlist", "history", "report"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, reader=args.command in READERS)
    try:
        return args.run(args)
    except DeepcrateError as exc:
        print(f"deepcrate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deepcrate {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a Spark job that met a damaged file is the user's to fix too, not a traceback
        from deepcrate.storage.arrow_tables import unreadable_file_error

        damaged = unreadable_file_error(exc)
        if damaged is None:
            raise
        print(f"deepcrate {args.command}: error: {damaged}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepcrate", description="Content-based music recommendations as Spark batch jobs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo-catalogue", help="synthesize a labelled demo catalogue of MP3s")
    demo.add_argument("out_dir", metavar="OUT_DIR")
    demo.add_argument("--songs-per-genre", type=int, default=20, metavar="N")
    demo.add_argument("--seconds", type=float, default=30.0, metavar="S")
    demo.add_argument("--seed", type=int, default=0, metavar="K")
    demo.set_defaults(run=_demo_catalogue)

    acquire = commands.add_parser("acquire", help="download the audio a manifest of URLs lists")
    acquire.add_argument("--manifest", required=True, metavar="URLS",
                         help="CSV or JSON lines with url and optional genre, artist, title, label, ...")
    acquire.add_argument("--audio", required=True, metavar="DIR", help="where the files go (<genre>/<name>.mp3)")
    acquire.add_argument("--workers", type=int, metavar="N", help="concurrent downloads (acquire.workers)")
    acquire.add_argument("--per-host-delay", type=float, metavar="S",
                         help="seconds between requests to one host (acquire.per_host_delay_s)")
    _add_common(acquire)
    acquire.set_defaults(run=_acquire)

    ingest = commands.add_parser("ingest", help="audio folder -> songs, slices, rejects tables")
    ingest.add_argument("--audio", required=True, metavar="DIR", help="folder of audio files (recursive)")
    ingest.add_argument("--manifest", metavar="CSV", help="labels: path,genre[,artist,title,release_date,...]")
    ingest.add_argument("--allow-empty", action="store_true",
                        help="publish even if every file is rejected and the warehouse has songs")
    _add_common(ingest)
    ingest.set_defaults(run=_ingest)

    features = commands.add_parser("features", help="slices -> pretrained_features: the frozen musicnn networks' "
                                   "features of every new slice, once (on Spark)")
    features.add_argument("--force", action="store_true", help="compute every slice again, not only new ones")
    _add_common(features)
    features.set_defaults(run=_features)

    train = commands.add_parser("train", help="slices -> a genre CNN, evaluated on the test split")
    train.add_argument("--resume", action="store_true",
                       help="continue the newest interrupted training run (with the config it started with)")
    _add_common(train)
    train.set_defaults(run=_train)

    embed = commands.add_parser("embed", help="slices -> slice_embeddings, song_embeddings (on Spark)")
    embed.add_argument("--model", metavar="PATH_OR_VERSION",
                       help="a model folder or a version under WH/models (default: the newest)")
    _add_common(embed)
    embed.set_defaults(run=_embed)

    index = commands.add_parser("index", help="song_embeddings -> FAISS index, recommendations table")
    _add_common(index)
    index.set_defaults(run=_index)

    evaluate = commands.add_parser("evaluate", help="retrieval quality of the song embeddings on the test split, "
                                   "against MFCC, timbre and random baselines and the ideal ranking")
    evaluate.add_argument("--json", metavar="FILE", help="also write the metrics to FILE (metrics.json)")
    _add_common(evaluate)
    evaluate.set_defaults(run=_evaluate)

    recommend = commands.add_parser("recommend", help="songs that sound like a song, several songs, or a file")
    recommend.add_argument("--song", action="append", default=[], metavar="ID_OR_PATH_OR_TITLE",
                           help="a catalogue song by song_id, path, file name or title; repeatable (their mean)")
    recommend.add_argument("--file", action="append", default=[], metavar="AUDIO",
                           help="a song that need not be in the catalogue; repeatable")
    recommend.add_argument("-k", type=int, default=10, help="how many (default 10)")
    recommend.add_argument("--exclude-artist", action="store_true", help="no songs by the seeds' artists")
    recommend.add_argument("--released-before", metavar="DATE", help="only songs released before DATE")
    recommend.add_argument("--released-after", metavar="DATE", help="only songs released after DATE")
    recommend.add_argument("--genre", metavar="G", help="only songs of genre G (predicted, for unlabelled songs)")
    _add_mixable(recommend)
    recommend.add_argument("--explain", action="store_true",
                           help="for each song, the passages that match best and what the two share")
    recommend.add_argument("--format", choices=("table", "json"), default="table")
    _add_common(recommend)
    recommend.set_defaults(run=_recommend)

    playlist = commands.add_parser("playlist", help="a path of catalogue songs from one song's sound to another's")
    playlist.add_argument("--from", dest="start", required=True, metavar="SONG", help="the first song (as --song)")
    playlist.add_argument("--to", dest="end", required=True, metavar="SONG", help="the last song")
    playlist.add_argument("--length", type=int, default=10, help="songs in all, both ends included (default 10)")
    _add_mixable(playlist)
    playlist.add_argument("--format", choices=("table", "json", "m3u"), default="table")
    _add_common(playlist)
    playlist.set_defaults(run=_playlist)

    rebuild = commands.add_parser("rebuild", help="the whole pipeline: ingest, train, embed, index "
                                  "(skips stages that are up to date)")
    rebuild.add_argument("--audio", required=True, metavar="DIR", help="folder of audio files (recursive)")
    rebuild.add_argument("--manifest", metavar="CSV", help="labels: path,genre[,artist,title,release_date,...]")
    rebuild.add_argument("--model", metavar="PATH_OR_VERSION",
                         help="embed with this model (a folder or a version under WH/models) and skip training")
    rebuild.add_argument("--force", action="store_true", help="run every stage from scratch")
    rebuild.add_argument("--allow-empty", action="store_true",
                         help="publish even if every file is rejected and the warehouse has songs")
    _add_report_options(rebuild, flag="--report", default=None, nargs="?", const="report.html",
                        help="also write the report (deepcrate report) at the end, to FILE (default: report.html)")
    _add_common(rebuild)
    rebuild.set_defaults(run=_rebuild)

    report = commands.add_parser("report", help="the catalogue as one HTML page: a map to look at and listen to, "
                                 "the evaluation, the rejects (no server needed)")
    report.add_argument("--warehouse", required=True, metavar="WH", help="folder (or URI) of the tables")
    _add_report_options(report, flag="--out", default="report.html", help="the HTML file to write (default: %(default)s)")
    report.set_defaults(run=_report)

    sql = commands.add_parser("sql", help="run Spark SQL over the warehouse tables (no QUERY: a shell)")
    sql.add_argument("query", metavar="QUERY", nargs="?",
                     help="one read-only statement; without it, a shell (or the statements piped in)")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.add_argument("--as-of", type=int, metavar="RUN", help="query the tables as published run RUN left them "
                     "(deepcrate history lists the runs)")
    _add_common(sql)
    sql.set_defaults(run=_sql)

    history = commands.add_parser("history", help="the warehouse's published runs, newest first")
    history.add_argument("--format", choices=("table", "json"), default="table")
    history.add_argument("--warehouse", required=True, metavar="WH", help="folder (or URI) of the tables")
    history.set_defaults(run=_history)

    rollback = commands.add_parser("rollback", help="publish an earlier run's tables again, as a new run")
    rollback.add_argument("--to", type=int, required=True, metavar="RUN", help="the run to go back to")
    rollback.add_argument("--warehouse", required=True, metavar="WH", help="folder (or URI) of the tables")
    rollback.set_defaults(run=_rollback)

    vacuum = commands.add_parser("vacuum", help="delete the files that none of the newest N runs reads")
    vacuum.add_argument("--keep", type=int, required=True, metavar="N", help="runs whose files are kept (>= 1)")
    vacuum.add_argument("--dry-run", action="store_true", help="list the files it would delete (path, bytes); "
                        "delete nothing")
    vacuum.add_argument("--warehouse", required=True, metavar="WH", help="folder (or URI) of the tables")
    vacuum.set_defaults(run=_vacuum)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warehouse", required=True, metavar="WH", help="folder (or URI) of the tables")
    parser.add_argument("--conf", action="append", default=[], metavar="FILE",
                        help="YAML overlay on the defaults (conf/local.yaml); repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one key, e.g. spectrogram.preset=mel; repeatable")


def _add_mixable(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mixable", action="store_true",
                        help="only songs a DJ can mix after the (first) seed: tempo and key compatible")
    parser.add_argument("--bpm-range", type=float, default=6.0, metavar="PERCENT",
                        help="with --mixable: tempo within this %% (at the same, double or half tempo; default 6)")
    parser.add_argument("--key", choices=("compatible", "same", "any"), default="compatible",
                        help="with --mixable: compatible (Camelot neighbours, the default), the same key, or any")


def _add_report_options(parser: argparse.ArgumentParser, *, flag: str, **out: Any) -> None:
    parser.add_argument(flag, dest="report_out", metavar="FILE", **out)
    parser.add_argument("--audio-base", metavar="URL_OR_PATH",
                        help="where the page finds the audio folder's files (default: links relative to the page)")
    parser.add_argument("--projection", choices=("auto", "umap", "tsne", "pca"), default="auto",
                        help="how the map is drawn (auto: UMAP where umap-learn is installed, else t-SNE or PCA)")


def _setup_logging(verbose: bool, *, reader: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if reader else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "pyspark", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # py4j logs a traceback when Ctrl-C breaks a call it waits on; the user gets one line
        logging.getLogger("py4j").setLevel(logging.CRITICAL)


# A one-shot query's JVM lives seconds, spent loading classes and running them once: the quick
# compiler alone starts it ~3 s sooner on 2 cores (bench/sql_startup.py); no UI server either.
ONE_SHOT_OPTIONS = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1", "spark.ui.enabled": "false"}
SHELL_OPTIONS = {"spark.ui.enabled": "false"}


def _config_and_session(args: argparse.Namespace, *, options: dict[str, str] | None = None):
    """The resolved config and its Spark session; ``options`` are Spark options this command
    prefers, unless the user's config sets them."""
    from deepcrate.config import config_to_yaml, resolve_config
    from deepcrate.spark.session import spark_session

    config = resolve_config(conf_files=args.conf, overrides=args.overrides)
    for key, value in (options or {}).items():
        config["spark"]["options"].setdefault(key, value)
    logger.debug("deepcrate %s: resolved config\n%s", args.command, config_to_yaml(config))
    if args.command not in READERS:
        given = [f"--conf {c}" for c in args.conf] + [f"--set {o}" for o in args.overrides]
        logger.info("deepcrate %s: settings: the defaults%s; the resolved config is kept in the run this job "
                    "publishes (deepcrate history --format json; -v prints it)", args.command,
                    f" with {' '.join(given)}" if given else "")
    return config, spark_session(config, quiet=not args.verbose)


def _demo_catalogue(args: argparse.Namespace) -> int:
    from deepcrate.audio.demo import write_demo_catalogue

    if args.songs_per_genre < 1 or args.seconds <= 0:
        raise DeepcrateError("--songs-per-genre and --seconds must be positive")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise DeepcrateError(f"{args.out_dir} exists and is not a folder; name a folder for the demo catalogue")
    try:
        manifest = write_demo_catalogue(
            args.out_dir, songs_per_genre=args.songs_per_genre, seconds=args.seconds, seed=args.seed
        )
    except OSError as exc:
        raise DeepcrateError(f"cannot write the demo catalogue: {exc.strerror}: {exc.filename}") from None
    print(f"demo catalogue written: {manifest.parent} (manifest: {manifest})")
    return 0


def _acquire(args: argparse.Namespace) -> int:
    from deepcrate.stages.acquire import acquire

    if args.workers is not None:
        args.overrides.append(f"acquire.workers={args.workers}")
    if args.per_host_delay is not None:
        args.overrides.append(f"acquire.per_host_delay_s={args.per_host_delay}")
    config, spark = _config_and_session(args)
    summary = acquire(spark, manifest=args.manifest, audio=args.audio, warehouse=args.warehouse, config=config)
    print("\n".join(summary.lines()))
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from deepcrate.stages.ingest.job import ingest

    config, spark = _config_and_session(args)
    summary = ingest(spark, audio=args.audio, manifest=args.manifest, warehouse=args.warehouse, config=config,
                     allow_empty=args.allow_empty)
    print("\n".join(summary.lines()))
    return 0


def _train(args: argparse.Namespace) -> int:
    from deepcrate.stages.training import train

    config, spark = _config_and_session(args)
    result = train(spark, warehouse=args.warehouse, config=config, resume=args.resume)
    print("\n".join(result.lines()))
    return 0


def _features(args: argparse.Namespace) -> int:
    from deepcrate.stages.features import compute_features

    config, spark = _config_and_session(args)
    summary = compute_features(spark, warehouse=args.warehouse, config=config, incremental=not args.force)
    print("\n".join(summary.lines()))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from deepcrate.stages.embed import embed

    config, spark = _config_and_session(args)
    summary = embed(spark, warehouse=args.warehouse, config=config, model=args.model)
    print("\n".join(summary.lines()))
    return 0


def _index(args: argparse.Namespace) -> int:
    from deepcrate.stages.index import index_songs

    config, spark = _config_and_session(args)
    summary = index_songs(spark, warehouse=args.warehouse, config=config)
    print("\n".join(summary.lines()))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from deepcrate.stages.evaluate import evaluate

    config, spark = _config_and_session(args)
    summary = evaluate(spark, warehouse=args.warehouse, config=config)
    print("\n".join(summary.lines()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(summary.metrics(), out, indent=2)
            out.write("\n")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from deepcrate.stages.rebuild import rebuild

    config, spark = _config_and_session(args)
    summary = rebuild(spark, audio=args.audio, manifest=args.manifest, warehouse=args.warehouse, config=config,
                      model=args.model, force=args.force, allow_empty=args.allow_empty)
    print("\n".join(summary.lines()))
    if args.report_out:
        return _report(args)
    return 0


def _report(args: argparse.Namespace) -> int:
    from deepcrate.query.report import write_report

    summary = write_report(args.warehouse, out=args.report_out, audio_base=args.audio_base, projection=args.projection)
    print("\n".join(summary.lines()))
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from deepcrate.config import resolve_config
    from deepcrate.query.recommend import Catalogue, Filters, Mixable, explain, parse_date, write_results

    if args.k < 1:
        raise DeepcrateError("-k must be at least 1")
    if not args.song and not args.file:
        raise DeepcrateError("give at least one --song or --file")
    filters = Filters(
        exclude_seed_artists=args.exclude_artist,
        released_before=parse_date(args.released_before, flag="--released-before") if args.released_before else None,
        released_after=parse_date(args.released_after, flag="--released-after") if args.released_after else None,
        genre=args.genre,
        mixable=Mixable(bpm_range=args.bpm_range, key=args.key) if args.mixable else None,
    )
    catalogue = Catalogue(args.warehouse, config=resolve_config(conf_files=args.conf, overrides=args.overrides))
    seeds = [catalogue.song_seed(text) for text in args.song] + [catalogue.file_seed(path) for path in args.file]
    results = catalogue.recommend(seeds, k=args.k, filters=filters)
    if args.explain:
        results = explain(catalogue, seeds, results)
    write_results(results, out=sys.stdout, fmt=args.format, seeds=seeds, k=args.k)
    return 0


def _playlist(args: argparse.Namespace) -> int:
    from deepcrate.config import resolve_config
    from deepcrate.query.recommend import Catalogue, Mixable, playlist, write_playlist

    mixable = Mixable(bpm_range=args.bpm_range, key=args.key) if args.mixable else None
    catalogue = Catalogue(args.warehouse, config=resolve_config(conf_files=args.conf, overrides=args.overrides))
    steps = playlist(catalogue, catalogue.song_seed(args.start), catalogue.song_seed(args.end), length=args.length,
                               mixable=mixable)
    write_playlist(steps, out=sys.stdout, fmt=args.format)
    return 0


def _sql(args: argparse.Namespace) -> int:
    from deepcrate.query.sql import QuerySession
    from deepcrate.query.sql_shell import run_shell

    config, spark = _config_and_session(args, options=SHELL_OPTIONS if args.query is None else ONE_SHOT_OPTIONS)
    session = QuerySession(spark, warehouse=args.warehouse, as_of=args.as_of, timeout_s=config["sql"]["timeout_s"])
    if args.query is None:
        return run_shell(session, fmt=args.format)
    session.run(args.query, out=sys.stdout, fmt=args.format)
    return 0


def _history(args: argparse.Namespace) -> int:
    from deepcrate.query.history import history_rows, write_history

    write_history(history_rows(args.warehouse), out=sys.stdout, fmt=args.format)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from deepcrate.query.history import rollback

    print(rollback(warehouse=args.warehouse, to=args.to))
    return 0


def _vacuum(args: argparse.Namespace) -> int:
    from deepcrate.query.history import vacuum

    print(vacuum(warehouse=args.warehouse, keep=args.keep, dry_run=args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
