"""Series discovery and readers on files we did not write: pydicom's test DICOMs, pydicom-data, nibabel's NIfTIs.

No network here: what a folder is made of, and the geometry and model input each case gets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Compose, LoadImage

from mcdrl.io import DiscoverCasesd, LoadCase, LoadCased, WriteDicomSegd, discover
from mcdrl.io.cases import quiet_dicom
from mcdrl.io.dicom_series import safe_uid
from test_io_helpers import dcm_file, nibabel_data, pydicom_dir


def _series_uids(folder: Path) -> set[str]:
    out = set()
    for f in folder.rglob("*"):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - README, DICOMDIR without the preamble, ...
            continue
        if "PixelData" in pydicom.dcmread(f, defer_size=64) and "SeriesInstanceUID" in ds:
            out.add(str(ds.SeriesInstanceUID))
    return out


def test_dicomdirtests_every_series_found_and_every_other_file_has_one_line():
    root = pydicom_dir("dicomdirtests")
    cases = discover(root)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    covered = sorted(f.relative_to(root).as_posix() for c in cases for f in c.files)
    assert covered == files  # nothing disappears: each file is in a case, an error line or a skip line
    assert {c.series_uid for c in cases if c.kind == "dicom"} == _series_uids(root)
    by_input = {c.input: c for c in cases}
    assert by_input["DICOMDIR"].kind == "skipped" and "DICOMDIR" in by_input["DICOMDIR"].reason
    assert by_input["README.txt"].kind == "skipped"
    headerless = [c for c in cases if c.input.startswith("TINY_ALPHA/PT000000")]
    assert len(headerless) == 50 and all(c.kind == "error" and "no pixel data" in c.reason for c in headerless)
    ct = [c for c in cases if c.input.startswith("98892001/CT5N")]
    assert len(ct) == 1 and ct[0].frames == 5 and ct[0].name == "dicom/" + ct[0].series_uid


def test_three_series_in_one_folder_are_separated_and_mixed_orientations_not_stacked():
    mr2 = pydicom_dir("dicomdirtests", "98892003", "MR2")
    cases = discover(mr2)
    assert len({c.series_uid for c in cases}) == 3 == len(_series_uids(mr2))
    # series ...136 holds a 3-plane localizer: three orientations, so three 2-D cases, not a bogus volume
    loc = [c for c in cases if c.series_uid.endswith(".136")]
    assert len(loc) == 3 and all(c.frames == 1 and c.name.startswith(f"dicom/{c.series_uid}/") for c in loc)
    assert len({c.name for c in cases}) == len(cases)


@pytest.mark.parametrize("source", ["ct5n", "CT_small.dcm", "eCT_Supplemental.dcm", "emri_small.dcm", "SC_rgb_2frame.dcm", "US1_UNCR.dcm"])
def test_label_map_geometry_equals_itkreader_of_the_series(source, tmp_path):
    """Our (column, row, frame) label-map shape and RAS affine are what MONAI's ITKReader gives for the same series."""
    path = pydicom_dir("dicomdirtests", "98892001", "CT5N") if source == "ct5n" else Path(dcm_file(source))
    (case,) = discover(path)
    loaded = LoadCase()(case)
    ref = LoadImage(reader="ITKReader", image_only=True)(str(path))
    assert loaded.label_shape == tuple(ref.shape[:3])
    np.testing.assert_allclose(loaded.affine, ref.affine.numpy(), atol=1e-4)
    n, c, h, w = loaded.frames.shape
    assert (n, c, h, w) == (case.frames, 3, *case.size) and loaded.frames.dtype == torch.float32
    assert 0 <= float(loaded.frames.min()) and float(loaded.frames.max()) <= 1


def test_stack_is_sorted_along_the_normal_and_spacing_gives_mm2():
    (case,) = discover(pydicom_dir("dicomdirtests", "98892001", "CT5N"))
    z = [float(h.ImagePositionPatient[2]) for h in case.headers]
    assert z == sorted(z)
    loaded = LoadCase()(case)
    assert loaded.pixel_area_mm2 == pytest.approx(0.488281**2)
    assert not loaded.warnings


def test_non_uniform_slice_spacing_is_a_warning():
    (case,) = discover(pydicom_dir("dicomdirtests", "77654033", "CT2"))
    loaded = LoadCase()(case)
    assert case.frames == 4 and any("non-uniform slice spacing" in w for w in loaded.warnings)


def test_grey_volume_gets_one_intensity_window_for_all_slices():
    from mcdrl.io.readers import _grey_volume

    vol = np.stack([np.zeros((8, 8)), np.full((8, 8), 1000.0), np.linspace(0, 1000, 64).reshape(8, 8)]).astype(np.int16)
    x = _grey_volume(vol)
    assert x.shape == (3, 3, 8, 8)
    assert float(x[0].max()) == 0.0 and float(x[1].min()) == 1.0  # a flat slice is not stretched on its own
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey replicated to 3 channels


def test_emri_small_multiframe_is_a_volume_without_known_spacing():
    (case,) = discover(dcm_file("emri_small.dcm"))
    loaded = LoadCase()(case)
    assert case.kind == "dicom" and case.frames == 10 and loaded.frames.shape == (10, 3, 64, 64)
    assert loaded.pixel_area_mm2 is None  # no PixelSpacing anywhere in this file


def test_nibabel_files_2d_3d_rgb_and_4d(tmp_path):
    import nibabel as nib

    from mcdrl.synthetic import write_nifti

    (anat,) = discover(nibabel_data("anatomical.nii"))
    loaded = LoadCase()(anat)
    src = nib.load(nibabel_data("anatomical.nii"))
    assert loaded.frames.shape == (25, 3, 41, 33) and loaded.label_shape == src.shape
    assert np.array_equal(loaded.affine, src.affine) and loaded.pixel_area_mm2 == pytest.approx(4.0)
    for name, shape in (("example4d.nii.gz", "(128, 96, 24, 2)"), ("example_nifti2.nii.gz", "(32, 20, 12, 2)")):
        (bad,) = discover(nibabel_data(name))
        assert bad.kind == "error" and f"4-D NIfTI of shape {shape}" in bad.reason
    nib.save(nib.Nifti1Image(np.arange(30, dtype=np.float32).reshape(5, 6), np.eye(4)), tmp_path / "flat2d.nii.gz")
    (flat,) = discover(tmp_path / "flat2d.nii.gz")
    assert flat.frames == 1 and LoadCase()(flat).label_shape == (5, 6)
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[..., 0] = 200
    write_nifti(tmp_path / "rgb.nii.gz", rgb)  # the synthetic generator's RGB layout (W, H, 3)
    (rgb_case,) = discover(tmp_path / "rgb.nii.gz")
    lc = LoadCase()(rgb_case)
    assert lc.frames.shape == (1, 3, 30, 40) and lc.label_shape == (40, 30)
    assert torch.allclose(lc.frames[0, :, 0, 0], torch.tensor([200 / 255, 0, 0]))


@pytest.mark.parametrize("name, expect", [
    ("MR_truncated.dcm", "truncated"),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "no pixel data"),
    ("reportsi.dcm", "Basic Text SR Storage: no pixel data"),
    ("liver.dcm", "a DICOM Segmentation"),
    ("no_meta.dcm", "not a DICOM file"),
])
def test_bad_or_foreign_dicom_files_get_a_clear_line(name, expect):
    (case,) = discover(dcm_file(name))
    assert case.kind in ("error", "skipped") and expect in case.reason, case.reason


def test_jpeg_lossless_decodes_and_a_corrupt_stream_fails_at_load_naming_the_file_and_the_decoder(tmp_path):
    (case,) = discover(dcm_file("SC_rgb_jpeg_gdcm.dcm"))  # JPEG Lossless process 14 (pylibjpeg-libjpeg)
    assert LoadCase()(case).frames.shape == (1, 3, 100, 100)
    ds = pydicom.dcmread(dcm_file("SC_rgb_jpeg_gdcm.dcm"))
    raw = bytes(ds.PixelData)
    start = raw.find(b"\xff\xd8")  # the JPEG stream of the one fragment: overwritten, item tags kept
    ds.PixelData = raw[:start] + b"\x00" * (len(raw) - start)
    ds.save_as(tmp_path / "corrupt_jpeg.dcm")
    (case,) = discover(tmp_path / "corrupt_jpeg.dcm")
    with pytest.raises(ValueError, match=r"^corrupt_jpeg\.dcm: RuntimeError: Unable to decode .* pylibjpeg: .*SOI marker missing"):
        LoadCase()(case)


def test_output_names_come_from_uids_or_paths_never_from_patient_names(tmp_path):
    assert safe_uid("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    for evil in ("../../etc/passwd", "Doe^John", "1.2/../3", "1..2"):
        name = safe_uid(evil)
        assert name.startswith("uid-") and "/" not in name and "Doe" not in name
    a, b = tmp_path / "a.png", tmp_path / "a.jpg"
    from PIL import Image

    Image.new("RGB", (4, 4)).save(a)
    Image.new("RGB", (4, 4)).save(b)
    assert sorted(c.name for c in discover(tmp_path)) == ["a", "a_png"]  # a.jpg -> "a", a.png -> "a_png"


def test_quiet_dicom_restores_pydicom_settings():
    mode = pydicom.config.settings.reading_validation_mode
    with quiet_dicom():
        assert pydicom.config.settings.reading_validation_mode == pydicom.config.IGNORE
    assert pydicom.config.settings.reading_validation_mode == mode


def test_discovery_and_loading_drop_into_compose(tmp_path):
    shutil.copytree(pydicom_dir("dicomdirtests", "98892003", "MR2"), tmp_path / "mr2")
    out = Compose([DiscoverCasesd("image"), LoadCased("image")])({"image": str(tmp_path), "site": "X"})
    assert isinstance(out, list) and len(out) == 7
    assert all(d["site"] == "X" and d["image"].frames.shape[1:] == (3, 16, 16) for d in out)


def test_seg_writer_drops_into_compose_after_discovery(tmp_path):
    import highdicom as hd

    shutil.copytree(pydicom_dir("dicomdirtests", "98892001", "CT5N"), tmp_path / "in")
    (d,) = Compose([DiscoverCasesd("image"), LoadCased("image")])({"image": str(tmp_path / "in")})
    n, _, h, w = d["image"].frames.shape
    d["pred"] = np.zeros((n, h, w), np.uint8)
    d["pred"][2, 4:9, 5:11] = 1
    out = WriteDicomSegd("pred", output_dir=tmp_path / "out")(d)
    seg = hd.seg.segread(out["pred_seg_path"])
    sops = [h.SOPInstanceUID for h in d["image"].case.headers]
    assert np.array_equal(seg.get_pixels_by_source_instance(sops)[..., 0], d["pred"])


def test_monailabel_labels_folder_is_skipped_by_datastore_file_or_by_names(tmp_path):
    from PIL import Image

    ml, own = tmp_path / "ml", tmp_path / "own"
    (ml / "labels" / "reviewer_tag").mkdir(parents=True)
    Image.new("L", (8, 6)).save(ml / "labels" / "reviewer_tag" / "other_name.png")
    Image.new("RGB", (8, 6)).save(ml / "img.png")
    (ml / "datastore_v2.json").write_text("{}")  # MONAI Label's LocalDatastore writes it into the studies folder
    (own / "labels" / "final").mkdir(parents=True)  # a folder of the user's called labels/final, with images of its own
    Image.new("RGB", (8, 6)).save(own / "labels" / "final" / "frame.png")
    Image.new("RGB", (8, 6)).save(own / "img.png")
    cases = {c.input: (c.kind, c.reason) for c in discover(tmp_path)}
    assert cases["ml/labels/"] == ("skipped", "MONAI Label's label masks (reviewer_tag), not images")
    assert cases["own/labels/final/frame.png"][0] == "image" and "ml/labels/reviewer_tag/other_name.png" not in cases
