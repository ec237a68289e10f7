"""Package the bundle for sharing: a folder that runs on its own, and a zip of it.

    python -m mcdrl.deploy.package [--out dist] [--name mcdrl_endoscopy_segmentation]   # make bundle

writes ``<out>/<name>/`` and ``<out>/<name>.zip``. The folder is the repository's ``bundle/`` (``configs/``,
``models/``, ``docs/``, ``LICENSE``, ``large_files.yml``, ``scripts/__init__.py``) without run outputs, plus this
package copied to ``scripts/mcdrl``: ``monai.bundle``, the model zoo's checks and MONAI Label put the bundle folder on
``sys.path``, and the configs' ``$import scripts`` puts ``scripts/`` there too, so their ``mcdrl....`` targets resolve
to the bundle's own copy. The repository stays the one source of the code; nothing here is kept in git.

Before anything is written, every shipped binary is checked against its sha256 in ``large_files.yml``. Every JSON file
is written as the model zoo's pre-commit formats it (:func:`format_json`). The folder and the zip are built under
temporary names and renamed into place, so an interrupted run never leaves a half-written bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from mcdrl.deploy.shipped import verify_shipped
from mcdrl.errors import ConfigError, InputFileError
from mcdrl.paths import is_source_checkout

__all__ = ["BUNDLE_NAME", "CONTENTS", "check_self_contained", "format_json", "json_format_errors", "package_bundle"]

#: the folder name: MONAI Label infers the task type from it, so it must contain "segmentation"
BUNDLE_NAME = "mcdrl_endoscopy_segmentation"
#: what of ``bundle/`` goes into the package (everything else there is a run output or local state)
CONTENTS = ("configs", "models", "docs", "scripts", "LICENSE", "large_files.yml")
#: never packaged: run outputs, caches, MONAI Label's own files, exports a user makes locally
IGNORE = ("runs", "eval", "__pycache__", "*.pyc", ".ipynb_checkpoints", "monailabel_train.json", "previous", "*.ts", "*.onnx", "verify_model.ts")
#: the zip's fixed timestamp, so that packaging the same tree twice gives the same bytes
ZIP_DATE = (2026, 1, 1, 0, 0, 0)

_PACKAGE = Path(__file__).resolve().parents[1]


def format_json(text: str) -> str:
    """``text`` as the model zoo's pre-commit hook writes it (``pretty-format-json --autofix --no-sort-keys
    --indent=4``): key order kept, 4-space indent, ``", "``/``": "`` separators, non-ASCII escaped (``\\uXXXX``), one
    final newline. A duplicated key keeps its first position and its last value, as the hook's ``json.loads`` does.

    Example:
        >>> format_json('{"b": 1, "a": [1,2], "c": "\\u00e9"}')
        '{\\n    "b": 1,\\n    "a": [\\n        1,\\n        2\\n    ],\\n    "c": "\\\\u00e9"\\n}\\n'
    """
    return json.dumps(json.loads(text), indent=4, ensure_ascii=True, separators=(",", ": ")) + "\n"


def json_format_errors(root: str | os.PathLike) -> list[str]:
    """The ``*.json`` files under ``root`` (relative paths) that the zoo's pre-commit would rewrite or reject."""
    bad = []
    for path in sorted(Path(root).rglob("*.json")):
        text = path.read_text(encoding="utf-8")
        try:
            ok = format_json(text) == text
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        if not ok:
            bad.append(path.relative_to(root).as_posix())
    return bad


def check_self_contained(bundle: str | os.PathLike) -> None:
    """Raise if the packaged configs refer outside the bundle folder (``..`` in a path) or the bundle lacks its code.

    Raises:
        ConfigError: naming the file and the offending text.
    """
    root = Path(bundle)
    if not (root / "scripts" / "mcdrl" / "__init__.py").is_file():
        raise ConfigError(f"{root}: scripts/mcdrl is missing; the configs' mcdrl targets would not resolve")
    for path in sorted((root / "configs").glob("*.json")):
        text = path.read_text()
        for marker in ("/../", "'../", '"../', "custom/"):
            if marker in text:
                raise ConfigError(f"{path}: refers outside the bundle ({marker!r}); a packaged bundle must run on its own")
    pts = sorted(p.name for p in (root / "models").glob("*.pt"))
    if pts != ["model.pt"]:
        raise ConfigError(f"{root / 'models'}: exactly one *.pt (model.pt) must ship, MONAI Label lists each as a model; found {pts}")


def _write_zip(folder: Path, zip_path: Path) -> None:
    """A reproducible zip of ``folder`` (entries under its name, sorted, fixed timestamps) written atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".tmp", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(f"{folder.name}/{path.relative_to(folder).as_posix()}", date_time=ZIP_DATE)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
        os.chmod(tmp, 0o644)  # mkstemp creates it 0600; the zip is for sharing
        os.replace(tmp, zip_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def package_bundle(out: str | os.PathLike = "dist", name: str = BUNDLE_NAME, source: str | os.PathLike | None = None,
                   package: str | os.PathLike = _PACKAGE, make_zip: bool = True) -> Path:
    """Write ``<out>/<name>/`` (and ``<out>/<name>.zip``): ``source`` (a checkout's ``bundle/``) plus ``package``
    copied to ``scripts/mcdrl``, every JSON file in the zoo's format.

    Args:
        out: the folder to write into (created).
        name: the bundle folder's name; it must contain ``segmentation`` (MONAI Label reads the task from it).
        source: the bundle folder to package; default: the ``bundle/`` of the source checkout this package is in.
        package: the ``mcdrl`` package folder to copy in.
        make_zip: also write the zip.

    Returns:
        the bundle folder.

    Raises:
        InputFileError: no source bundle, or a shipped binary missing or differing from ``large_files.yml``.
        ConfigError: a bad name, or the result is not self-contained (see :func:`check_self_contained`).
    """
    if "segmentation" not in name:
        raise ConfigError(f"bundle name {name!r} must contain 'segmentation' (MONAI Label infers the task type from it)")
    if source is None:
        source = _PACKAGE.parents[1] / "bundle"
        if not is_source_checkout(source):
            raise InputFileError(f"no source bundle: {source} is not the bundle/ of a source checkout; pass source=")
    source, package = Path(source), Path(package)
    if not (source / "configs" / "metadata.json").is_file():
        raise InputFileError(f"{source} is not a bundle folder (configs/metadata.json is missing)")
    verify_shipped(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        for item in CONTENTS:
            src = source / item
            if src.is_dir():
                shutil.copytree(src, tmp / item, ignore=shutil.ignore_patterns(*IGNORE))
            elif src.is_file():
                shutil.copy2(src, tmp / item)
            else:
                raise InputFileError(f"{src} is missing; a bundle ships {', '.join(CONTENTS)}")
        shutil.copytree(package, tmp / "scripts" / "mcdrl", ignore=shutil.ignore_patterns(*IGNORE))
        for path in tmp.rglob("*.json"):
            path.write_text(format_json(path.read_text(encoding="utf-8")), encoding="utf-8")
        check_self_contained(tmp)
        tmp.chmod(0o755)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=out))
            os.replace(final, old / name)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if make_zip:
        _write_zip(final, out / f"{name}.zip")
    return final


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mcdrl.deploy.package", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="dist", help="folder to write <name>/ and <name>.zip into (default: dist)")
    p.add_argument("--name", default=BUNDLE_NAME, help=f"bundle folder name (default: {BUNDLE_NAME})")
    p.add_argument("--no_zip", action="store_true", help="write the folder only")
    args = p.parse_args(argv)
    folder = package_bundle(args.out, args.name, make_zip=not args.no_zip)
    files = [f for f in folder.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    print(f"{folder}: {len(files)} files, {size / 1e6:.1f} MB")
    if not args.no_zip:
        zip_path = folder.parent / f"{folder.name}.zip"
        print(f"{zip_path}: {zip_path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
