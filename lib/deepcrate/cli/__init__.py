"""The ``deepcrate`` command: one subcommand per pipeline stage and reader.

:mod:`.parser` (the arguments of every subcommand) and :mod:`.commands` (what each runs).
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from deepcrate.cli.allocator import return_large_arrays
from deepcrate.cli.commands import READERS
from deepcrate.cli.parser import build_parser
from deepcrate.errors import DeepcrateError

logger = logging.getLogger("deepcrate")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, reader=args.command in READERS)
    return_large_arrays()
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


def _setup_logging(verbose: bool, *, reader: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if reader else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_py4j_retry)
    for noisy in ("py4j", "pyspark", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # py4j logs a traceback when Ctrl-C breaks a call it waits on; the user gets one line
        logging.getLogger("py4j").setLevel(logging.CRITICAL)


def _py4j_retry(record: logging.LogRecord) -> bool:
    """False for py4j's INFO traceback when it resends a command on a fresh connection (a
    pooled connection the JVM had closed; the call then succeeds): py4j logs it on the
    root logger, so the py4j logger's level does not reach it."""
    return not (record.levelno == logging.INFO and record.name == "root"
                and record.pathname.endswith(("py4j/java_gateway.py", "py4j/clientserver.py")))
