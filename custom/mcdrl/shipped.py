"""The shipped binaries (weights, dictionary artifact) and their sha256 check against ``bundle/large_files.yml``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from .errors import InputFileError

__all__ = ["REGENERATE", "read_manifest", "sha256_file", "verify_shipped"]

REGENERATE = "make regenerate  (pretrains the demo CLIP, builds the dictionary, trains the demo model; see bundle/docs/README.md)"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle_root: str | os.PathLike) -> list[dict]:
    """Entries ``{path, url, hash_val, hash_type}`` of ``<bundle_root>/large_files.yml`` (empty if there is none)."""
    manifest = Path(bundle_root) / "large_files.yml"
    if not manifest.is_file():
        return []
    return list((yaml.safe_load(manifest.read_text()) or {}).get("large_files", []))


def verify_shipped(bundle_root: str | os.PathLike, paths: list[str] | None = None) -> list[Path]:
    """Check every (or the named) shipped file against its sha256 before anything loads it.

    Returns:
        the verified paths.

    Raises:
        InputFileError: a file is missing or its sha256 differs, naming the file and the regeneration command.
    """
    root = Path(bundle_root)
    verified = []
    for entry in read_manifest(root):
        if paths is not None and entry["path"] not in paths:
            continue
        path = root / entry["path"]
        if not path.is_file():
            raise InputFileError(f"shipped file missing: {path}. Restore it from git (git checkout -- {entry['path']}) or regenerate it: {REGENERATE}")
        got = sha256_file(path)
        if got != entry["hash_val"]:
            raise InputFileError(f"shipped file {path} is corrupt or was replaced (sha256 {got[:12]}..., expected {entry['hash_val'][:12]}...). Restore it from git or regenerate it: {REGENERATE}")
        verified.append(path)
    return verified
