"""What each ``deepcrate`` subcommand runs: its settings and Spark session when it needs them, then its stage
or reader; the answer on stdout."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from deepcrate.errors import DeepcrateError

logger = logging.getLogger("deepcrate")

# Commands that only read: they answer on stdout and say nothing on stderr unless something is
# wrong (or -v is given), as psql and sqlite3 do.
READERS = frozenset({"sql", "recommend", "playlist", "history", "report"})


# A one-shot query's JVM lives seconds, spent loading classes and running them once: the quick
# compiler alone starts it ~3 s sooner on 2 cores (bench/sql_startup.py); no UI server either.
ONE_SHOT_OPTIONS = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1", "spark.ui.enabled": "false"}
SHELL_OPTIONS = {"spark.ui.enabled": "false"}


def _settings(args: argparse.Namespace):
    """The settings this command runs with: the defaults, ``--conf`` files, ``--set`` overrides;
    built and checked once, here."""
    from deepcrate.config import resolve_settings, settings_to_yaml

    settings = resolve_settings(conf_files=args.conf, overrides=args.overrides)
    logger.debug("deepcrate %s: resolved settings\n%s", args.command, settings_to_yaml(settings))
    return settings


def _settings_and_session(args: argparse.Namespace, *, options: dict[str, str] | None = None, settings=None):
    """The settings (given, or built here) and their Spark session; ``options`` are Spark options this
    command prefers, unless the user's settings set them."""
    from deepcrate.spark.session import spark_session

    settings = settings or _settings(args)
    if args.command not in READERS:
        given = [f"--conf {c}" for c in args.conf] + [f"--set {o}" for o in args.overrides]
        logger.info("deepcrate %s: settings: the defaults%s; the resolved config is kept in the run this job "
                    "publishes (deepcrate history --format json; -v prints it)", args.command,
                    f" with {' '.join(given)}" if given else "")
    return settings, spark_session(settings.spark.preferring(options or {}), quiet=not args.verbose)


def _run_stage(args: argparse.Namespace, stage: Callable[..., Any], **arguments: Any) -> Any:
    """Run a writing stage on ``--warehouse`` with the settings and their session; print its summary."""
    settings, spark = _settings_and_session(args)
    summary = stage(spark, warehouse=args.warehouse, settings=settings, **arguments)
    print("\n".join(summary.lines()))
    return summary


def run_demo_catalogue(args: argparse.Namespace) -> int:
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


def run_acquire(args: argparse.Namespace) -> int:
    from deepcrate.stages.acquire import acquire

    if args.workers is not None:
        args.overrides.append(f"acquire.workers={args.workers}")
    if args.per_host_delay is not None:
        args.overrides.append(f"acquire.per_host_delay_s={args.per_host_delay}")
    _run_stage(args, acquire, manifest=args.manifest, audio=args.audio)
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    from deepcrate.stages.ingest.job import ingest

    _run_stage(args, ingest, audio=args.audio, manifest=args.manifest, allow_empty=args.allow_empty)
    return 0


def run_train(args: argparse.Namespace) -> int:
    from deepcrate.stages.training import train

    _run_stage(args, train, resume=args.resume)
    return 0


def run_features(args: argparse.Namespace) -> int:
    from deepcrate.stages.features import compute_features

    _run_stage(args, compute_features, incremental=not args.force)
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from deepcrate.stages.embed import embed

    _run_stage(args, embed, model=args.model)
    return 0


def run_index(args: argparse.Namespace) -> int:
    from deepcrate.stages.index import index_songs

    _run_stage(args, index_songs)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from deepcrate.stages.evaluate import evaluate

    summary = _run_stage(args, evaluate)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(summary.metrics(), out, indent=2)
            out.write("\n")
    return 0


def run_rebuild(args: argparse.Namespace) -> int:
    from deepcrate.stages.rebuild import rebuild

    _run_stage(args, rebuild, audio=args.audio, manifest=args.manifest, model=args.model, force=args.force,
               allow_empty=args.allow_empty)
    if args.report_out:
        return run_report(args)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from deepcrate.query.report import write_report

    summary = write_report(args.warehouse, out=args.report_out, audio_base=args.audio_base, projection=args.projection)
    print("\n".join(summary.lines()))
    return 0


def _mixable(args: argparse.Namespace):
    """``--mixable`` with its ``--bpm-range`` and ``--key``, or None."""
    from deepcrate.query.recommend import Mixable

    if not args.mixable:
        return None
    if not 0 < args.bpm_range <= 50:
        raise DeepcrateError(f"--bpm-range {args.bpm_range}: give a percentage between 0 and 50")
    return Mixable(bpm_range=args.bpm_range, key=args.key)


def run_recommend(args: argparse.Namespace) -> int:
    from deepcrate.query.recommend import Catalogue, Filters, explain, parse_date, write_results

    if args.k < 1:
        raise DeepcrateError("-k must be at least 1")
    if not args.song and not args.file:
        raise DeepcrateError("give at least one --song or --file")
    filters = Filters(
        exclude_seed_artists=args.exclude_artist,
        released_before=parse_date(args.released_before, flag="--released-before") if args.released_before else None,
        released_after=parse_date(args.released_after, flag="--released-after") if args.released_after else None,
        genre=args.genre,
        mixable=_mixable(args),
    )
    catalogue = Catalogue(args.warehouse, settings=_settings(args))
    seeds = [catalogue.song_seed(text) for text in args.song] + [catalogue.file_seed(path) for path in args.file]
    results = catalogue.recommend(seeds, k=args.k, filters=filters)
    if args.explain:
        results = explain(catalogue, seeds, results)
    write_results(results, out=sys.stdout, fmt=args.format, seeds=seeds, k=args.k)
    return 0


def run_playlist(args: argparse.Namespace) -> int:
    from deepcrate.query.recommend import Catalogue, playlist, write_playlist

    mixable = _mixable(args)
    catalogue = Catalogue(args.warehouse, settings=_settings(args))
    steps = playlist(catalogue, catalogue.song_seed(args.start), catalogue.song_seed(args.end), length=args.length,
                               mixable=mixable)
    write_playlist(steps, out=sys.stdout, fmt=args.format)
    return 0


def run_sql(args: argparse.Namespace) -> int:
    from deepcrate.query.sql import QuerySession
    from deepcrate.query.sql_shell import run_shell

    settings = _settings(args)
    options = dict(SHELL_OPTIONS if args.query is None else ONE_SHOT_OPTIONS)
    archive = _class_archive(settings, options, make=args.query is not None)
    settings, spark = _settings_and_session(args, options=options, settings=settings)
    session = QuerySession(spark, warehouse=args.warehouse, as_of=args.as_of, timeout_s=settings.sql.timeout_s)
    if args.query is None:
        return run_shell(session, fmt=args.format)
    session.run(args.query, out=sys.stdout, fmt=args.format)
    if archive is not None:
        archive.finish(spark)
    return 0


def _class_archive(settings, options: dict[str, str], *, make: bool):
    """Add to ``options`` the JVM option that maps the archive of Spark's classes (``sql.class_archive``),
    or, with ``make``, writes it; the archive to finish when this run writes it, else None."""
    from pyspark import SparkContext

    from deepcrate.spark.class_archive import ClassArchive
    from deepcrate.spark.session import under_spark_submit

    if (not settings.sql.class_archive or under_spark_submit() or SparkContext._active_spark_context is not None
            or "spark.driver.extraJavaOptions" in settings.spark.options):
        return None  # no archive wanted, a JVM already running, or the user's own JVM options
    archive = ClassArchive.for_this_jvm()
    option = archive.java_option(make=make) if archive else None
    if option is None:
        return None
    options["spark.driver.extraJavaOptions"] = " ".join(filter(None, [options.get("spark.driver.extraJavaOptions"),
                                                                      option]))
    return None if archive.ready else archive


def run_history(args: argparse.Namespace) -> int:
    from deepcrate.query.history import history_rows, write_history

    write_history(history_rows(args.warehouse), out=sys.stdout, fmt=args.format)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from deepcrate.query.history import rollback

    print(rollback(warehouse=args.warehouse, to=args.to))
    return 0


def run_vacuum(args: argparse.Namespace) -> int:
    from deepcrate.query.history import vacuum

    print(vacuum(warehouse=args.warehouse, keep=args.keep, dry_run=args.dry_run))
    return 0
