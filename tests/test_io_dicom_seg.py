"""DICOM SEG for every kind of source pydicom decodes, read back with highdicom and validated with dciodvfy.

The sources are files we did not write (pydicom's and pydicom-data's test DICOMs), one per kind: grey, RGB, YBR,
JPEG baseline, JPEG Lossless (process 14), JPEG-LS, JPEG 2000, RLE, big endian, enhanced multi-frame, ultrasound
multi-frame, NM, plus a CT stripped of every patient and study attribute but StudyInstanceUID. Each goes the
folder runner's way: discovery, pixel decoding (:class:`mcdrl.io.LoadCase`), then :func:`write_dicom_seg` with a
mask that is not empty.

dciodvfy is Debian's ``dicom3tools``. ``.ci/run`` installs it and sets ``MCDRL_REQUIRE_DCIODVFY=1``, which makes a
missing dciodvfy a failure; elsewhere the dciodvfy test skips, naming the package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import REPO
from mcdrl.io import LoadCase, discover, write_dicom_seg
from test_io_helpers import dcm_file

#: source kind -> pydicom test file
SOURCES = {
    "grey CT": "CT_small.dcm",
    "RGB": "SC_rgb.dcm",
    "YBR_FULL": "SC_ybr_full_uncompressed.dcm",
    "JPEG baseline (YBR)": "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG lossless process 14": "SC_rgb_jpeg_gdcm.dcm",
    "JPEG lossless SV1, NM": "JPEG-LL.dcm",
    "JPEG-LS lossless": "MR_small_jpeg_ls_lossless.dcm",
    "JPEG 2000 lossless": "MR_small_jp2klossless.dcm",
    "JPEG 2000, NM": "JPEG2000.dcm",
    "RLE": "MR_small_RLE.dcm",
    "big endian RGB US, no PatientID": "ExplVR_BigEnd.dcm",
    "big endian MR": "MR_small_bigendian.dcm",
    "enhanced MR multi-frame": "emri_small.dcm",
    "US multi-frame JPEG": "examples_ybr_color.dcm",
}
STRIPPED = "CT without patient/study attributes"
#: the decoder plugins of requirements.txt (pydicom's pixel-data backends)
DECODER_PLUGINS = ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle")


def _strip_patient_and_study(src: str, dest: Path) -> Path:
    """``src`` without any attribute of the Patient, General Study and Patient Study modules but StudyInstanceUID."""
    from highdicom._standard_utils import get_module_attribute_map

    ds = pydicom.dcmread(src)
    for module in ("patient", "general-study", "patient-study"):
        for item in get_module_attribute_map()[module]:
            kw = item["keyword"]
            if not item["path"] and kw != "StudyInstanceUID" and kw in ds:
                delattr(ds, kw)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def _mask(n: int, h: int, w: int) -> np.ndarray:
    mask = np.zeros((n, h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for k in range(n):
        mask[k] = (yy - h / 2) ** 2 + (xx - w / 3 - k % 3) ** 2 <= (min(h, w) / 5) ** 2
    return mask


@pytest.fixture(scope="module")
def segs(tmp_path_factory) -> dict:
    """kind -> (source path, case, mask, SEG path), each SEG written after decoding its source's pixels."""
    tmp = tmp_path_factory.mktemp("segs")
    sources = {kind: dcm_file(name) for kind, name in SOURCES.items()}
    sources[STRIPPED] = str(_strip_patient_and_study(dcm_file("CT_small.dcm"), tmp / "stripped.dcm"))
    out = {}
    for kind, path in sources.items():
        (case,) = discover(path)
        assert case.kind == "dicom", (kind, case.reason)
        frames = LoadCase()(case).frames  # decodes the pixel data (every transfer syntax)
        n, _, h, w = frames.shape
        mask = _mask(n, h, w)
        seg = write_dicom_seg(mask, case.headers, tmp / f"{Path(path).stem}_seg.dcm")
        out[kind] = (path, case, mask, seg)
    return out


def test_every_transfer_syntax_pydicom_supports_decodes_with_the_pinned_plugins():
    """Each transfer syntax pydicom has a decoder for has an installed backend, and the plugins that provide them
    are pinned in requirements.txt at the installed versions."""
    from pydicom.pixels import get_decoder
    from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS

    missing = {uid.name: get_decoder(uid).missing_dependencies for uid in _PIXEL_DATA_DECODERS if not get_decoder(uid).is_available}
    assert not missing, missing
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", (REPO / "requirements.txt").read_text(), re.M))
    for name in DECODER_PLUGINS:
        assert pins.get(name) == metadata.version(name), f"requirements.txt pins {name}=={pins.get(name)}, installed {metadata.version(name)}"


@pytest.mark.parametrize("kind", [*SOURCES, STRIPPED])
def test_seg_reads_back_with_highdicom(segs, kind):
    import highdicom as hd

    path, case, mask, seg_path = segs[kind]
    src = case.headers[0]
    ds = pydicom.dcmread(seg_path)
    seg = hd.seg.segread(seg_path)
    assert ds.Modality == "SEG" and ds.StudyInstanceUID == src.StudyInstanceUID
    assert {u[2] for u in seg.get_source_image_uids()} == {src.SOPInstanceUID}
    back = ds.pixel_array.reshape(mask.shape)  # every frame is encoded, SEG frame k = source frame k
    assert np.array_equal(back, mask)
    if "FrameOfReferenceUID" in src:
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber"):  # type 2: present, empty when unknown
        assert kw in ds, kw
        if kw not in src:
            assert ds[kw].is_empty, (kw, ds[kw].value)
        elif kw in ("PatientID", "PatientName", "AccessionNumber"):
            assert str(ds[kw].value) == str(src[kw].value)
    if kind == STRIPPED:
        assert not any(kw in src for kw in ("PatientID", "PatientName", "StudyDate", "AccessionNumber"))


def _dciodvfy() -> str:
    exe = shutil.which("dciodvfy")
    if exe:
        return exe
    message = "dciodvfy not found: install Debian's dicom3tools (apt-get install dicom3tools)"
    if os.environ.get("MCDRL_REQUIRE_DCIODVFY") == "1":
        pytest.fail(message + "; MCDRL_REQUIRE_DCIODVFY=1 requires it")
    pytest.skip(message)


@pytest.mark.parametrize("kind", [*SOURCES, STRIPPED])
def test_seg_passes_dciodvfy(segs, kind):
    """dicom3tools' IOD validator: no error (warnings about the source's own attributes are allowed)."""
    exe = _dciodvfy()
    seg_path = segs[kind][3]
    proc = subprocess.run([exe, "-new", str(seg_path)], capture_output=True, text=True, timeout=120)
    report = proc.stdout + proc.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, f"{kind} ({Path(segs[kind][0]).name}):\n" + "\n".join(errors)
    print(f"\n{kind} ({Path(segs[kind][0]).name}): dciodvfy 0 errors, {report.count('Warning')} warnings")
