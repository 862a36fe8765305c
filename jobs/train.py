"""spark-submit entry point: ``spark-submit jobs/train.py --warehouse WH [--resume] ...``.

The same code as ``deepcrate train``. Training runs in the driver, so submit it with
the driver on the GPU node (``--deploy-mode client`` from that node).
"""
import sys

from deepcrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
