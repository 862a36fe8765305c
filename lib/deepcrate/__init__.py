"""deepcrate: content-based music recommendations as Spark batch jobs."""
from deepcrate.errors import DeepcrateError

__version__ = "0.1.0"
__all__ = ["DeepcrateError", "__version__"]
