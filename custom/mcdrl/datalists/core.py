"""Shared machinery of the datalist builders: file listing, image/mask pairing, splits and atomic writing.

An *entry* is a plain dict ``{"image": Path, "label": Path, "site": str, "lesion_class": str}`` while it is
being built (absolute paths); :func:`write_datalist` turns the paths into strings relative to the datalist
file's folder (or absolute ones, see :func:`write_datalist`). Two private keys may ride along while building
and are never written: ``"_split"`` (a builder's fixed split, ``"test"``) and ``"_group"`` (entries sharing a
group, e.g. a patient, go to the same side of the validation split).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from mcdrl.networks.prompts import LESION_CLASSES, NO_LESION

logger = logging.getLogger("mcdrl.datalists")

#: File extensions taken for images and masks (case-insensitive). Everything else (csv, json, txt,
#: ``.DS_Store``, ``Thumbs.db``) is ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Suffixes stripped from a *mask* stem before it is matched with an image stem (case-insensitive),
#: e.g. PolypGen ``C1_100H0050_mask.jpg`` pairs with ``C1_100H0050.jpg``.
MASK_SUFFIXES = ("_mask", "-mask", "_gt", "-gt")

#: The split keys of every datalist, in file order.
SPLITS = ("training", "validation", "test")

_VALID_CLASSES = frozenset(LESION_CLASSES) | {NO_LESION}


class DatalistError(ValueError):
    """A dataset tree cannot be turned into a datalist (missing folder, no pairs, ambiguous names, ...)."""


class DatalistWarning(UserWarning):
    """Something was left out of a datalist (unpaired image or mask) or may be misread later."""


def warn(message: str) -> None:
    """Emit ``message`` both as a :class:`DatalistWarning` and on the ``mcdrl.datalists`` logger."""
    logger.warning(message)
    warnings.warn(message, DatalistWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------- listing
def list_images(folder: Path, *, recursive: bool = False, pattern: str | None = None) -> list[Path]:
    """Sorted image files of ``folder`` (hidden files skipped); ``pattern`` is a regex the stem must match."""
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    regex = re.compile(pattern, re.IGNORECASE) if pattern else None
    out = []
    for p in found:
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if regex is not None and not regex.fullmatch(p.stem):
            continue
        out.append(p)
    return sorted(out)


def first_dir(base: Path, candidates: Iterable[str]) -> Path | None:
    """The first ``base / c`` that is a directory, else None."""
    for c in candidates:
        if (base / c).is_dir():
            return base / c
    return None


# ----------------------------------------------------------------------------------------------- pairing
def stem_key(path: Path, *, prefix: str = "", suffixes: Sequence[str] = ()) -> str:
    """Matching key of a file: lower-case stem, minus one known suffix, minus ``prefix`` when a digit follows
    it (ETIS ``p12.tif`` -> ``12``), minus trailing ``_-.`` and spaces (PolypGen ``C3_EndoCV2021_00489_.jpg``)."""
    s = path.stem.lower()
    for suf in suffixes:
        if s.endswith(suf) and len(s) > len(suf):
            s = s[: -len(suf)]
            break
    if prefix and s.startswith(prefix) and s[len(prefix) : len(prefix) + 1].isdigit():
        s = s[len(prefix) :]
    return s.rstrip("_-. ")


def _index(files: Sequence[Path], key_fn, what: str, site: str, folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for f in files:
        k = key_fn(f)
        if k in index:
            raise DatalistError(
                f"site {site!r}: {what} files {index[k]} and {f} (under {folder}) have the same matching key "
                f"{k!r}; cannot pair them with masks unambiguously"
            )
        index[k] = f
    return index


def _examples(names: Iterable[str], n: int = 5) -> str:
    names = sorted(names)
    more = f", ... (+{len(names) - n})" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def pair_by_stem(
    image_dir: Path,
    mask_dir: Path,
    *,
    site: str,
    recursive: bool = False,
    image_pattern: str | None = None,
    mask_pattern: str | None = None,
    mask_prefix: str = "",
    mask_suffixes: Sequence[str] = MASK_SUFFIXES,
) -> list[tuple[Path, Path]]:
    """Pair every image of ``image_dir`` with the mask of ``mask_dir`` whose :func:`stem_key` is the same.

    Raises :class:`DatalistError` when the mask folder is missing or empty, naming the site and the folder
    it looked in; otherwise see :func:`pair_files`.
    """
    if not mask_dir.is_dir():
        raise DatalistError(f"site {site!r}: mask folder not found: looked in {mask_dir}")
    images = list_images(image_dir, recursive=recursive, pattern=image_pattern)
    masks = list_images(mask_dir, recursive=recursive, pattern=mask_pattern)
    if not images:
        raise DatalistError(f"site {site!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    if not masks:
        raise DatalistError(f"site {site!r}: no mask files found: looked in {mask_dir}")
    return pair_files(
        images, masks, site=site, image_dir=image_dir, mask_dir=mask_dir,
        mask_prefix=mask_prefix, mask_suffixes=mask_suffixes,
    )


def pair_files(
    images: Sequence[Path],
    masks: Sequence[Path],
    *,
    site: str,
    image_dir: Path,
    mask_dir: Path,
    mask_prefix: str = "",
    mask_suffixes: Sequence[str] = MASK_SUFFIXES,
) -> list[tuple[Path, Path]]:
    """Pair ``images`` and ``masks`` by :func:`stem_key` (sorted by key).

    Unpaired images or masks are reported with a :class:`DatalistWarning` (counts and examples), never
    paired by position. Raises :class:`DatalistError` when two files of one side share a key, or when no
    pair at all is found. ``image_dir`` / ``mask_dir`` are only named in messages.
    """
    img_idx = _index(images, stem_key, "image", site, image_dir)
    msk_idx = _index(
        masks, lambda p: stem_key(p, prefix=mask_prefix, suffixes=mask_suffixes), "mask", site, mask_dir
    )
    common = sorted(img_idx.keys() & msk_idx.keys())
    if not common:
        raise DatalistError(
            f"site {site!r}: none of the {len(images)} images in {image_dir} matches any of the {len(masks)} "
            f"masks in {mask_dir} by file name (images e.g. {_examples(p.name for p in images)}; "
            f"masks e.g. {_examples(p.name for p in masks)})"
        )
    lone_images = img_idx.keys() - msk_idx.keys()
    lone_masks = msk_idx.keys() - img_idx.keys()
    if lone_images:
        warn(
            f"site {site!r}: {len(lone_images)} of {len(images)} images in {image_dir} have no mask in {mask_dir} "
            f"and are left out: {_examples(img_idx[k].name for k in lone_images)}"
        )
    if lone_masks:
        warn(
            f"site {site!r}: {len(lone_masks)} of {len(masks)} masks in {mask_dir} have no image in {image_dir} "
            f"and are left out: {_examples(msk_idx[k].name for k in lone_masks)}"
        )
    return [(img_idx[k], msk_idx[k]) for k in common]


def make_entries(pairs: Iterable[tuple[Path, Path]], site: str, lesion_class: str, **extra) -> list[dict]:
    """Entries for ``pairs`` that all share one site and lesion class (plus private ``extra`` keys)."""
    check_lesion_class(lesion_class)
    return [
        {"image": img, "label": msk, "site": site, "lesion_class": lesion_class, **extra} for img, msk in pairs
    ]


def check_lesion_class(lesion_class: str) -> str:
    if lesion_class not in _VALID_CLASSES:
        raise DatalistError(f"lesion_class {lesion_class!r} is not one of {sorted(_VALID_CLASSES)}")
    return lesion_class


# ----------------------------------------------------------------------------------------------- masks
#: At most this many masks per site are opened by :func:`inspect_masks` (evenly spread over the sorted list).
MASKS_CHECKED_PER_SITE = 200


def _mask_summary(path: Path) -> tuple[str, int, int, bool]:
    """(PIL format, top of the value range (1, 255, 65535), number of distinct values, values other than 0 and top?)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        fmt = im.format or path.suffix.lstrip(".").upper()
        arr = np.asarray(im)
    arr = arr[..., 0] if arr.ndim == 3 else arr
    hi = float(arr.max()) if arr.size else 0.0
    top = 1 if hi <= 1 else 255 if hi <= 255 else 65535
    values = np.unique(arr)
    return fmt, top, int(values.size), bool(np.any((values != 0) & (values != top)))


def inspect_masks(entries: Sequence[dict], max_per_site: int = MASKS_CHECKED_PER_SITE) -> dict[str, dict]:
    """What the masks of each site are, as the bundle will read them.

    Per site: ``format`` (the file formats found, e.g. ``["JPEG"]``), ``value_range`` (``"0-1"``, ``"0-255"``,
    ``"0-65535"``), ``checked`` / ``masks`` (masks opened / in the site; at most ``max_per_site``, evenly spread),
    ``not_binary`` (checked masks with values other than 0 and the top of the range), ``jpeg_artifacts`` (True when
    any checked mask is not binary: the halo lossy compression leaves around edges, also in PNGs converted from JPEG)
    and ``threshold`` (what the bundle's ``label_threshold`` ``"auto"`` applies: ``"otsu"`` for JPEG files,
    ``"half_range"`` otherwise). A mask that cannot be opened is counted in ``unreadable`` (and named in a warning);
    the other masks are still checked.
    """
    by_site: dict[str, list[Path]] = defaultdict(list)
    for e in entries:
        by_site[e["site"]].append(Path(e["label"]))
    out: dict[str, dict] = {}
    for site in sorted(by_site):
        masks = sorted(by_site[site])
        step = max(1, -(-len(masks) // max(1, int(max_per_site))))
        chosen = masks[::step]
        formats, tops, not_binary, unreadable = set(), set(), 0, []
        for m in chosen:
            try:
                fmt, top, _, grey = _mask_summary(m)
            except (OSError, ValueError, SyntaxError) as err:
                why = "not an image file" if type(err).__name__ == "UnidentifiedImageError" else "corrupt or truncated"
                unreadable.append(f"{m.name} ({why})")
                continue
            formats.add(fmt)
            tops.add(top)
            not_binary += grey
        jpeg = any(f in ("JPEG", "MPO") for f in formats)
        report = {
            "format": sorted(formats), "value_range": "/".join(f"0-{t}" for t in sorted(tops)) or "?",
            "masks": len(masks), "checked": len(chosen) - len(unreadable), "not_binary": not_binary,
            "jpeg_artifacts": not_binary > 0, "threshold": "otsu" if jpeg else "half_range",
        }
        if unreadable:
            report["unreadable"] = len(unreadable)
            warn(f"site {site!r}: {len(unreadable)} mask(s) cannot be opened: {_examples(unreadable)}")
        if not_binary:
            warn(f"site {site!r}: {not_binary} of {report['checked']} checked {'/'.join(report['format'])} masks are not binary "
                 f"(compression halo around the edges); the bundle binarises them at "
                 f"{'Otsu' if jpeg else 'half the value range'} (label_threshold \"auto\"), never at > 0")
        out[site] = report
    return out


def describe_masks(report: dict) -> str:
    """One line for one site's :func:`inspect_masks` report, e.g. ``JPEG 0-255, 200 of 1000 checked, 200 not binary
    (JPEG artifacts) -> threshold otsu``."""
    art = f"{report['not_binary']} not binary (JPEG artifacts)" if report["jpeg_artifacts"] else "all binary"
    return (f"{'/'.join(report['format']) or '?'} {report['value_range']}, {report['checked']} of {report['masks']} checked, "
            f"{art} -> threshold {report['threshold']}")


# ----------------------------------------------------------------------------------------------- splits
def _sort_key(entry: dict) -> tuple[str, str]:
    return entry["site"], str(entry["image"])


def split_entries(
    entries: Sequence[dict], *, val_fraction: float = 0.1, seed: int = 0, holdout: Sequence[str] = ()
) -> dict[str, list[dict]]:
    """Assign ``entries`` to training / validation / test.

    ``test`` = entries a builder fixed to test (``_split == "test"``) plus every entry of a ``holdout`` site.
    ``validation`` is drawn from the remaining (training-site) entries only: per site, ``round(val_fraction *
    n)`` entries (whole ``_group``\\ s when entries carry one) chosen by ``random.Random(seed)`` from the
    sorted entries, so the split is reproducible; a site always keeps at least one training entry.
    Every list is sorted by (site, image path).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatalistError(f"val_fraction must be in [0, 1), got {val_fraction}")
    holdout = set(holdout)
    sites = {e["site"] for e in entries}
    unknown = holdout - sites
    if unknown:
        raise DatalistError(f"holdout site(s) {sorted(unknown)} not in this datalist; sites: {sorted(sites)}")
    out: dict[str, list[dict]] = {k: [] for k in SPLITS}
    by_site: dict[str, list[dict]] = defaultdict(list)
    for e in sorted(entries, key=_sort_key):
        if e.get("_split") == "test" or e["site"] in holdout:
            out["test"].append(e)
        else:
            by_site[e["site"]].append(e)
    if not any(by_site.values()) and entries:
        warn("no training entries: every site is held out / fixed to test")
    rng = random.Random(seed)
    for site in sorted(by_site):
        site_entries = by_site[site]
        groups: dict[str, list[dict]] = defaultdict(list)
        for e in site_entries:
            groups[str(e.get("_group", e["image"]))].append(e)
        if int(round(val_fraction * len(groups))) == 0 and int(round(val_fraction * len(site_entries))) > 0:
            # too few groups for the fraction (e.g. one folder holding every frame): split per entry
            groups = {str(e["image"]): [e] for e in site_entries}
        names = sorted(groups)
        n_val = int(round(val_fraction * len(names)))
        n_val = min(n_val, len(names) - 1)
        chosen = set(rng.sample(names, n_val)) if n_val > 0 else set()
        for name in names:
            out["validation" if name in chosen else "training"].extend(groups[name])
    for k in SPLITS:
        out[k].sort(key=_sort_key)
    return out


# ----------------------------------------------------------------------------------------------- writing
def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def serialise_entry(entry: dict, out_dir: Path, relative: bool) -> dict:
    """The JSON form of an entry: public keys only, paths relative to ``out_dir`` or absolute."""
    res = {}
    for key in ("image", "label"):
        p = Path(os.path.abspath(entry[key]))
        res[key] = os.path.relpath(p, out_dir).replace(os.sep, "/") if relative else p.as_posix()
    res["site"] = entry["site"]
    res["lesion_class"] = check_lesion_class(entry["lesion_class"])
    return res


def write_datalist(datalist: dict, out: Path, *, root: Path) -> Path:
    """Write ``datalist`` (split lists of entries with absolute paths) to ``out`` as JSON, atomically.

    Paths are written relative to ``out``'s folder when that folder lies inside ``root`` (so the dataset
    folder with its datalist can be moved as a whole), else absolute. Either way
    ``monai.data.load_decathlon_datalist(out, base_dir=out.parent)`` resolves them. The file is written
    to a temporary file in the same folder and moved into place with :func:`os.replace`.
    """
    out = Path(os.path.abspath(out))
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    relative = _is_within(out_dir, Path(os.path.abspath(root)))
    doc = {k: v for k, v in datalist.items() if k not in SPLITS}
    doc["paths"] = "relative to this file's folder" if relative else "absolute"
    for k in SPLITS:
        doc[k] = [serialise_entry(e, out_dir, relative) for e in datalist.get(k, [])]
    doc["numTraining"] = len(doc["training"])
    doc["numValidation"] = len(doc["validation"])
    doc["numTest"] = len(doc["test"])
    _warn_monai_collisions(doc, out_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def _warn_monai_collisions(doc: dict, out_dir: Path) -> None:
    """``load_decathlon_datalist`` joins *every* string value with ``base_dir`` when the result exists, so a
    ``site`` named like a folder next to the datalist would come back as a path: say so."""
    values = {e[k] for s in SPLITS for e in doc[s] for k in ("site", "lesion_class")}
    clash = sorted(v for v in values if (out_dir / v).exists())
    if clash:
        warn(
            f"{out_dir} contains entries named {clash}, which are also site/lesion_class values: "
            "monai.data.load_decathlon_datalist would turn those values into paths. Write the datalist to "
            "another folder (--out) or read it with mcdrl.datalists.load_datalist"
        )


def load_datalist(path: str | os.PathLike, key: str = "training", base_dir: str | os.PathLike | None = None):
    """Read one split of a datalist written by :func:`write_datalist`: ``image`` and ``label`` resolved
    against ``base_dir`` (default: the file's folder), every other value returned untouched (unlike
    ``monai.data.load_decathlon_datalist``, which also rewrites values that happen to name an existing path)."""
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else path.parent
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if key not in doc:
        raise DatalistError(f"{path} has no {key!r} list; keys: {sorted(doc)}")
    out = []
    for e in doc[key]:
        e = dict(e)
        for k in ("image", "label"):
            if k in e:
                e[k] = os.path.normpath(os.path.join(base, e[k]))
        out.append(e)
    return out
