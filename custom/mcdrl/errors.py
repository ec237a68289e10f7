"""Error types for bad input, and a CLI hook that prints them as one clear line.

``python -m monai.bundle run`` wraps every exception raised while a config is instantiated in several layers of
``RuntimeError("Failed to instantiate component ...")``. For our own input errors (a missing weights file, an
unknown CLIP name, a mismatched dictionary, a missing datalist file) that is traceback soup: the message that
names the thing and the fix is buried in the middle. :func:`install_cli_hook` (installed when :mod:`mcdrl` is
imported by a ``monai.bundle`` or ``mcdrl`` command line) prints just ``mcdrl: error: <message>`` and exits 2
when the root cause is an :class:`MCDRLError`; any other exception keeps its full traceback, and so does ours
with ``MCDRL_TRACEBACK=1``.
"""

from __future__ import annotations

import os
import sys

__all__ = ["ConfigError", "InputFileError", "MCDRLError", "MissingDependencyError", "dropped_none_overrides", "install_cli_hook",
           "warn_dropped_none"]


class MCDRLError(Exception):
    """Base of the errors that describe bad input and say how to fix it."""


class ConfigError(MCDRLError, ValueError):
    """A config value is wrong or inconsistent (unknown CLIP name, mismatched dictionary, ...)."""


class InputFileError(MCDRLError, FileNotFoundError):
    """A file named by the config or a datalist is missing."""


class MissingDependencyError(MCDRLError, ImportError):
    """An optional package a chosen option needs is not installed; the message says what to install."""


def _root_mcdrl_error(exc: BaseException | None) -> MCDRLError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MCDRLError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def install_cli_hook() -> None:
    """Print our input errors as one line on an uncaught exception (idempotent)."""
    if getattr(sys.excepthook, "_mcdrl", False) or os.environ.get("MCDRL_TRACEBACK"):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        err = _root_mcdrl_error(exc)
        if err is None:
            return previous(exc_type, exc, tb)
        sys.stderr.write(f"mcdrl: error: {err}\n(set MCDRL_TRACEBACK=1 for the full traceback)\n")
        sys.stderr.flush()
        os._exit(2)

    hook._mcdrl = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def dropped_none_overrides(argv: list[str]) -> list[str]:
    """The ``--key None`` (or ``--key=None``) overrides of a ``python -m monai.bundle`` command line.

    MONAI's bundle CLI parses ``None`` as Python's None and then drops every None-valued argument (``_update_args(...,
    ignore_none=True)``), so the config's own value is used, silently. ``'$None'`` (an expression) sets None.
    """
    out = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or len(arg) <= 2:
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if value == "None":
            out.append(key)
    return out


def warn_dropped_none(argv: list[str] | None = None) -> list[str]:
    """Say, on stderr, which ``--key None`` overrides MONAI's bundle CLI drops and how to give None (``'$None'``).

    Returns the dropped keys.
    """
    keys = dropped_none_overrides(list(sys.argv if argv is None else argv))
    for key in keys:
        sys.stderr.write(f"mcdrl: warning: --{key} None is dropped by MONAI's bundle CLI (it ignores None values), so the "
                         f"config's own {key} is used; to set None, pass --{key} '$None'\n")
    sys.stderr.flush()
    return keys
