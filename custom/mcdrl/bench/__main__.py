"""``python -m mcdrl.bench``: see :mod:`mcdrl.bench.cli` (``--help`` lists the options)."""

import os
import sys

# OpenMP reads its settings once, when torch loads it: set them before anything imports torch
_WAIT_POLICY_WAS_SET = "OMP_WAIT_POLICY" in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .cli import main  # noqa: E402

sys.exit(main(wait_policy_set_by_bench=not _WAIT_POLICY_WAS_SET))
