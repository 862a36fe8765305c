"""spark-submit entry point: ``spark-submit jobs/index.py --warehouse WH ...``.

The same code as ``deepcrate index``: the FAISS index is built in the driver, which
needs memory for every song vector (1M songs x 128 floats = 512 MB) plus the index.
"""
import sys

from deepcrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
