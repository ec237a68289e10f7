"""Atomic mask writers: PNG (photos) and NIfTI label maps (NIfTI and DICOM inputs).

Every file is written to a temporary name in the destination folder and renamed into place
(:func:`mcdrl.utils.atomic_path`), so no half-written output is ever visible, even if the run is killed. Files get
the normal permissions of the process umask (a bare temporary file would be owner-only).

Label values: 0 background, 1 lesion (the bundle's ``channel_def``); PNG masks too, as the bundle's own
``SaveImaged`` writes them (multiply by 255 to view).
"""

from __future__ import annotations

import contextlib
import gzip
import os
from pathlib import Path

import numpy as np

from mcdrl.utils import atomic_path

__all__ = ["atomic_output", "write_nifti_mask", "write_png_mask"]


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Like :func:`mcdrl.utils.atomic_path`, and the final file gets umask permissions (not mkstemp's 0600)."""
    with atomic_path(path) as tmp:
        yield tmp
        os.chmod(tmp, _MODE)


def write_png_mask(mask: np.ndarray, path: str | os.PathLike) -> Path:
    """(H, W) mask, values 0/1 -> 8-bit grey PNG in natural (row, column) order, written atomically."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a PNG mask must be 2-D (H, W), got shape {mask.shape}")
    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), "L").save(tmp, format="PNG", compress_level=1)  # masks compress well anyway
    return Path(path)


def write_nifti_mask(label: np.ndarray, affine: np.ndarray, path: str | os.PathLike, header=None) -> Path:
    """uint8 label map -> NIfTI (``.nii`` or ``.nii.gz`` by the name), written atomically.

    Args:
        label: the label map, already in the output shape (e.g. the source's exact shape).
        affine: (4, 4) RAS affine, used when ``header`` is None (qform and sform, scanner coordinates).
        header: a source NIfTI header to copy (its qform/sform, units and affine are kept exactly; the data type
            becomes uint8 without scaling). Its image class (NIfTI-1 or NIfTI-2) is kept too.
    """
    import nibabel as nib

    label = np.ascontiguousarray(label, dtype=np.uint8)
    if header is not None:
        hdr = header.copy()
        cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(label, None, header=hdr)
    else:
        img = nib.Nifti1Image(label, np.asarray(affine, dtype=np.float64))
        img.header.set_qform(affine, code=1)
        img.header.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 1
    img.header["descrip"] = b"MCDRL lesion mask: 0 background, 1 lesion"
    if img.header.get_intent()[0] != "label":
        img.header.set_intent("label")
    data = img.to_bytes()
    with atomic_output(path) as tmp:
        Path(tmp).write_bytes(gzip.compress(data, compresslevel=6, mtime=0) if str(path).endswith(".gz") else data)
    return Path(path)
