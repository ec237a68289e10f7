"""The shipped binaries (weights, dictionary artifact) and their sha256 check against ``bundle/large_files.yml``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from mcdrl.errors import InputFileError

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


#: the files the bundle ships (relative to the bundle root): all that inference needs, plus the demo CLIP
SHIPPED_FILES = ["models/model.pt", "models/confounder_dictionary.safetensors", "models/clip/mcdrl-demo-vit.safetensors"]


def write_manifest(bundle_root: str | os.PathLike, files: list[str] = SHIPPED_FILES) -> Path:
    """(Re)write ``large_files.yml`` with the sha256 of every shipped file that exists."""
    from mcdrl.utils import atomic_path

    root = Path(bundle_root)
    entries = [{"path": f, "url": "", "hash_val": sha256_file(root / f), "hash_type": "sha256"} for f in files if (root / f).is_file()]
    header = "# Shipped binaries and their sha256. url is empty: they live in git; `make regenerate` rebuilds them.\n"
    with atomic_path(root / "large_files.yml") as tmp:
        Path(tmp).write_text(header + yaml.safe_dump({"large_files": entries}, sort_keys=False))
    return root / "large_files.yml"


if __name__ == "__main__":
    import sys

    from mcdrl.paths import default_bundle_root

    target = sys.argv[1] if len(sys.argv) > 1 else default_bundle_root()
    print(write_manifest(target).read_text())
