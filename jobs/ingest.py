"""spark-submit entry point: ``spark-submit jobs/ingest.py --audio DIR --warehouse WH ...``.

The same code as ``deepcrate ingest``; the master and executors come from spark-submit.
"""
import sys

from deepcrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
