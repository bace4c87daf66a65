"""``python slow_cli.py SECONDS ARGS...``: the metamapper CLI, each checkpoint write pausing for
SECONDS after its weights are in the temporary folder (before the rename that publishes it).

The stop tests use it to make a signal land *during* a checkpoint write deterministically; the
code under test is the real ``metamapper.cli.main``.
"""

import sys
import time

import metamapper.checkpoint as checkpoint
from metamapper.cli import main

_save_weights = checkpoint._save_weights


def _slow_save_weights(blob, path):
    _save_weights(blob, path)
    time.sleep(float(sys.argv[1]))


checkpoint._save_weights = _slow_save_weights
sys.exit(main(sys.argv[2:]))
