"""Entry point: ``python jobs/recommend.py --warehouse WH --song ID_OR_PATH_OR_TITLE [-k 10] ...``.

The same code as ``deepcrate recommend``. It needs no Spark cluster (pyarrow and FAISS
answer in a second or two), so it also runs as a plain script; spark-submit works too.
"""
import sys

from deepcrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["recommend", *sys.argv[1:]]))
