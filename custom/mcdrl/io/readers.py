"""Load a :class:`~mcdrl.io.discovery.Case` into the network's input frames and the geometry of its label map.

All intensity handling that the model sees is :class:`mcdrl.transforms.ToModelInput`, exactly as in the bundle's
``preprocessing``; photos are even read by the same MONAI reader (``PILReader(reverse_indexing=False)``), so a
PNG gives bit-identical model input in both paths. Per kind:

* photo (PNG/JPEG/BMP/TIFF): one frame (rows, columns). Alpha is dropped, 16-bit grey is min-max scaled.
* NIfTI: frames are the slices ``data[:, :, k]`` shown as (Y, X) images (MONAI's convention: axis 0 is the column).
  A grey volume is scaled as one image (one percentile window for all slices); RGB frames one by one.
* DICOM: frames are the slices of a stack (in slice order) or the frames of a multi-frame instance, as (rows,
  columns). Grey: the modality LUT (RescaleSlope/Intercept) is applied per instance, MONOCHROME1 is inverted, and
  the volume is scaled as one image; palette colour is expanded; YBR is converted to RGB by pydicom.

The label map of a NIfTI or DICOM case has axes (i = column, j = row, k = slice), like ITK/MONAI, with the source's
RAS affine (for DICOM the same shape and affine as MONAI's ``ITKReader`` gives for the series).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.transforms import MapTransform, Transform

from mcdrl.transforms import ToModelInput

from .discovery import Case, nifti_layout, quiet_dicom, redact

__all__ = ["LoadCase", "LoadCased", "LoadedCase", "dicom_geometry"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_UNIT_MM = {"mm": 1.0, "micron": 1e-3, "meter": 1e3}


@dataclass
class LoadedCase:
    """A case ready for the network.

    Attributes:
        case: the discovered case.
        frames: (N, 3, H, W) float32 in [0, 1], the model input (N frames or slices).
        affine: (4, 4) RAS affine of the label map (NIfTI, DICOM); None for photos.
        label_shape: the shape the label map is written with (NIfTI, DICOM); None for photos.
        pixel_area_mm2: the area of one in-plane pixel, or None when the spacing is unknown.
        nifti_header: the source header (NIfTI inputs: copied to the output so that its affine is kept exactly).
        warnings: notes for the summary (alpha dropped, NaNs zeroed, non-uniform slice spacing, ...).
        seconds: time spent loading.
    """

    case: Case
    frames: torch.Tensor
    affine: np.ndarray | None = None
    label_shape: tuple[int, ...] | None = None
    pixel_area_mm2: float | None = None
    nifti_header: object | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def label_map(self, masks: np.ndarray) -> np.ndarray:
        """Per-frame masks (N, H, W) -> the label map, ``out[i, j, k] = masks[k, j, i]``, in ``label_shape``."""
        return np.ascontiguousarray(np.transpose(masks, (2, 1, 0))).reshape(self.label_shape)


_model_input = ToModelInput()


def _to_model(x: torch.Tensor) -> torch.Tensor:
    """:class:`ToModelInput`, as a plain tensor (no MetaTensor bookkeeping in the batches)."""
    y = _model_input(x)
    return y.as_tensor() if hasattr(y, "as_tensor") else y


def _native(arr: np.ndarray) -> np.ndarray:
    """Native byte order, and a dtype torch handles: uint8 kept, bool -> uint8, anything else -> float32."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr, dtype=np.uint8 if arr.dtype == bool else np.float32)


def _grey_volume(vol: np.ndarray) -> torch.Tensor:
    """(N, H, W) grey values -> (N, 3, H, W) model input.

    One slice goes through :class:`ToModelInput` exactly like a photo. A volume gets one intensity window for all
    its slices, by ToModelInput's rule (whole numbers in [0, 255] -> / 255; values in [0, 1] kept; otherwise the
    0.5 and 99.5 percentiles, here of a fixed subsample of at most 1M voxels, NaN/inf -> 0), and then each slice
    goes through ToModelInput (which keeps [0, 1] values). Doing this on the 1-channel volume instead of calling
    ToModelInput on it keeps a 512 x 512 x 500 CT at ~0.5 GB instead of several GB of 3-channel temporaries.
    """
    integer = vol.dtype.kind in "uib"
    vol = _native(vol)
    if vol.shape[0] == 1:
        return _to_model(torch.as_tensor(vol))[None]
    x = torch.as_tensor(vol)
    x = x.float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        if not bool(finite.any()):
            raise ValueError("image has no finite values")
        x = torch.where(finite, x, torch.zeros_like(x))
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0 and hi <= 255 and hi > 1 and (integer or bool((x == x.round()).all())):
        x = x / 255.0
    elif not (lo >= 0 and hi <= 1):
        flat = x.reshape(-1)
        if flat.numel() > 1_000_000:
            flat = flat[torch.linspace(0, flat.numel() - 1, 1_000_000).long()]
        q = torch.quantile(flat, torch.tensor([0.005, 0.995]))
        x = ((x - q[0]) / (q[1] - q[0]).clamp_min(1e-6)).clamp_(0, 1)
    return torch.stack([_to_model(s[None]) for s in x])


def _rgb_frames(rgb: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) -> (N, 3, H, W) model input, each frame scaled as its own image (as a photo would be)."""
    t = torch.as_tensor(_native(rgb))
    return torch.stack([_to_model(f.permute(2, 0, 1)) for f in t])


class _PhotoLoader:
    """The bundle's photo reading: MONAI's ``PILReader(reverse_indexing=False)``, channel first, as ``LoadImage`` +
    ``EnsureChannelFirst`` do (same values; without their MetaTensor bookkeeping, ~2.5 ms per image here)."""

    def __init__(self):
        from monai.data import PILReader

        self.reader = PILReader(reverse_indexing=False, converter=self._convert)
        self.notes: list[str] = []

    def _convert(self, im):
        if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):  # indices / other colour spaces: the bundle would misread these
            self.notes.append(f"{im.mode} image converted to RGB")
            return im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
        if im.mode in ("RGBA", "LA"):
            self.notes.append("alpha channel dropped")
        return im

    def __call__(self, path) -> tuple[torch.Tensor, list[str]]:
        self.notes = []
        arr, meta = self.reader.get_data(self.reader.read(str(path)))
        x = torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32))  # LoadImage's default dtype
        channel = meta.get("original_channel_dim")  # "no_channel" / NaN for grey, -1 for colour (as EnsureChannelFirst reads it)
        no_channel = channel is None or isinstance(channel, str) or (isinstance(channel, float) and np.isnan(channel))
        x = x[None] if no_channel else torch.movedim(x, int(channel), 0)
        return _to_model(x)[None], list(self.notes)


def _nonfinite_note(arr: np.ndarray) -> list[str]:
    if not np.issubdtype(arr.dtype, np.floating):
        return []
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    return [f"{bad} non-finite voxel(s) (NaN/inf) set to 0"] if bad else []


def _load_nifti(case: Case) -> LoadedCase:
    import nibabel as nib

    img = nib.load(str(case.files[0]))
    hdr = img.header
    intent = hdr.get_intent()[0] if hasattr(hdr, "get_intent") else ""
    is_rgb, grid, label_shape = nifti_layout(img.shape, img.get_data_dtype(), intent)
    data = np.asanyarray(img.dataobj)
    if np.iscomplexobj(data):
        raise ValueError(f"complex-valued NIfTI ({data.dtype}) is not an image the model can read")
    notes = _nonfinite_note(data)
    if is_rgb:
        if data.dtype.names is not None:
            data = np.stack([data[n] for n in data.dtype.names[:3]], axis=-1)
        rgb = data.reshape(*grid, data.shape[-1])[..., :3]  # (X, Y, Z, 3)
        frames = _rgb_frames(np.transpose(rgb, (2, 1, 0, 3)))
    else:
        frames = _grey_volume(np.transpose(data.reshape(grid), (2, 1, 0)))
    units = hdr.get_xyzt_units()[0] if hasattr(hdr, "get_xyzt_units") else "unknown"
    area = None
    if units in _UNIT_MM:
        a = img.affine
        area = float(np.linalg.norm(np.cross(a[:3, 0], a[:3, 1]))) * _UNIT_MM[units] ** 2
    return LoadedCase(case, frames, np.asarray(img.affine, dtype=np.float64), label_shape, area, hdr, notes)


def _fg(ds, frame: int, seq: str, attr: str):
    """An attribute of a functional group (per-frame first, then shared), or None."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        fg = ds.get(groups)
        if fg is not None and len(fg) > idx and seq in fg[idx] and len(fg[idx][seq].value):
            value = fg[idx][seq].value[0].get(attr)
            if value is not None:
                return value
    return None


def dicom_geometry(headers: list, n_frames: int) -> tuple[np.ndarray, float | None, list[str]]:
    """RAS affine (4, 4) of the (column, row, frame) label map of a DICOM stack or multi-frame instance.

    Columns of the LPS affine: row direction x column spacing, column direction x row spacing, the step from the
    first to the last frame position / (N - 1) (or the normal x slice spacing for one frame), the first position.
    Without a patient geometry: unit directions at the origin (spacing from PixelSpacing when present), as ITK.

    Returns:
        (affine, pixel area in mm^2 or None when PixelSpacing is unknown, warnings)
    """
    first, notes = headers[0], []
    if len(headers) > 1:
        positions = [h.get("ImagePositionPatient") for h in headers]
        iop, spacing = first.get("ImageOrientationPatient"), first.get("PixelSpacing")
    elif n_frames > 1 and ("PerFrameFunctionalGroupsSequence" in first or "SharedFunctionalGroupsSequence" in first):
        positions = [_fg(first, k, "PlanePositionSequence", "ImagePositionPatient") for k in range(n_frames)]
        iop = _fg(first, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _fg(first, 0, "PixelMeasuresSequence", "PixelSpacing") or first.get("PixelSpacing")
    else:
        positions = [first.get("ImagePositionPatient")] if n_frames == 1 else [None]
        iop, spacing = first.get("ImageOrientationPatient"), first.get("PixelSpacing")
    known = spacing is not None and len(spacing) == 2 and all(np.isfinite(float(v)) and float(v) > 0 for v in spacing)
    dr, dc = (float(spacing[0]), float(spacing[1])) if known else (1.0, 1.0)
    area = dr * dc if known else None
    lps = np.eye(4)
    have_geo = iop is not None and len(iop) == 6 and all(p is not None and len(p) == 3 for p in positions)
    if not have_geo:
        lps[0, 0], lps[1, 1] = dc, dr
        return LPS_TO_RAS @ lps, area, notes
    iop = np.array([float(v) for v in iop])
    pos = np.array([[float(v) for v in p] for p in positions])
    normal = np.cross(iop[:3], iop[3:])
    lps[:3, 0], lps[:3, 1], lps[:3, 3] = iop[:3] * dc, iop[3:] * dr, pos[0]
    if len(pos) > 1:
        lps[:3, 2] = (pos[-1] - pos[0]) / (len(pos) - 1)
        steps = np.diff(pos @ normal)
        if np.ptp(steps) > max(1e-3, 0.01 * abs(float(np.mean(steps)))):
            notes.append(f"non-uniform slice spacing ({abs(steps).min():.3g} to {abs(steps).max():.3g} mm): the NIfTI uses the mean step; the DICOM SEG keeps every slice position")
    else:
        dz = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or _fg(first, 0, "PixelMeasuresSequence", "SliceThickness") or 1.0
        lps[:3, 2] = normal * float(dz)
    return LPS_TO_RAS @ lps, area, notes


def _dicom_pixels(path) -> tuple[np.ndarray, bool]:
    """One instance -> ((F, R, C) grey float/int or (F, R, C, 3) RGB, is_rgb)."""
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array
    frames = max(int(ds.get("NumberOfFrames") or 1), 1)
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    is_rgb = arr.ndim == (4 if frames > 1 else 3) and arr.shape[-1] == 3
    if not is_rgb and int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise ValueError(f"unsupported DICOM pixel layout: SamplesPerPixel {ds.SamplesPerPixel}, shape {arr.shape}")
    if frames == 1:
        arr = arr[None]
    if arr.shape[0] != frames:
        raise ValueError(f"NumberOfFrames is {frames} but the pixel data holds {arr.shape[0]} frames")
    if not is_rgb:
        if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds:
            arr = apply_modality_lut(arr, ds)
        if pi == "MONOCHROME1":
            arr = (2 ** int(ds.get("BitsStored", 8)) - 1) - arr if arr.dtype.kind == "u" else -arr.astype(np.float32)
    return arr, is_rgb


def _load_dicom(case: Case) -> LoadedCase:
    parts = [_dicom_pixels(f) for f in case.files]
    kinds = {p[1] for p in parts}
    if len(kinds) > 1:
        raise ValueError("the stack mixes grey and colour images")
    arr = parts[0][0] if len(parts) == 1 else np.concatenate([p[0].astype(np.float32) for p in parts])
    frames = _rgb_frames(arr) if parts[0][1] else _grey_volume(arr)
    affine, area, notes = dicom_geometry(case.headers, arr.shape[0])
    label_shape = (arr.shape[2], arr.shape[1], arr.shape[0])
    return LoadedCase(case, frames, affine, label_shape, area, None, notes + _nonfinite_note(arr))


class LoadCase(Transform):
    """:class:`Case` -> :class:`LoadedCase` (model input frames + label-map geometry).

    Raises:
        ValueError: naming the case's input and the problem (unreadable pixels, unsupported layout, ...);
            messages about DICOM files are scrubbed of patient names and IDs.

    Example:
        >>> loaded = LoadCase()(case)
        >>> loaded.frames.shape   # (N, 3, H, W)
    """

    def __init__(self):
        self._photo = _PhotoLoader()

    def __call__(self, case: Case) -> LoadedCase:
        if not case.processable:
            raise ValueError(f"{case.input}: {case.kind}: {case.reason}")
        t0 = time.perf_counter()
        try:
            if case.kind == "image":
                frames, notes = self._photo(case.files[0])
                loaded = LoadedCase(case, frames, warnings=notes)
            elif case.kind == "nifti":
                loaded = _load_nifti(case)
            else:
                with quiet_dicom():
                    loaded = _load_dicom(case)
        except Exception as e:  # noqa: BLE001 - every reader error becomes one clear line
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]  # pydicom: one line per decoder plugin
            msg = " ".join(lines)[:300] if lines else type(e).__name__
            msg = msg if isinstance(e, ValueError) else f"{type(e).__name__}: {msg}"
            raise ValueError(redact(f"{case.input}: {msg}", case.redact)) from None
        loaded.warnings = case.warnings + loaded.warnings
        loaded.seconds = time.perf_counter() - t0
        return loaded


class LoadCased(MapTransform):
    """Dictionary twin of :class:`LoadCase`: replaces each ``Case`` under ``keys`` by its :class:`LoadedCase`."""

    def __init__(self, keys="image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.t = LoadCase()

    def __call__(self, data) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.t(d[key])
        return d
