"""Find the cases in a folder tree (or one file): photos, NIfTI files and DICOM series, plus bad and stray files.

A *case* is one unit of output: a PNG/JPEG file, a NIfTI file, or a DICOM stack / instance. DICOM files are grouped
by SeriesInstanceUID, never by folder: one export folder often holds several series, and one series may be spread
over folders (see :mod:`.dicom_series` for how a series splits into stacks and instances).

Every file that is not part of a case gets a case of its own with ``kind`` "error" (a truncated, empty or unreadable
file, a DICOM object without pixels, an image over ``max_side`` px, a 4-D NIfTI) or "skipped" (stray non-image files,
a DICOMDIR, a DICOM SEG), so that nothing in the folder disappears silently. Hidden files (``.DS_Store``, ``._x.dcm``)
and the output folder are ignored; a folder holding an earlier run's summary, and the ``labels/`` folder of a MONAI
Label studies folder (its masks in ``labels/final``, ``labels/original``), get one "skipped" line each.

Output names derive from the input path (photos, NIfTI) or from UIDs (DICOM), never from patient attributes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from monai.transforms import MapTransform, Transform

from mcdrl.errors import InputFileError

from .cases import DEFAULT_MAX_SIDE, Case, check_side, first_line, quiet_dicom, redact
from .dicom_series import group_series, read_header

__all__ = ["Case", "DiscoverCases", "DiscoverCasesd", "discover", "nifti_layout", "quiet_dicom", "redact"]

logger = logging.getLogger("mcdrl.io")

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if path.suffix.lower() in PHOTO_SUFFIXES:
        return "image"
    if path.suffix.lower() in DICOM_SUFFIXES:
        return "dicom"
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return "other"
    return "dicom" if head[128:132] == b"DICM" else "other"


def _stem(rel: str) -> str:
    low = rel.lower()
    for suf in (".nii.gz", *NIFTI_SUFFIXES, *PHOTO_SUFFIXES, *DICOM_SUFFIXES):
        if low.endswith(suf):
            return rel[: -len(suf)]
    return rel


def nifti_layout(shape: tuple[int, ...], dtype: np.dtype, intent: str = "") -> tuple[bool, tuple[int, int, int], tuple[int, ...]]:
    """How a NIfTI array maps onto 2-D model frames.

    Returns:
        (is_rgb, grid (X, Y, Z), label_shape): frames are the Z slices ``data[:, :, k]`` (shown as (Y, X) images,
        MONAI's convention that axis 0 is the column); the label map is written with ``label_shape``: the source's
        exact shape for grey images, the shape without the colour axis for RGB.
        RGB is recognised as an RGB24 data type, a 5-D vector image (X, Y, Z, 1, 3), or a uint8 (X, Y, 3) array
        (the layout of :func:`mcdrl.synthetic.write_nifti`).

    Raises:
        ValueError: more than 3 spatial dimensions (e.g. a 4-D time series), naming the shape.
    """
    shape = tuple(int(s) for s in shape)
    if dtype.names is not None:
        is_rgb, spatial, label_shape = True, shape, shape
    elif len(shape) == 5 and shape[3] == 1 and shape[4] in (3, 4) and intent in ("vector", "rgb vector", "rgba vector"):
        is_rgb, spatial, label_shape = True, shape[:3], shape[:3]
    elif len(shape) == 3 and shape[2] in (3, 4) and dtype == np.uint8:
        is_rgb, spatial, label_shape = True, shape[:2], shape[:2]
    else:
        is_rgb, spatial, label_shape = False, shape, shape
    core = list(spatial)
    while len(core) > 3 and core[-1] == 1:
        core.pop()
    if len(core) > 3:
        raise ValueError(f"{len(core)}-D NIfTI of shape {shape}: only 2-D and 3-D images are supported (split the volumes of a time series first)")
    if len(core) < 2:
        raise ValueError(f"NIfTI of shape {shape} is not an image")
    return is_rgb, tuple(core + [1] * (3 - len(core))), label_shape


def _photo_case(path: Path, rel: str, max_side: int) -> Case:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        cols, rows = im.size
    check_side(rows, cols, max_side)
    return Case(name=_stem(rel), kind="image", input=rel, files=[path], size=(rows, cols), frames=1)


def _nifti_case(path: Path, rel: str, max_side: int) -> Case:
    import nibabel as nib

    img = nib.load(str(path))
    intent = img.header.get_intent()[0] if hasattr(img.header, "get_intent") else ""
    _, grid, _ = nifti_layout(img.shape, img.get_data_dtype(), intent)
    check_side(grid[1], grid[0], max_side)
    return Case(name=_stem(rel), kind="nifti", input=rel, files=[path], size=(grid[1], grid[0]), frames=grid[2])


def _is_output_folder(folder: Path, filenames: list[str]) -> bool:
    """A folder holding a summary.json written by :class:`mcdrl.io.summary.SummaryWriter`."""
    if "summary.json" not in filenames or "summary.csv" not in filenames:
        return False
    try:
        with open(folder / "summary.json", encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return '"complete":' in head and '"counts":' in head


#: MONAI Label's datastore (LocalDatastore): ``<studies>/datastore_v2.json`` and ``<studies>/labels/<tag>/``
#: (tags ``final`` and ``original``, and any a client saves), one mask per image with the image's name.
MONAILABEL_DATASTORE_FILE = "datastore_v2.json"
MONAILABEL_LABEL_TAGS = ("final", "original")


def _is_monailabel_labels(folder: Path, dirnames: list[str]) -> bool:
    """``folder`` is the ``labels`` folder of a MONAI Label studies folder: named ``labels``, next to MONAI Label's
    datastore file, or holding a ``final``/``original`` folder whose files are named like images beside ``labels``."""
    if folder.name != "labels":
        return False
    if (folder.parent / MONAILABEL_DATASTORE_FILE).is_file():
        return True
    tags = [d for d in dirnames if d in MONAILABEL_LABEL_TAGS]
    if not tags:
        return False
    images = {_stem(f.name) for f in folder.parent.iterdir() if f.is_file()}
    return any(_stem(f.name) in images for tag in tags for f in (folder / tag).iterdir() if f.is_file())


def _unique_names(cases: list[Case]) -> None:
    """Make output stems unique: a second "a" (from a.png next to a.jpg) becomes "a_jpg"."""
    used: set[str] = set()
    for c in cases:
        name = c.name
        if name.lower() in used and c.files:
            suffix = c.files[0].name[len(Path(_stem(c.files[0].name)).name):].lstrip(".").replace(".", "_") or "file"
            name = f"{c.name}_{suffix}"
        k = 2
        while name.lower() in used:
            name, k = f"{c.name}_{k}", k + 1
        c.name = name
        used.add(name.lower())


def discover(path: str | os.PathLike, max_side: int = DEFAULT_MAX_SIDE, exclude: list[str | os.PathLike] | None = None) -> list[Case]:
    """All cases under ``path`` (a folder, searched recursively, or one file), sorted by input.

    Args:
        path: the input folder or file. max_side: larger images are errors. exclude: folders to leave out (the
            output folder, when it lies inside the input).

    Raises:
        InputFileError: ``path`` does not exist (a FileNotFoundError; the bundle CLI prints it as one line).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise InputFileError(f"input not found: {root}. Pass --dataset_dir pointing at a folder or a file.")
    base = root.parent if root.is_file() else root
    excluded = {Path(e).resolve() for e in (exclude or [])}
    files: list[Path] = []
    earlier: list[Case] = []
    if root.is_file():
        files = [root]
    else:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            if here != root and _is_output_folder(here, filenames):
                rel = here.relative_to(base).as_posix()
                earlier.append(Case(rel + "/", "skipped", rel + "/", reason="the output folder of an earlier run (has our summary.json)"))
                dirnames[:] = []
                continue
            if here != root and _is_monailabel_labels(here, dirnames):
                rel = here.relative_to(base).as_posix()
                tags = ", ".join(sorted(d for d in dirnames if not d.startswith("."))) or "no tag folders"
                earlier.append(Case(rel + "/", "skipped", rel + "/", reason=f"MONAI Label's label masks ({tags}), not images"))
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in excluded)
            files += [here / f for f in sorted(filenames) if not f.startswith(".")]
    cases: list[Case] = list(earlier)
    dicom_items = []
    with quiet_dicom():
        for f in files:
            rel = f.relative_to(base).as_posix()
            if not f.is_file():
                continue
            kind = _file_kind(f)
            if f.stat().st_size == 0:
                if kind != "other" or not f.suffix:
                    cases.append(Case(rel, "error", rel, [f], reason="empty file (0 bytes)"))
                else:
                    cases.append(Case(rel, "skipped", rel, [f], reason="empty file, not an image"))
                continue
            try:
                if kind == "image":
                    cases.append(_photo_case(f, rel, max_side))
                elif kind == "nifti":
                    cases.append(_nifti_case(f, rel, max_side))
                elif kind == "dicom":
                    ds, bad = read_header(f, rel, max_side)
                    if bad is not None:
                        cases.append(bad)
                    else:
                        dicom_items.append((f, rel, ds))
                else:
                    cases.append(Case(rel, "skipped", rel, [f], reason=f"not an image ({f.suffix or 'no suffix'}, no DICOM preamble)"))
            except Exception as e:  # noqa: BLE001 - any unreadable file is one error line
                reason = first_line(e) if isinstance(e, ValueError) else f"cannot read: {type(e).__name__}: {first_line(e)}"
                cases.append(Case(rel, "error", rel, [f], reason=reason.replace(str(f), rel)))
        cases += group_series(dicom_items)
    cases.sort(key=lambda c: (c.input, c.name))
    _unique_names(cases)
    for c in cases:
        c.reason = redact(c.reason, c.redact)
    return cases


class DiscoverCases(Transform):
    """Folder or file path -> list of :class:`Case` (see the module doc).

    Args:
        max_side: images with a larger side are error cases. exclude: folders to leave out.

    Example:
        >>> cases = DiscoverCases()("export/")
        >>> [c.name for c in cases if c.kind == "dicom"]
        ['dicom/1.2.826.0.1.3680043.8.498.1']
    """

    def __init__(self, max_side: int = DEFAULT_MAX_SIDE, exclude: list[str | os.PathLike] | None = None):
        self.max_side = int(max_side)
        self.exclude = list(exclude or [])

    def __call__(self, path: str | os.PathLike) -> list[Case]:
        return discover(path, self.max_side, self.exclude)


class DiscoverCasesd(MapTransform):
    """``{key: folder, ...}`` -> one dict per case, ``{key: Case, ...}`` (MONAI's list-of-samples convention).

    Example:
        >>> Compose([DiscoverCasesd("image"), LoadCased("image")])({"image": "export/"})  # list of loaded cases
    """

    def __init__(self, keys="image", max_side: int = DEFAULT_MAX_SIDE, exclude=None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError("DiscoverCasesd takes exactly one key (the folder)")
        self.t = DiscoverCases(max_side, exclude)

    def __call__(self, data) -> list[dict]:
        d = dict(data)
        key = self.keys[0]
        return [{**d, key: case} for case in self.t(d[key])]
