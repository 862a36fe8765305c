"""The one exception root of deepcrate, and its precise children.

Anything a user can cause (a bad flag, a missing folder, a corrupt table) raises a
:class:`DeepcrateError`; the CLI prints its message without a traceback.
"""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name when empty): library errors can run to pages."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
