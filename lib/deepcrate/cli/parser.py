"""The arguments of every ``deepcrate`` subcommand; each names the function of :mod:`.commands` it runs."""
from __future__ import annotations

import argparse
from typing import Any

from deepcrate.cli import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepcrate", description="Content-based music recommendations as Spark batch jobs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = subcommands.add_parser("demo-catalogue", help="synthesize a labelled demo catalogue of MP3s")
    demo.add_argument("out_dir", metavar="OUT_DIR")
    demo.add_argument("--songs-per-genre", type=int, default=20, metavar="N")
    demo.add_argument("--seconds", type=float, default=30.0, metavar="S")
    demo.add_argument("--seed", type=int, default=0, metavar="K")
    demo.set_defaults(run=commands.run_demo_catalogue)

    acquire = subcommands.add_parser("acquire", help="download the audio a manifest of URLs lists")
    acquire.add_argument("--manifest", required=True, metavar="URLS",
                         help="CSV or JSON lines with url and optional genre, artist, title, label, ...")
    acquire.add_argument("--audio", required=True, metavar="DIR", help="where the files go (<genre>/<name>.mp3)")
    acquire.add_argument("--workers", type=int, metavar="N", help="concurrent downloads (acquire.workers)")
    acquire.add_argument("--per-host-delay", type=float, metavar="S",
                         help="seconds between requests to one host (acquire.per_host_delay_s)")
    _add_common(acquire)
    acquire.set_defaults(run=commands.run_acquire)

    ingest = subcommands.add_parser("ingest", help="audio folder -> songs, slices, rejects tables")
    ingest.add_argument("--audio", required=True, metavar="DIR", help="folder of audio files (recursive)")
    ingest.add_argument("--manifest", metavar="CSV", help="labels: path,genre[,artist,title,release_date,...]")
    ingest.add_argument("--allow-empty", action="store_true",
                        help="publish even if every file is rejected and the warehouse has songs")
    _add_common(ingest)
    ingest.set_defaults(run=commands.run_ingest)

    features = subcommands.add_parser("features", help="slices -> pretrained_features: the frozen musicnn networks' "
                                   "features of every new slice, once (on Spark)")
    features.add_argument("--force", action="store_true", help="compute every slice again, not only new ones")
    _add_common(features)
    features.set_defaults(run=commands.run_features)

    train = subcommands.add_parser("train", help="slices -> a genre CNN, evaluated on the test split")
    train.add_argument("--resume", action="store_true",
                       help="continue the newest interrupted training run (with the config it started with)")
    _add_common(train)
    train.set_defaults(run=commands.run_train)

    embed = subcommands.add_parser("embed", help="slices -> slice_embeddings, song_embeddings (on Spark)")
    embed.add_argument("--model", metavar="PATH_OR_VERSION",
                       help="a model folder or a version under WH/models (default: the newest)")
    _add_common(embed)
    embed.set_defaults(run=commands.run_embed)

    index = subcommands.add_parser("index", help="song_embeddings -> FAISS index, recommendations table")
    _add_common(index)
    index.set_defaults(run=commands.run_index)

    evaluate = subcommands.add_parser("evaluate", help="retrieval quality of the song embeddings on the test split, "
                                   "against MFCC, timbre and random baselines and the ideal ranking")
    evaluate.add_argument("--json", metavar="FILE", help="also write the metrics to FILE (metrics.json)")
    _add_common(evaluate)
    evaluate.set_defaults(run=commands.run_evaluate)

    recommend = subcommands.add_parser("recommend", help="songs that sound like a song, several songs, or a file")
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
    recommend.set_defaults(run=commands.run_recommend)

    playlist = subcommands.add_parser("playlist", help="a path of catalogue songs from one song's sound to another's")
    playlist.add_argument("--from", dest="start", required=True, metavar="SONG", help="the first song (as --song)")
    playlist.add_argument("--to", dest="end", required=True, metavar="SONG", help="the last song")
    playlist.add_argument("--length", type=int, default=10, help="songs in all, both ends included (default 10)")
    _add_mixable(playlist)
    playlist.add_argument("--format", choices=("table", "json", "m3u"), default="table")
    _add_common(playlist)
    playlist.set_defaults(run=commands.run_playlist)

    rebuild = subcommands.add_parser("rebuild", help="the whole pipeline: ingest, train, embed, index "
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
    rebuild.set_defaults(run=commands.run_rebuild)

    report = subcommands.add_parser("report", help="the catalogue as one HTML page: a map to look at and listen to, "
                                 "the evaluation, the rejects (no server needed)")
    report.add_argument("--warehouse", required=True, metavar="WH", help="folder (or URI) of the tables")
    _add_report_options(report, flag="--out", default="report.html", help="the HTML file to write (default: %(default)s)")
    report.set_defaults(run=commands.run_report)

    sql = subcommands.add_parser("sql", help="run Spark SQL over the warehouse tables (no QUERY: a shell)")
    sql.add_argument("query", metavar="QUERY", nargs="?",
                     help="one read-only statement; without it, a shell (or the statements piped in)")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.add_argument("--as-of", type=int, metavar="RUN", help="query the tables as published run RUN left them "
                     "(deepcrate history lists the runs)")
    _add_common(sql)
    sql.set_defaults(run=commands.run_sql)

    history = subcommands.add_parser("history", help="the warehouse's published runs, newest first")
    history.add_argument("--format", choices=("table", "json"), default="table")
    history.add_argument("--warehouse", required=True, metavar="WH", help="folder (or URI) of the tables")
    history.set_defaults(run=commands.run_history)

    rollback = subcommands.add_parser("rollback", help="publish an earlier run's tables again, as a new run")
    rollback.add_argument("--to", type=int, required=True, metavar="RUN", help="the run to go back to")
    rollback.add_argument("--warehouse", required=True, metavar="WH", help="folder (or URI) of the tables")
    rollback.set_defaults(run=commands.run_rollback)

    vacuum = subcommands.add_parser("vacuum", help="delete the files that none of the newest N runs reads")
    vacuum.add_argument("--keep", type=int, required=True, metavar="N", help="runs whose files are kept (>= 1)")
    vacuum.add_argument("--dry-run", action="store_true", help="list the files it would delete (path, bytes); "
                        "delete nothing")
    vacuum.add_argument("--warehouse", required=True, metavar="WH", help="folder (or URI) of the tables")
    vacuum.set_defaults(run=commands.run_vacuum)
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
