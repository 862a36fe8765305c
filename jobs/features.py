"""spark-submit entry point: ``spark-submit jobs/features.py --warehouse WH [--force] ...``.

The same code as ``deepcrate features``: the executors compute the frozen pretrained
networks' features of every slice that has none yet (OpenVINO; see README).
"""
import sys

from deepcrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
