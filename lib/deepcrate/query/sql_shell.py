"""``deepcrate sql`` without a statement: a shell over the warehouse's tables, as sqlite3 and psql are.

One Spark session and one pinned run for the whole sitting; statements may span lines and
end with ``;``; dot commands (``.tables``, ``.schema TABLE``, ``.format FMT``) as in sqlite3;
every statement passes the same read-only check as a one-shot query. Ctrl-C cancels the
running statement (its Spark jobs), not the shell. Piped input (``deepcrate sql < q.sql``)
runs each statement in turn and goes on after a failed one; the exit status says whether
any failed.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Iterator
from typing import TextIO

from deepcrate.errors import DeepcrateError
from deepcrate.query.output import FORMATS
from deepcrate.query.sql import QuerySession

PROMPT, MORE = "deepcrate> ", "      ...> "
HISTORY = "~/.deepcrate_sql_history"
HELP = """.tables          the warehouse's tables
.schema TABLE    a table's columns and types
.format FORMAT   table, csv or json
.help            this text
.quit            leave (or Ctrl-D)
Statements end with ';' and may span lines. Ctrl-C cancels the running statement."""


class StatementBuffer:
    """Lines in, whole statements out: a ``;`` ends a statement unless it is inside quotes
    ('...', "...", `...`) or a comment (-- to the line's end, /* ... */)."""

    def __init__(self) -> None:
        self._text = ""

    @property
    def pending(self) -> bool:
        """Whether part of a statement waits for more lines (comments alone do not count)."""
        return not re.fullmatch(r"(\s+|--[^\n]*(\n|$)|/\*.*?\*/)*", self._text, re.DOTALL)

    def clear(self) -> None:
        self._text = ""

    def feed(self, line: str) -> list[str]:
        self._text += line if line.endswith("\n") else line + "\n"
        statements, start, quote, i, text = [], 0, None, 0, self._text
        while i < len(text):
            char, pair = text[i], text[i:i + 2]
            if quote == "--":
                quote = None if char == "\n" else quote
            elif quote == "/*":
                quote, i = (None, i + 1) if pair == "*/" else (quote, i)
            elif quote:
                quote = None if char == quote else quote
            elif pair in ("--", "/*"):
                quote, i = pair, i + 1
            elif char in "'\"`":
                quote = char
            elif char == ";":
                statements.append(text[start:i].strip())
                start = i + 1
            i += 1
        self._text = text[start:]
        return [s for s in statements if s]


class Shell:
    """One sitting: reads statements and dot commands, answers each on ``out``, errors on ``err``."""

    def __init__(self, session: QuerySession, *, fmt: str, out: TextIO, err: TextIO) -> None:
        self.session = session
        self.fmt = fmt
        self.out = out
        self.err = err
        self.failed = 0

    def run_lines(self, lines: Iterator[str]) -> None:
        """Run piped input to its end."""
        buffer = StatementBuffer()
        for line in lines:
            self._take(line, buffer)
        if buffer.pending:
            self._error("the input ends inside a statement (no closing ';'): it was not run")

    def run_interactive(self) -> None:
        """Prompt until Ctrl-D or .quit, with readline editing and history."""
        buffer = StatementBuffer()
        with _readline_history():
            while True:
                try:
                    line = input(MORE if buffer.pending else PROMPT)
                except EOFError:
                    self.out.write("\n")
                    return
                except KeyboardInterrupt:  # at the prompt: drop the half-typed statement
                    buffer.clear()
                    self.out.write("\n")
                    continue
                if not self._take(line, buffer):
                    return

    def _take(self, line: str, buffer: StatementBuffer) -> bool:
        """One line of input; False when it asks to leave."""
        if not buffer.pending and line.strip().startswith("."):
            return self._command(line.strip())
        for statement in buffer.feed(line):
            self._statement(statement)
        return True

    def _statement(self, statement: str) -> None:
        try:
            self.session.run(statement, out=self.out, fmt=self.fmt)
        except DeepcrateError as exc:
            self._error(str(exc))
        except KeyboardInterrupt:
            self._error("cancelled")
        self.out.flush()

    def _command(self, line: str) -> bool:
        name, _, argument = line.partition(" ")
        argument = argument.strip().rstrip(";")
        if name in (".quit", ".exit", ".q"):
            return False
        if name == ".help":
            self.out.write(HELP + "\n")
        elif name == ".tables":
            self.out.write("".join(f"{table}\n" for table in self.session.tables))
        elif name == ".schema":
            if argument.lower() not in self.session.tables:
                self._error(f".schema: no table {argument!r} (tables: {', '.join(self.session.tables)})")
            else:
                self._statement(f"DESCRIBE TABLE `{argument.lower()}`")
        elif name == ".format":
            if argument not in FORMATS:
                self._error(f".format: one of {', '.join(FORMATS)}, got {argument!r}")
            else:
                self.fmt = argument
        else:
            self._error(f"unknown command {name} (.help lists them)")
        return True

    def _error(self, message: str) -> None:
        self.failed += 1
        self.out.flush()
        self.err.write(f"error: {message}\n")
        self.err.flush()


def run_shell(session: QuerySession, *, fmt: str, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout,
              err: TextIO = sys.stderr) -> int:
    """Run a sitting on ``stdin`` (interactive when it is a terminal); returns 0, or 2 when a
    statement or command failed."""
    shell = Shell(session, fmt=fmt, out=out, err=err)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Spark's own would raise inside py4j
    try:
        if stdin.isatty():
            out.write(f"deepcrate sql: {len(session.tables)} tables; .help for help, Ctrl-D to leave\n")
            shell.run_interactive()
        else:
            shell.run_lines(iter(stdin))
    finally:
        signal.signal(signal.SIGINT, previous)
    return 2 if shell.failed and not stdin.isatty() else 0


@contextlib.contextmanager
def _readline_history() -> Iterator[None]:
    try:
        import readline
    except ImportError:  # no readline (Windows): plain input()
        yield
        return
    path = os.path.expanduser(HISTORY)
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    try:
        yield
    finally:
        readline.set_history_length(1000)
        with contextlib.suppress(OSError):
            readline.write_history_file(path)
