"""Where the bundle lives, so configs work from any working directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["default_bundle_root", "default_data_dir", "is_source_checkout", "portable_command", "repo_relative"]


def default_bundle_root() -> str:
    """The bundle folder of the config being run, as an absolute path.

    MONAI's ConfigParser cannot see its own file name, and a ``"bundle_root": "."`` only works from inside the
    bundle. So: the folder above the ``configs/`` folder of the first ``--config_file`` on the command line (what
    ``python -m monai.bundle run`` and torchrun receive); else ``$MCDRL_BUNDLE_ROOT``; else the bundle this package
    was packaged into (``<bundle>/scripts/mcdrl``); else the ``bundle/`` folder beside this package in a source
    checkout; else the current directory. ``--bundle_root`` always overrides (MONAI Label sets it).
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
    here = Path(__file__).resolve().parent
    packaged = here.parents[1]
    if here.parent.name == "scripts" and (packaged / "configs" / "metadata.json").is_file():
        return str(packaged)
    checkout = here.parents[1] / "bundle"
    if (checkout / "configs" / "metadata.json").is_file():
        return str(checkout)
    return str(Path.cwd())


def is_source_checkout(bundle_root: str | os.PathLike) -> bool:
    """Whether ``bundle_root`` is the ``bundle/`` folder of a source checkout (``custom/mcdrl`` beside it), as opposed
    to a packaged bundle (``python -m mcdrl.deploy.package``), which holds its own copy of the package in ``scripts/``."""
    return (Path(bundle_root).parent / "custom" / "mcdrl" / "__init__.py").is_file()


def default_data_dir(bundle_root: str | os.PathLike, name: str) -> str:
    """The configs' default ``dataset_dir``: ``data/<name>`` beside the bundle folder in a source checkout (the
    repository's ``data/``, where the Makefile writes the synthetic world), else ``<bundle_root>/data/<name>``, inside a
    packaged bundle, which never refers to a folder outside itself. ``--dataset_dir`` overrides either.

    Example:
        >>> default_data_dir("/opt/bundles/mcdrl_endoscopy_segmentation", "synthetic")
        '/opt/bundles/mcdrl_endoscopy_segmentation/data/synthetic'
    """
    root = Path(bundle_root)
    return str((root.parent if is_source_checkout(root) else root) / "data" / name)


def repo_relative(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` relative to the repository (the folder above the bundle, or ``root``), for reports: results never carry
    a machine's absolute paths. A path outside the repository is reduced to its file name."""
    root = Path(root) if root is not None else Path(default_bundle_root()).parent
    p = Path(path).resolve()
    try:
        return p.relative_to(root.resolve()).as_posix()
    except ValueError:
        return p.name


def portable_command(prog: str, args: list[str], root: str | os.PathLike | None = None) -> str:
    """A command line for a report, with every absolute path in ``args`` (also ``--key=/path``) made repository-relative."""
    import shlex

    def one(a: str) -> str:
        if a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            return f"{k}={one(v)}"
        return repo_relative(a, root) if os.path.isabs(a) else a

    return " ".join([prog] + [shlex.quote(one(a)) for a in args])
