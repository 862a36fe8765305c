"""deepcrate: content-based music recommendations as Spark batch jobs."""
import os

from deepcrate.errors import DeepcrateError

# The one place TensorFlow's C++ log level is set, before any process (driver, executor's Python
# worker, notebook) imports it: its INFO lines drown the progress. A value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
__all__ = ["DeepcrateError", "__version__"]
