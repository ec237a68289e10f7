"""Where the bundle lives, so configs work from any working directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["default_bundle_root"]


def default_bundle_root() -> str:
    """The bundle folder of the config being run, as an absolute path.

    MONAI's ConfigParser cannot see its own file name, and a ``"bundle_root": "."`` only works from inside the
    bundle. So: the folder above the ``configs/`` folder of the first ``--config_file`` on the command line (what
    ``python -m monai.bundle run`` and torchrun receive); else ``$MCDRL_BUNDLE_ROOT``; else the ``bundle/`` folder
    beside this package in a source checkout; else the current directory. ``--bundle_root`` always overrides
    (MONAI Label sets it).
    """
    argv = sys.argv
    for i, arg in enumerate(argv):
        value = None
        if arg in ("--config_file", "--config-file") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(("--config_file=", "--config-file=")):
            value = arg.split("=", 1)[1]
        if value:
            first = value.strip("[]()'\" ").split(",")[0].strip("'\" ")
            if first.endswith((".json", ".yaml", ".yml")):
                return str(Path(first).resolve().parent.parent)
    if os.environ.get("MCDRL_BUNDLE_ROOT"):
        return str(Path(os.environ["MCDRL_BUNDLE_ROOT"]).resolve())
    checkout = Path(__file__).resolve().parents[2] / "bundle"
    if (checkout / "configs" / "metadata.json").is_file():
        return str(checkout)
    return str(Path.cwd())
