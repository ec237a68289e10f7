"""``python -m mcdrl.evaluation.loso``: see :mod:`mcdrl.evaluation.loso.cli` (``--help`` lists the options)."""

import os
import sys

# OpenMP reads these once, when torch loads: a 2-core machine shared with other jobs runs much slower with spinning threads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mcdrl.errors import install_cli_hook  # noqa: E402

install_cli_hook()

from .cli import main  # noqa: E402

sys.exit(main())
