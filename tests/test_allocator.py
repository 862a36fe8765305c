"""The driver's allocator setting: an array of a few MB goes back to the system when freed."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")]

AFTER_FREEING = """
import re, sys
import numpy as np
def anonymous_mb():
    return int(re.search(r"RssAnon:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
if sys.argv[1] == "set":
    from deepcrate.cli.allocator import return_large_arrays
    assert return_large_arrays()
before = anonymous_mb()
large = np.ones(20 * 2**20 // 8); del large  # freed: by default glibc now serves up to 20 MB from its arena
middle = np.ones(10 * 2**20 // 8)
after = np.ones(1000)  # allocated above it, so the arena cannot give it back by trimming its top
del middle
print(anonymous_mb() - before)
"""


def _kept_mb(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", AFTER_FREEING, mode], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


def test_a_freed_array_of_a_few_mb_leaves_the_process_once_the_threshold_is_fixed():
    assert _kept_mb("default") > 9  # glibc's own rule keeps the 10 MB: what the setting is for
    assert _kept_mb("set") < 2


def test_every_deepcrate_command_fixes_it(tmp_path, monkeypatch):
    from deepcrate import cli

    calls = []
    monkeypatch.setattr(cli, "return_large_arrays", lambda: calls.append("set"))
    assert cli.main(["history", "--warehouse", str(tmp_path / "none")]) == 2  # no warehouse there: one line
    assert calls == ["set"]
