"""Write synthetic cases to disk: PNG / DICOM / NIfTI files and a MONAI decathlon-style datalist.

Layout written by :func:`generate_dataset` (``<id>`` = ``<site>_<index:05d>``)::

    out_dir/
      datalist.json                 {"training": [...], "validation": [...] (, "testing": [...])}
      images/<site>/<id>.png        RGB uint8, (H, W, 3)                         ("png" format)
      images/<site>/<id>.dcm        RGB DICOM, VL Endoscopic Image Storage       ("dicom" format)
      images/<site>/<id>.nii.gz     uint8 NIfTI, array layout (W, H, 3)          ("nifti" format)
      labels/<site>/<id>.png        mask, 8-bit greyscale, pixel values 0/1 (NOT 0/255)  (always)
      labels/<site>/<id>.nii.gz     mask, uint8 NIfTI, layout (W, H), values 0/1 ("nifti" format)

NIfTI layout: axis 0 = image column (x), axis 1 = image row (y), axis 2 = RGB channel, i.e.
``nifti = image.transpose(1, 0, 2)``. This matches what MONAI's PILReader returns for the PNG, so
``LoadImage(reader="NibabelReader", channel_dim=-1)`` and ``LoadImage(reader="PILReader")`` agree.
The affine is diag(pixel_spacing_x, pixel_spacing_y, 1) mm.

Every file is written atomically: to a temporary file in the destination folder, then
:func:`os.replace` (readers never see a half-written file).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mcdrl.networks.prompts import CONFOUNDERS, LESION_CLASSES

from .render import Case
from .sites import GENERIC_MIXTURE, SITES, SiteSpec, derive_seed, sample_case

VL_ENDOSCOPIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.1"
VIDEO_ENDOSCOPIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
FORMATS = ("png", "dicom", "nifti")
SPLIT_KEYS = ("training", "validation", "testing")
PIXEL_SPACING_MM = (0.1, 0.1)  # (row, column) spacing: ~22 mm field at 224 px, plausible at working distance


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file next to ``path`` (same suffixes), then os.replace it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.split('.')[0]}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """(H, W, 3) uint8 RGB or (H, W) uint8 greyscale -> PNG (atomic)."""
    im = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "RGB" if array.ndim == 3 else "L")
    # zlib level 2: ~2x faster than the default 6 for ~15% larger files (encoding dominated the I/O time).
    return atomic_write(path, lambda tmp: im.save(tmp, format="PNG", compress_level=2))


def write_nifti(path: str | os.PathLike, array: np.ndarray, pixel_spacing: tuple[float, float] = PIXEL_SPACING_MM) -> Path:
    """(H, W, 3) image or (H, W) mask -> NIfTI stored as (W, H, 3) / (W, H) uint8 (see module doc)."""
    import nibabel as nib

    data = np.ascontiguousarray(np.swapaxes(np.asarray(array, np.uint8), 0, 1))
    affine = np.diag([pixel_spacing[1], pixel_spacing[0], 1.0, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(np.uint8)
    return atomic_write(path, lambda tmp: nib.save(img, tmp))


def write_dicom_rgb(path: str | os.PathLike, image: np.ndarray | None = None, *,
                    frames: Sequence[np.ndarray] | None = None, series_uid: str | None = None,
                    study_uid: str | None = None, sop_instance_uid: str | None = None,
                    sop_class_uid: str | None = None, patient_name: str = "SYNTHETIC^PHANTOM",
                    patient_id: str = "SYN-0000", pixel_spacing: tuple[float, float] = PIXEL_SPACING_MM,
                    frame_time_ms: float = 40.0, instance_number: int = 1, series_number: int = 1,
                    series_description: str = "MCDRL synthetic endoscopy", study_date: str = "20240101",
                    burned_in_annotation: bool = False, uid_entropy: Sequence[str] | None = None,
                    extra: dict | None = None) -> Path:
    """Write an uncompressed RGB DICOM (explicit VR little endian), single- or multi-frame.

    Args:
        path: output file (written atomically).
        image: (H, W, 3) uint8 single frame, or (F, H, W, 3) uint8 frames.
        frames: alternatively, a sequence of (H, W, 3) uint8 frames (a video); then ``image`` must be None.
        series_uid, study_uid, sop_instance_uid: UIDs; generated with ``pydicom.uid.generate_uid``
            when None (random, or deterministic from ``uid_entropy`` if given).
        sop_class_uid: default VL Endoscopic Image Storage (1.2.840.10008.5.1.4.1.1.77.1.1) for one
            frame, Video Endoscopic Image Storage (...77.1.1.1) for several frames.
        patient_name, patient_id: synthetic, non-identifying values only.
        pixel_spacing: (row, column) spacing in mm -> PixelSpacing.
        frame_time_ms: FrameTime of multi-frame objects (FrameIncrementPointer -> FrameTime).
        burned_in_annotation: value of BurnedInAnnotation ("YES"/"NO").
        uid_entropy: strings making generated UIDs reproducible.
        extra: further attributes set by keyword, e.g. ``{"Manufacturer": "X"}``.

    Returns:
        the written path. Multi-frame objects carry NumberOfFrames.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.tag import Tag
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    if frames is not None:
        if image is not None:
            raise ValueError("give either image or frames, not both")
        arr = np.stack([np.asarray(f) for f in frames])
    elif image is not None:
        arr = np.asarray(image)
    else:
        raise ValueError("one of image or frames is required")
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) or (F, H, W, 3), got {arr.dtype} {arr.shape}")
    n = 1 if arr.ndim == 3 else arr.shape[0]

    def uid(kind: str, given: str | None) -> str:
        if given is not None:
            return given
        return generate_uid(entropy_srcs=[*uid_entropy, kind]) if uid_entropy is not None else generate_uid()

    sop_class = sop_class_uid or (VL_ENDOSCOPIC_IMAGE_STORAGE if arr.ndim == 3 else VIDEO_ENDOSCOPIC_IMAGE_STORAGE)
    sop_uid = uid("sop", sop_instance_uid)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study", study_uid), uid("series", series_uid)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
    ds.Modality, ds.Manufacturer = "ES", "MCDRL synthetic"
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = series_number, instance_number, series_description
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = int(arr.shape[-3]), int(arr.shape[-2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    ds.BurnedInAnnotation = "YES" if burned_in_annotation else "NO"
    ds.LossyImageCompression = "00"
    if n > 1 or arr.ndim == 4:
        ds.NumberOfFrames = n
        ds.FrameTime = float(frame_time_ms)
        ds.FrameIncrementPointer = Tag(0x0018, 0x1063)
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def _split_counts(n: int, split: Sequence[float]) -> list[int]:
    if len(split) not in (2, 3) or any(f < 0 for f in split) or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split must be 2 or 3 non-negative fractions summing to 1, got {tuple(split)}")
    counts = [int(round(n * f)) for f in split[:-1]]
    counts[0] = min(counts[0], n)
    for i in range(1, len(counts)):
        counts[i] = min(counts[i], n - sum(counts[:i]))
    return counts + [n - sum(counts)]


def generate_dataset(out_dir: str | os.PathLike, sites: Sequence[str | SiteSpec], n_per_site: int, seed: int = 0,
                     formats: Sequence[str] = ("png",), split: Sequence[float] = (0.8, 0.2), size: int = 224,
                     progress: bool = False, extra_training: int = 0) -> Path:
    """Render ``n_per_site`` cases per site and write files + ``datalist.json`` (see module doc).

    Args:
        out_dir: output folder (created).
        sites: site names of :data:`SITES` (``"generic"`` = :data:`GENERIC_MIXTURE`), or :class:`SiteSpec` objects,
            e.g. ``SITES["A"].reversed_protocol()``: the same scenes (seeds derive from the site's name) with other
            confounder rates.
        n_per_site: cases per site.
        seed: dataset seed; case ``i`` of site ``s`` uses ``sample_case(SITES[s], derive_seed(seed, "case", i))``.
        formats: any of ``"png"``, ``"dicom"``, ``"nifti"``. The entry's ``"image"`` is the first
            format listed; the others are under ``"image_<format>"``. Labels are always PNG
            (values 0/1), plus ``"label_nifti"`` with the nifti format.
        split: (train, val) or (train, val, test) fractions; a per-site seeded shuffle assigns cases.
        size: image side in pixels.
        progress: print one line per site.
        extra_training: further cases per site, all in the training split (cases ``n_per_site`` ..
            ``n_per_site + extra_training - 1``: distinct scenes). The first ``n_per_site`` cases and their split are
            exactly those of a run without it, so a validation split stays the same when the training pool grows.

    Returns:
        path of ``datalist.json``; entries: ``{"image", "label", "site", "lesion_class",
        "confounders", "protocol_confounders", "caption", "id", "seed", ...}`` with paths relative to ``out_dir``;
        ``protocol_confounders`` lists the confounders present whose rate depends on the lesion at that site
        (:attr:`SiteSpec.protocol_confounders`, recorded per site under the datalist's ``"protocols"``).
    """
    out = Path(out_dir)
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"unknown format(s) {bad}; known: {list(FORMATS)}")
    known = {**SITES, GENERIC_MIXTURE.name: GENERIC_MIXTURE}
    for s in sites:
        if not isinstance(s, SiteSpec) and s not in known:
            raise ValueError(f"unknown site {s!r}; known: {list(known)}")
    specs = {s.name: s for s in (s if isinstance(s, SiteSpec) else known[s] for s in sites)}
    if len(specs) != len(sites):
        raise ValueError(f"sites must have distinct names, got {[s.name if isinstance(s, SiteSpec) else s for s in sites]}")
    sites = list(specs)
    keys = SPLIT_KEYS[: len(split)]
    datalist: dict = {
        "name": "MCDRL synthetic endoscopy", "seed": seed, "size": size, "formats": formats,
        "label_values": {"0": "background", "1": "lesion"}, "lesion_classes": LESION_CLASSES,
        "confounders": CONFOUNDERS, "sites": {s: specs[s].title for s in sites}, "extra_training_per_site": int(extra_training),
        "protocols": {s: list(specs[s].protocol_confounders) for s in sites},
        **{k: [] for k in keys},
    }
    for site in sites:
        spec = specs[site]
        counts = _split_counts(n_per_site, split)
        which = np.repeat(np.arange(len(keys)), counts)
        which = which[np.random.default_rng(derive_seed(seed, "split", site)).permutation(n_per_site)]
        study = {"study_uid": None, "series_uid": None}
        if "dicom" in formats:
            from pydicom.uid import generate_uid

            study = {k: generate_uid(entropy_srcs=["mcdrl-synthetic", str(seed), site, k]) for k in study}
        for i in range(n_per_site + int(extra_training)):
            case = sample_case(spec, derive_seed(seed, "case", i), size)
            entry = _write_case(out, case, f"{site}_{i:05d}", i, formats, study, spec.protocol_confounders)
            datalist[keys[int(which[i])] if i < n_per_site else "training"].append(entry)
        if progress:
            print(f"site {site}: {n_per_site} cases written to {out}", flush=True)
    atomic_write(out / "datalist.json", lambda tmp: Path(tmp).write_text(json.dumps(datalist, indent=1) + "\n"))
    return out / "datalist.json"


def _write_case(out: Path, case: Case, cid: str, index: int, formats: list[str], study: dict, protocol: Sequence[str] = ()) -> dict:
    site = case.site or "none"
    rel: dict[str, str] = {}
    for fmt in formats:
        if fmt == "png":
            rel[fmt] = f"images/{site}/{cid}.png"
            write_png(out / rel[fmt], case.image)
        elif fmt == "dicom":
            rel[fmt] = f"images/{site}/{cid}.dcm"
            write_dicom_rgb(out / rel[fmt], case.image, patient_name=f"SYNTHETIC^SITE{site}",
                            patient_id=f"SYN-{cid}", instance_number=index + 1,
                            burned_in_annotation=bool(case.device and case.device.overlay_text),
                            uid_entropy=["mcdrl-synthetic", cid, str(case.seed)], **study)
        else:
            rel[fmt] = f"images/{site}/{cid}.nii.gz"
            write_nifti(out / rel[fmt], case.image)
    label = f"labels/{site}/{cid}.png"
    write_png(out / label, case.mask)
    entry = {"image": rel[formats[0]], "label": label, "site": case.site, "lesion_class": case.lesion_class,
             "confounders": case.confounders, "protocol_confounders": [c for c in case.confounders if c in protocol],
             "caption": case.caption, "id": cid, "seed": case.seed}
    for fmt in formats[1:]:
        entry[f"image_{fmt}"] = rel[fmt]
    if "nifti" in formats:
        entry["label_nifti"] = f"labels/{site}/{cid}.nii.gz"
        write_nifti(out / entry["label_nifti"], case.mask)
    return entry
