"""DICOM files -> series cases: header checks (one error line per bad file) and grouping by SeriesInstanceUID.

Within a series: each multi-frame instance is a case; grey single-frame instances with a patient geometry
(ImagePositionPatient, ImageOrientationPatient) are stacked by orientation and size, sorted along the slice normal
(as ITK does); every other instance (RGB stills, projection images, images without geometry, slices sharing a
position) is its own 2-D case. Names are ``dicom/<SeriesInstanceUID>`` (plus ``/<SOPInstanceUID>`` or ``/stack<k>``
when a series holds several cases): UIDs, never patient attributes; a UID that is not a plain dotted number is hashed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from .cases import Case, check_side, first_line

__all__ = ["SKIPPED_SOP_CLASSES", "group_series", "has_preamble", "read_header", "safe_uid", "secrets_of"]

#: DICOM objects that are legitimately in an export but are not images to segment
SKIPPED_SOP_CLASSES = {
    "1.2.840.10008.1.3.10": "DICOMDIR (the index of a DICOM file-set)",
    "1.2.840.10008.5.1.4.1.1.66.4": "a DICOM Segmentation (e.g. an earlier output)",
}


def secrets_of(ds) -> tuple[str, ...]:
    """The patient-identifying strings of a header (names, IDs, and name components of 3+ characters), to be
    scrubbed from any message about the file (:func:`mcdrl.io.cases.redact`)."""
    out = set()
    for kw in ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthName", "PatientMotherBirthName"):
        value = ds.get(kw)
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]:
            s = str(v).strip()
            parts = [s, *re.split(r"[\^=]", s)]
            out.update(p.strip() for p in parts if len(p.strip()) >= 3)
    return tuple(sorted(out))


def safe_uid(uid: str) -> str:
    """A UID as a file name: kept if it is a plain dotted number, else a hash (never a path, never PHI)."""
    uid = str(uid).strip()
    if re.fullmatch(r"[0-9][0-9.]{0,63}", uid) and ".." not in uid:
        return uid
    return "uid-" + hashlib.sha256(uid.encode()).hexdigest()[:20]


def _frames(ds) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def read_header(path: Path, rel: str, max_side: int):
    """(dataset without pixel values, None) for an image, or (None, Case) for an error / skip line."""
    import pydicom
    from pydicom.uid import UID

    preamble = has_preamble(path)
    try:
        ds = pydicom.dcmread(str(path), defer_size=1024, force=not preamble)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for bad files
        return None, Case(rel, "error", rel, [path], reason=f"not a readable DICOM file ({type(e).__name__}: {first_line(e)})")
    secrets = secrets_of(ds)
    meta = getattr(ds, "file_meta", None) or {}
    sop = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "") or "")
    if not preamble and not sop:
        return None, Case(rel, "error", rel, [path], reason="not a DICOM file: no 'DICM' preamble and no readable DICOM header")
    if sop in SKIPPED_SOP_CLASSES or path.name.upper() == "DICOMDIR":
        what = SKIPPED_SOP_CLASSES.get(sop, SKIPPED_SOP_CLASSES["1.2.840.10008.1.3.10"])
        return None, Case(rel, "skipped", rel, [path], reason=f"{what}, not an image")
    pixel = next((ds.get_item(t, keep_deferred=True) for t in (0x7FE00010, 0x7FE00008, 0x7FE00009) if t in ds), None)
    if pixel is None:
        name = UID(sop).name if sop else "DICOM object without SOP Class UID"
        if "Rows" in ds:
            reason = f"{name}: image header but no pixel data (truncated file?)"
        elif "Image" in name:
            reason = f"{name}: no pixel data (a header-only or truncated file?)"
        else:
            reason = f"{name}: no pixel data, not an image"
        return None, Case(rel, "error", rel, [path], reason=reason, redact=secrets)
    missing = [kw for kw in ("SeriesInstanceUID", "SOPInstanceUID", "Rows", "Columns") if not ds.get(kw)]
    if missing:
        return None, Case(rel, "error", rel, [path], reason=f"incomplete DICOM header (no {', '.join(missing)}): truncated file?", redact=secrets)
    length, tell = getattr(pixel, "length", None), getattr(pixel, "value_tell", None)
    deflated = str(getattr(meta, "TransferSyntaxUID", "") or "") == "1.2.840.10008.1.2.1.99"  # offsets are in the inflated stream
    if length is not None and tell is not None and length != 0xFFFFFFFF and not deflated:
        size = path.stat().st_size
        if tell + length > size:
            reason = f"truncated: the pixel data needs {length} bytes but the file ends {tell + length - size} bytes early"
            return None, Case(rel, "error", rel, [path], reason=reason, series_uid=str(ds.SeriesInstanceUID), redact=secrets)
    try:
        check_side(int(ds.Rows), int(ds.Columns), max_side)
    except ValueError as e:
        return None, Case(rel, "error", rel, [path], reason=str(e), series_uid=str(ds.SeriesInstanceUID), redact=secrets)
    return ds, None


def has_preamble(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"


def _geometry(ds):
    """(orientation key, position (3,), normal (3,)) of a single-frame image, or None without a patient geometry."""
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
        return None
    iop = np.array([float(v) for v in iop])
    normal = np.cross(iop[:3], iop[3:])
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-3:
        return None
    return tuple(np.round(iop, 4)), np.array([float(v) for v in ipp]), normal / np.linalg.norm(normal)


def group_series(items: list[tuple[Path, str, object]]) -> list[Case]:
    """Group (path, rel, header) of valid DICOM images into cases by SeriesInstanceUID."""
    by_series: dict[str, list] = defaultdict(list)
    for item in items:
        by_series[str(item[2].SeriesInstanceUID)].append(item)
    cases = []
    for series_uid, members in sorted(by_series.items()):
        seen, uniq, dup = set(), [], 0
        for m in members:
            sop = str(m[2].SOPInstanceUID)
            if sop in seen:
                dup += 1
                continue
            seen.add(sop)
            uniq.append(m)
        notes = [f"{dup} duplicate file(s) of the same SOP instance ignored"] if dup else []
        units: list[tuple[list, list[str]]] = []  # (members in frame order, warnings)
        stacks: dict[tuple, list] = defaultdict(list)
        for m in uniq:
            ds = m[2]
            geo = _geometry(ds) if _frames(ds) == 1 and int(ds.get("SamplesPerPixel", 1) or 1) == 1 else None
            if geo is None:
                units.append(([m], []))
            else:
                stacks[(geo[0], int(ds.Rows), int(ds.Columns))].append((m, geo))
        for key in sorted(stacks, key=lambda k: min(str(x[0][1]) for x in stacks[k])):
            group = stacks[key]
            normal = group[0][1][2]
            pos = np.array([float(g[1][1] @ normal) for g in group])
            if len(np.unique(np.round(pos, 3))) < len(pos):
                note = "slices share positions (several echoes or time points?): each slice processed as its own image"
                units.extend(([g[0]], [note]) for g in group)
                continue
            order = np.argsort(pos, kind="stable")
            units.append(([group[i][0] for i in order], []))
        units.sort(key=lambda u: u[0][0][1])
        base, n_stack = "dicom/" + safe_uid(series_uid), 0
        for members_u, unit_notes in units:
            first = members_u[0][2]
            if len(units) == 1:
                name = base
            elif len(members_u) == 1:
                name = f"{base}/{safe_uid(first.SOPInstanceUID)}"
            else:
                n_stack += 1
                name = f"{base}/stack{n_stack}"
            rels = [m[1] for m in members_u]
            shown = rels[0] if len(rels) == 1 else (os.path.commonpath(rels) or ".") + f"/ ({len(rels)} files)"
            n_frames = _frames(first) if len(members_u) == 1 else len(members_u)
            cases.append(Case(name=name, kind="dicom", input=shown, files=[m[0] for m in members_u], size=(int(first.Rows), int(first.Columns)),
                              frames=n_frames, series_uid=series_uid, warnings=notes + unit_notes, headers=[m[2] for m in members_u],
                              redact=tuple(sorted({s for m in members_u for s in secrets_of(m[2])}))))
    return cases
