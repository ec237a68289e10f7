"""Small shared helpers: atomic file writes, flag parsing, lazy package exports."""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from pathlib import Path

__all__ = ["as_bool", "atomic_path", "atomic_torch_save", "lazy_exports"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error delete it.

    Nothing half-written is ever visible under the final name.

    Example:
        >>> with atomic_path("out/mask.png") as tmp:
        ...     image.save(tmp, format="PNG")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file the permissions a plain open() would
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_path`, fsynced before the rename."""
    import torch

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def as_bool(value, name: str = "value") -> bool:
    """``True``/``False``, 0/1 or their usual spellings (configs, CLIs and clients may send strings) -> bool.

    Raises:
        ValueError: naming ``name`` and the value, for anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` (PEP 562) for a wing's ``__init__``: submodules and the names in ``exports``
    (name -> submodule) are imported on first use, so ``import mcdrl.networks.prompts`` does not load open_clip
    and configs can write ``$mcdrl.engines.training.f(...)`` after a bare ``$import mcdrl``.

    Example:
        >>> __getattr__ = lazy_exports(__name__, {"MCDRLNet": "mcdrlnet"})
    """

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{package}.{name}":
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
            raise

    return __getattr__
