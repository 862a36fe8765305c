"""``python -m deepcrate.cli``: the ``deepcrate`` command."""
import sys

from deepcrate.cli import main

sys.exit(main())
