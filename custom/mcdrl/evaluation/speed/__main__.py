"""``python -m mcdrl.evaluation.speed``: see :mod:`mcdrl.evaluation.speed.cli` (``--help`` lists the options)."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .cli import main  # noqa: E402

sys.exit(main())
