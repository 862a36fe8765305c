"""deepcrate: content-based music recommendations as Spark batch jobs."""
import os

from deepcrate.errors import DeepcrateError

# The one place TensorFlow's C++ log level is set, before any process (driver, executor's Python
# worker, notebook) imports it: its INFO and WARNING lines (absl's "All log messages before
# absl::InitializeLog()", memory notices from every worker) drown the progress; errors still
# show. A value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
__all__ = ["DeepcrateError", "__version__"]
