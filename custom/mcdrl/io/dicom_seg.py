"""DICOM SEG output with highdicom (imported lazily: it needs pydicom >= 3, so it is absent from MONAI Label's venv).

One binary segment, segment number 1 = label value 1 of the NIfTI/PNG masks = ``channel_def["1"]`` ("lesion"):

* label "Lesion", segmented property category SCT 49755003 "Morphologically Abnormal Structure", type SCT 52988006
  "Lesion", algorithm type AUTOMATIC, algorithm family DCM 113112 "Artificial Intelligence", name "MCDRL";
* it references every source instance (and frame), the source series, study and patient, and the frame of
  reference where the source has a patient geometry. Every frame is encoded (no empty-frame omission), so SEG frame
  k is source frame/slice k.

Sources with a geometry (CT/MR stacks, enhanced multi-frame with plane positions) and single frames go through
highdicom unchanged. highdicom cannot encode a multi-frame source without a frame-of-reference geometry (endoscopy
video, ultrasound cine, multi-frame images stripped of their functional groups; highdicom issue #284). For those,
highdicom builds the SEG of the first frame, which is then extended to all frames: frame k references source frame
k (DerivationImageSequence, the only frame-to-frame link DICOM defines without a frame of reference), and a second
dimension, TemporalPositionIndex (colour video) or InStackPositionNumber (grey), indexes the frames.

Every SEG carries what its modules require, checked with dciodvfy (dicom3tools) for each kind of source pydicom
decodes (tests/test_io_dicom_seg.py):

* type-2 patient and study attributes the source lacks (PatientID, PatientName, StudyDate, AccessionNumber, ...,
  as in many anonymised exports) are written empty, as the standard allows; a source without StudyInstanceUID
  (type 1) gets a new one;
* PatientOrientation (General Image, type 2C) is copied from the source, or left empty, whenever the SEG has no
  plane orientation;
* the source's FrameOfReferenceUID is kept, also for multi-frame sources without plane positions;
* a Pixel Measures item is written only when complete: highdicom writes one without SliceThickness for sources
  that have a pixel spacing but no slice thickness (NM, secondary captures), which its own reader rejects, so it is
  completed from the source's SliceThickness or removed.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.transforms import MapTransform, Transform

from .writers import atomic_output

__all__ = ["WriteDicomSeg", "WriteDicomSegd", "build_seg", "write_dicom_seg"]

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SEG_SERIES_NUMBER = 9901
#: Type-2 attributes of the Patient and General Study modules that highdicom copies from the source by attribute
#: access (a source without them fails with AttributeError): written empty when the source lacks them.
TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber",
)
_GEOMETRY_KEYWORDS = (
    "NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence", "FrameOfReferenceUID", "PositionReferenceIndicator", "ImagePositionPatient",
    "ImageOrientationPatient", "DimensionIndexSequence", "DimensionOrganizationSequence", "DimensionOrganizationType",
)


def _highdicom():
    try:
        import highdicom
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("writing DICOM SEG needs highdicom (pip install highdicom; it requires pydicom>=3)") from e
    return highdicom


def _segment_description(hd, version: str):
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name="MCDRL", version=version, family=codes.cid7162.ArtificialIntelligence),
    )


def _headers(sources: Sequence) -> list:
    import pydicom

    return [s if isinstance(s, pydicom.Dataset) else pydicom.dcmread(str(s), stop_before_pixels=True) for s in sources]


def _frames(ds) -> int:
    return max(int(ds.get("NumberOfFrames") or 1), 1)


def build_seg(mask: np.ndarray, sources: Sequence, series_number: int = SEG_SERIES_NUMBER, description: str = "MCDRL lesion segmentation"):
    """Build the DICOM SEG (a highdicom ``Segmentation``, a pydicom Dataset) of a binary mask.

    Args:
        mask: (F, R, C) bool/0-1, F = the number of source frames (slices of a stack, in the order of ``sources``,
            or frames of one multi-frame instance).
        sources: the source instances (paths or pydicom datasets; pixel data is not needed).
        series_number, description: of the new SEG series.

    Raises:
        ValueError: the mask does not match the sources (frame count, rows, columns).
    """
    hd = _highdicom()
    from mcdrl import __version__

    headers, restore = _single_valued_names(_headers(sources))
    headers = _with_type2_attributes(headers)
    mask = np.asarray(mask).astype(bool)
    n_src = _frames(headers[0]) if len(headers) == 1 else len(headers)
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    if mask.ndim != 3 or mask.shape != (n_src, rows, cols):
        raise ValueError(f"mask shape {mask.shape} does not match the source: {n_src} frame(s) of {rows} x {cols}")
    common = dict(
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description(hd, __version__)],
        series_instance_uid=hd.UID(), series_number=int(series_number), sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="MCDRL bundle", manufacturer_model_name="MCDRL", software_versions=str(__version__),
        device_serial_number="none", content_label="LESION", content_description=description[:64],
        omit_empty_frames=False,
    )
    src = headers[0]
    no_geometry = hd.spatial.get_image_coordinate_system(src) is None
    single_frame_iod = not hd._standard_utils.is_multiframe_image(src)
    if len(headers) == 1 and n_src > 1 and (no_geometry or single_frame_iod):
        seg = _multiframe_without_geometry(hd, src, mask, common)
    else:
        seg = hd.seg.Segmentation(source_images=headers, pixel_array=mask, **common)
    if "FrameOfReferenceUID" in src and "FrameOfReferenceUID" not in seg:  # multi-frame without plane positions
        seg.FrameOfReferenceUID = src.FrameOfReferenceUID
        seg.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "")
    _complete_pixel_measures(seg, src)
    if not _has_plane_orientation(seg):  # General Image: PatientOrientation is type 2C without a plane orientation
        seg.PatientOrientation = src.get("PatientOrientation") or ""
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "SegmentIdentificationSequence" in shared:  # per frame, where MONAI's PydicomReader (and older viewers) look
        for item in seg.PerFrameFunctionalGroupsSequence:
            item.SegmentIdentificationSequence = copy.deepcopy(shared.SegmentIdentificationSequence)
        del shared.SegmentIdentificationSequence
    for elem in restore:  # the patient/study names exactly as in the source
        seg[elem.tag] = elem
    seg.SeriesDescription = description[:64]
    return seg


def _with_type2_attributes(headers: list) -> list:
    """Copies of ``headers`` with every type-2 patient/study attribute present (empty where the source lacks it)
    and a StudyInstanceUID (a new one, shared by all, where the source lacks it); ``headers`` itself when complete."""
    missing = [kw for kw in TYPE2_PATIENT_STUDY if any(kw not in h for h in headers)]
    no_study = any("StudyInstanceUID" not in h for h in headers)
    odd = [kw for kw in _DATE_TIME_KEYWORDS if any(_conformant(h.get(kw), kw) != h.get(kw) for h in headers)]
    if not missing and not no_study and not odd:
        return headers
    study_uid = None
    if no_study:
        from pydicom.uid import generate_uid

        study_uid = next((h.StudyInstanceUID for h in headers if "StudyInstanceUID" in h), None) or generate_uid()
    fixed = []
    for h in headers:
        h = copy.deepcopy(h)
        for kw in missing:
            if kw not in h:
                setattr(h, kw, None)  # present, zero length
        if "StudyInstanceUID" not in h:
            h.StudyInstanceUID = study_uid
        for kw in odd:
            setattr(h, kw, _conformant(h.get(kw), kw))
        fixed.append(h)
    return fixed


_DATE_TIME_KEYWORDS = ("StudyDate", "StudyTime", "PatientBirthDate")


_DA = re.compile(r"\d{8}")
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


def _conformant(value, keyword: str):
    """A DA/TM value as the standard writes it: ACR-NEMA style "14:04:38" / "1997.04.24" without the separators,
    None (empty) when it still is not one; conformant and empty values unchanged."""
    if value is None or str(value) == "":
        return value
    text = str(value).strip()
    pattern, seps = (_TM, ":") if keyword.endswith("Time") else (_DA, ".-/")
    if pattern.fullmatch(text):
        return value
    cleaned = text.translate({ord(c): None for c in seps})
    return cleaned if pattern.fullmatch(cleaned) else None


def _functional_groups(seg) -> list:
    return [*seg.get("SharedFunctionalGroupsSequence", []), *seg.get("PerFrameFunctionalGroupsSequence", [])]


def _has_plane_orientation(seg) -> bool:
    return "ImageOrientationPatient" in seg or any("PlaneOrientationSequence" in fg for fg in _functional_groups(seg))


def _complete_pixel_measures(seg, src) -> None:
    """Give every Pixel Measures item a SliceThickness from the source, or remove the items that cannot have one.

    highdicom copies PixelSpacing into Pixel Measures but not the thickness when the source has none in a place it
    reads (NM and secondary captures: PixelSpacing without SliceThickness). A partial item fails dciodvfy and
    ``highdicom.seg.segread``; a made-up thickness would be wrong, so then the item goes (Pixel Measures is optional
    for these SEGs: there are no plane positions).
    """
    thickness = src.get("SliceThickness")
    if thickness in (None, "") and src.get("SharedFunctionalGroupsSequence"):
        pm = src.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        thickness = pm[0].get("SliceThickness") if pm else None
    for fg in _functional_groups(seg):
        for item in list(fg.get("PixelMeasuresSequence", [])):
            if item.get("SliceThickness") not in (None, ""):
                continue
            if thickness not in (None, "") and "FrameOfReferenceUID" in seg:
                item.SliceThickness = thickness
            else:
                del fg.PixelMeasuresSequence
                break


def _single_valued_names(headers: list) -> tuple[list, list]:
    """highdicom rejects a person name holding a backslash (DICOM's value separator), e.g. a PatientName with path
    separators. Give it copies with the first value, and return the original elements to put back into the SEG."""
    restore = [copy.deepcopy(e) for e in headers[0] if e.VR == "PN" and e.VM > 1]
    if not restore:
        return headers, []
    fixed = []
    for h in headers:
        h = copy.copy(h)
        for e in restore:
            if e.tag in h:
                h[e.tag] = copy.deepcopy(h[e.tag])
                h[e.tag].value = str(h[e.tag].value[0])
        fixed.append(h)
    return fixed, restore


def _multiframe_without_geometry(hd, src, mask: np.ndarray, common: dict):
    """highdicom builds the SEG of frame 1 from a single-frame stand-in of the source; extend it to all frames."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.pixels import pack_bits
    from pydicom.sequence import Sequence as DSequence

    proxy = copy.deepcopy(src)
    for kw in _GEOMETRY_KEYWORDS:
        if kw in proxy:
            delattr(proxy, kw)
    proxy.SOPClassUID = SECONDARY_CAPTURE  # a single-frame IOD without a mandatory frame of reference
    if getattr(proxy, "file_meta", None) is not None:
        proxy.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    seg = hd.seg.Segmentation(source_images=[proxy], pixel_array=mask[:1], **common)
    _replace_referenced_class(seg, SECONDARY_CAPTURE, str(src.SOPClassUID))
    colour = int(src.get("SamplesPerPixel", 1) or 1) == 3
    keyword = "TemporalPositionIndex" if colour else "InStackPositionNumber"
    template = seg.PerFrameFunctionalGroupsSequence[0]
    items = []
    for k in range(mask.shape[0]):
        item = copy.deepcopy(template)
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
        ref.ReferencedFrameNumber = k + 1
        content = item.FrameContentSequence[0]
        values = content.DimensionIndexValues
        content.DimensionIndexValues = [int(v) for v in (values if isinstance(values, (list, tuple)) or hasattr(values, "__iter__") else [values])] + [k + 1]
        setattr(content, keyword, k + 1)
        if not colour:
            content.StackID = "1"
        items.append(item)
    seg.PerFrameFunctionalGroupsSequence = DSequence(items)
    dim0 = seg.DimensionIndexSequence[0]
    dim = copy.deepcopy(dim0)
    dim.DimensionIndexPointer = tag_for_keyword(keyword)
    dim.FunctionalGroupPointer = tag_for_keyword("FrameContentSequence")
    dim.DimensionDescriptionLabel = "Frame" if colour else "Slice"
    seg.DimensionIndexSequence.append(dim)
    seg.NumberOfFrames = mask.shape[0]
    packed = pack_bits(mask.reshape(-1).astype(np.uint8))
    seg.PixelData = packed + b"\x00" * (len(packed) % 2)
    return seg


def _replace_referenced_class(ds, old: str, new: str) -> None:
    """Set every ReferencedSOPClassUID equal to ``old`` (anywhere in ``ds``) to ``new``."""
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPClassUID" and str(elem.value) == old:
            elem.value = new


def write_dicom_seg(mask: np.ndarray, sources: Sequence, path: str | os.PathLike, **kwargs) -> Path:
    """:func:`build_seg`, then save it atomically (explicit VR little endian, a conformant file)."""
    seg = build_seg(mask, sources, **kwargs)
    with atomic_output(path) as tmp:
        seg.save_as(str(tmp), enforce_file_format=True)
    return Path(path)


class WriteDicomSeg(Transform):
    """Write a DICOM SEG for a mask of DICOM source frames; returns the written path.

    Args:
        output_dir: where ``<name>_seg.dcm`` goes (``name`` may contain sub-folders).

    Call:
        ``(mask (F, R, C), sources (paths or datasets), name)`` -> Path.
    """

    def __init__(self, output_dir: str | os.PathLike, series_number: int = SEG_SERIES_NUMBER):
        self.output_dir = Path(output_dir)
        self.series_number = int(series_number)

    def __call__(self, mask: np.ndarray, sources: Sequence, name: str) -> Path:
        return write_dicom_seg(mask, sources, self.output_dir / f"{name}_seg.dcm", series_number=self.series_number)


class WriteDicomSegd(MapTransform):
    """Dictionary twin: ``{"pred": (F, R, C) mask, "image": LoadedCase or Case of DICOM files}`` -> adds
    ``"<pred>_seg_path"``. Cases that are not DICOM pass through unchanged."""

    def __init__(self, keys="pred", image_key: str = "image", output_dir: str | os.PathLike = ".", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.t = WriteDicomSeg(output_dir)

    def __call__(self, data) -> dict:
        d = dict(data)
        case = getattr(d[self.image_key], "case", d[self.image_key])
        if getattr(case, "kind", None) != "dicom":
            return d
        for key in self.key_iterator(d):
            mask = np.asarray(d[key])
            d[f"{key}_seg_path"] = self.t(mask, case.headers or case.files, case.name)
        return d
