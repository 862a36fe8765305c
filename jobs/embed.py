"""spark-submit entry point: ``spark-submit jobs/embed.py --warehouse WH [--model VERSION] ...``.

The same code as ``deepcrate embed``: the executors embed the slices with the model
the driver broadcasts to them.
"""
import sys

from deepcrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
