"""spark-submit entry point: ``spark-submit jobs/evaluate.py --warehouse WH [--json metrics.json]``.

The same code as ``deepcrate evaluate``: the MFCC and timbre baselines' features are
computed on the executors; the neighbours and metrics in the driver.
"""
import sys

from deepcrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
