"""spark-submit entry point: ``spark-submit jobs/rebuild.py --audio DIR --warehouse WH [--model M] ...``.

The same code as ``deepcrate rebuild``: ingest and embed run on the executors,
training and the index in the driver. See the README's "On a cluster" for shipping
the code and its dependencies to executors that have nothing installed.
"""
import sys

from deepcrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["rebuild", *sys.argv[1:]]))
