"""spark-submit entry point: ``spark-submit jobs/acquire.py --manifest URLS.csv --audio DIR --warehouse WH``.

The same code as ``deepcrate acquire``. With ``--set acquire.distributed=true`` the
downloads run on the executors, which must see DIR at the same path.
"""
import sys

from deepcrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["acquire", *sys.argv[1:]]))
