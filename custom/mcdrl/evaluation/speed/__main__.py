"""``python -m mcdrl.evaluation.speed [--quick]``: see :mod:`mcdrl.evaluation.speed.runner` (``--help``)."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .runner import main  # noqa: E402

sys.exit(main())
