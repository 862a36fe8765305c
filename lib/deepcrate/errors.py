"""The one exception root of deepcrate, and its precise children.

Anything a user can cause (a bad flag, a missing folder, a corrupt table) raises a
:class:`DeepcrateError`; the CLI prints its message without a traceback.
"""
import re


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name when empty): library errors can run to pages."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def spark_error_line(exc: BaseException) -> str:
    """What failed, in one line, from a Spark error: its ``[ERROR_CLASS] message`` wherever it sits
    in the Java chain (a task's failure is wrapped in "Job aborted ..."), without the SQLSTATE;
    never py4j's "An error occurred while calling o123.method"."""
    text = str(exc)
    if "java.lang.StackOverflowError" in text:
        return "the statement is nested too deeply for Spark (java.lang.StackOverflowError)"
    found = re.search(r"\[[A-Z][A-Z0-9_.]+\] [^\n]*", text)
    if found:
        return re.sub(r"\s*SQLSTATE: \w+.*$", "", found.group(0)).strip()
    lines = [line.strip().removeprefix(": ").strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("An error occurred while calling")]
    return lines[0] if lines else type(exc).__name__


class DeepcrateError(Exception):
    """Root of every error deepcrate raises on purpose."""


class ConfigError(DeepcrateError):
    """A configuration file or ``--set`` override is invalid."""


class InputError(DeepcrateError):
    """An input the user pointed at (folder, manifest, file) cannot be used."""


class WarehouseError(DeepcrateError):
    """A warehouse folder or one of its tables is missing or inconsistent."""


class AudioError(DeepcrateError):
    """One audio file cannot become spectrogram slices.

    Parameters
    ----------
    reason : str
        A stable reason code, as stored in the ``rejects`` table.
    message : str
        A sentence naming the file and what is wrong with it.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TrainingError(DeepcrateError):
    """The slices cannot train a classifier (no train split, one genre, ...)."""


class ModelError(DeepcrateError):
    """A model folder is missing, incomplete or does not fit the data it is given."""


class SearchIndexError(WarehouseError):
    """The warehouse's search index is unreadable or does not match its song embeddings."""
