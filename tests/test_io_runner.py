"""FolderInferenceRunner on a messy export folder, with the tiny network from the tiny_world fixture.

One run over the mixed folder of test_io_helpers (good and bad files side by side) feeds most tests: statuses,
outputs, round trips (NIfTI, DICOM SEG read back with highdicom and pydicom), MONAI loading, agreement with the
bundle's own preprocessing, the summary, and that no patient data leaks.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import LoadImage
from PIL import Image

from conftest import BUNDLE
from mcdrl.io import FolderInferenceRunner, LoadCase, discover
from test_io_helpers import (EXPECTED, SECRET_ID, SECRET_NAME, SERIES_A, SERIES_VIDEO, build_tiny_net, make_mixed_folder, pydicom_dir,
                             rgb_frames)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def net(tiny_world):
    return build_tiny_net(tiny_world)


@pytest.fixture(scope="module")
def mixed(net, tmp_path_factory):
    """Run the runner once over the mixed folder (strict=False), recording logs, warnings and model calls."""
    tmp = tmp_path_factory.mktemp("mixed")
    folder, out = make_mixed_folder(tmp / "in"), tmp / "out"
    calls: list[int] = []
    real = type(net).predict_with_confounders

    def spy(x, **kwargs):
        calls.append(x.shape[0])
        return real(net, x, **kwargs)

    net.predict_with_confounders = spy
    handler, root = _Records(), logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = FolderInferenceRunner(net, "cpu", out, strict=False, batch_size=4, progress=False).run(folder)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        del net.predict_with_confounders
    text = "\n".join(handler.lines + [str(w.message) for w in caught])
    return {"in": folder, "out": out, "results": {r.input: r for r in results}, "log": text, "calls": calls}


def _out(mixed, rel: str) -> Path:
    return mixed["out"] / rel


def test_every_input_gets_its_expected_status_and_one_summary_line(mixed):
    assert {k: r.status for k, r in mixed["results"].items()} == EXPECTED
    with open(mixed["out"] / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["input"]: r["status"] for r in rows} == EXPECTED and len(rows) == len(EXPECTED)
    doc = json.loads((mixed["out"] / "summary.json").read_text(encoding="utf-8"))
    assert doc["complete"] is True and doc["counts"] == {s: list(EXPECTED.values()).count(s) for s in ("ok", "error", "skipped")}


@pytest.mark.parametrize("name, words", [
    ("bad/truncated.dcm", "truncated"), ("bad/zero.dcm", "empty file (0 bytes)"), ("bad/notes.dcm", "not a DICOM file"),
    ("bad/report_sr.dcm", "Basic Text SR Storage: no pixel data"), ("bad/example4d.nii.gz", "4-D NIfTI"),
    ("bad/huge.png", "8193 x 2 px; the limit is 8192"), ("README.txt", "not an image"),
])
def test_bad_inputs_get_one_clear_reason(mixed, name, words):
    assert words in mixed["results"][name].reason


def test_handled_oddities_are_processed_with_a_warning(mixed):
    r = mixed["results"]
    assert "alpha channel dropped" in r["rgba.png"].warnings
    assert any("non-finite" in w for w in r["nan.nii.gz"].warnings)
    assert r["grey16.png"].status == "ok" and r["endo scan é ü.jpg"].case == "endo scan é ü"


def test_outputs_are_exactly_the_listed_files_and_nothing_is_half_written(mixed):
    out = mixed["out"]
    listed = {p for r in mixed["results"].values() for p in r.outputs} | {"summary.csv", "summary.json"}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == listed  # no temporary files, no strays
    r = mixed["results"]
    assert r["photo0.png"].outputs == ["photo0_mask.png"] and r["endo scan é ü.jpg"].outputs == ["endo scan é ü_mask.png"]
    assert r["anatomical.nii"].outputs == ["anatomical_mask.nii.gz"]
    assert r["endo/video.dcm"].outputs == [f"dicom/{SERIES_VIDEO}_mask.nii.gz", f"dicom/{SERIES_VIDEO}_seg.dcm"]
    assert all(not r[k].outputs for k, v in EXPECTED.items() if v != "ok")


def test_monailabel_label_folders_are_skipped_as_one_line(mixed):
    r = mixed["results"]["studies/labels/"]
    assert r.status == "skipped" and r.reason == "MONAI Label's label masks (final, original), not images"
    assert not any(k.startswith("studies/labels/") and k != "studies/labels/" for k in mixed["results"])
    assert mixed["results"]["studies/case0.png"].outputs == ["studies/case0_mask.png"]


def test_dicom_without_patient_id_gets_a_valid_seg_with_empty_type2_attributes(mixed):
    import highdicom as hd

    r = mixed["results"]["anon/ExplVR_BigEnd.dcm"]
    assert r.status == "ok" and r.outputs[1].endswith("_seg.dcm"), r.reason
    src = pydicom.dcmread(mixed["in"] / "anon" / "ExplVR_BigEnd.dcm", stop_before_pixels=True)
    assert "PatientID" not in src and "AccessionNumber" not in src
    seg = pydicom.dcmread(_out(mixed, r.outputs[1]))
    assert seg.PatientID == "" and seg["AccessionNumber"].is_empty and seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.StudyDate == "19970424"  # the source's ACR-NEMA "1997.04.24", written as DICOM DA
    hd.seg.segread(_out(mixed, r.outputs[1]))


def test_every_output_loads_with_monai(mixed):
    for r in mixed["results"].values():
        for rel in r.outputs:
            img = LoadImage(image_only=True)(str(_out(mixed, rel)))
            assert img.numel() > 0 and set(np.unique(img.numpy())) <= {0, 1, 255}, rel


def test_nifti_round_trip_keeps_the_exact_shape_and_affine(mixed):
    for name in ("anatomical.nii", "nan.nii.gz"):
        src = nib.load(mixed["in"] / name)
        mask = nib.load(_out(mixed, mixed["results"][name].outputs[0]))
        assert mask.shape == src.shape and np.array_equal(mask.affine, src.affine)
        assert mask.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_dicom_label_map_has_the_geometry_itkreader_gives_the_series(mixed):
    for name, src in (("ct5n/ (5 files)", mixed["in"] / "ct5n"), ("emri_small.dcm", mixed["in"] / "emri_small.dcm")):
        ref = LoadImage(reader="ITKReader", image_only=True)(str(src))
        mask = nib.load(_out(mixed, mixed["results"][name].outputs[0]))
        assert mask.shape == tuple(ref.shape[:3])
        np.testing.assert_allclose(mask.affine, ref.affine.numpy(), atol=1e-4)


def _read_validated(path: Path):
    settings = pydicom.config.settings
    old = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    try:
        ds = pydicom.dcmread(path)  # force=False: needs the DICOM preamble and file meta
        ds.pixel_array  # noqa: B018 - decodes
        return ds
    finally:
        settings.reading_validation_mode = old


@pytest.mark.parametrize("name", ["ct5n/ (5 files)", "emri_small.dcm", "endo/video.dcm", "endo/still_a.dcm"])
def test_dicom_seg_round_trip_references_and_geometry(mixed, name):
    import highdicom as hd

    r = mixed["results"][name]
    seg_path = _out(mixed, r.outputs[1])
    case = next(c for c in discover(mixed["in"]) if c.input == name)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in case.files]
    ds = _read_validated(seg_path)  # pydicom's validation
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID and ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    seg = hd.seg.segread(seg_path)
    assert {u[2] for u in seg.get_source_image_uids()} == {s.SOPInstanceUID for s in sources}
    assert {u[1] for u in seg.get_source_image_uids()} == {sources[0].SeriesInstanceUID}
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    desc = seg.get_segment_description(1)
    assert desc.segment_label == "Lesion" and desc.segmented_property_type.value == "52988006" and desc.segmented_property_type.scheme_designator == "SCT"
    assert desc.segmented_property_category.value == "49755003"
    label = np.asarray(nib.load(_out(mixed, r.outputs[0])).dataobj)
    expected = np.transpose(label, (2, 1, 0))  # (frame, row, column), as the SEG stores it
    if len(sources) > 1:  # a stack with a patient geometry
        back = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in sources])[..., 0]
        assert ds.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
        by_uid = {s.SOPInstanceUID: s for s in sources}
        for frame in ds.PerFrameFunctionalGroupsSequence:  # each SEG frame sits where the slice it derives from sits
            ref = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
            np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                       [float(v) for v in ref.ImagePositionPatient], atol=1e-4)
        np.testing.assert_allclose([float(v) for v in ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient],
                                   [float(v) for v in sources[0].ImageOrientationPatient], atol=1e-6)
    elif case.frames > 1:  # video / multi-frame without a geometry: frame k -> source frame k
        back = seg.get_pixels_by_source_frame(sources[0].SOPInstanceUID, source_frame_numbers=list(range(1, case.frames + 1)))[..., 0]
    else:
        back = seg.get_pixels_by_source_instance([sources[0].SOPInstanceUID])[..., 0]
    assert back.shape == expected.shape and np.array_equal(back.astype(np.uint8), expected)
    assert int(ds.NumberOfFrames) == case.frames


def test_photo_masks_equal_the_bundle_preprocessing_plus_network(mixed, net):
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    load = LoadCase()
    cases = {c.input: c for c in discover(mixed["in"])}
    for name in ("photo0.png", "rgba.png", "grey16.png", "endo scan é ü.jpg"):
        x = pre({"image": str(mixed["in"] / name)})["image"]
        assert torch.equal(load(cases[name]).frames[0], x.as_tensor())  # identical model input
        with torch.inference_mode():
            ref = net(x.as_tensor()[None]).argmax(1)[0].numpy().astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(_out(mixed, mixed["results"][name].outputs[0]))), ref), name


def test_dicom_rgb_mask_orientation_matches_a_direct_network_call(mixed, net):
    from mcdrl.transforms import ToModelInput

    ds = pydicom.dcmread(mixed["in"] / "endo" / "still_a.dcm")
    x = ToModelInput()(torch.as_tensor(ds.pixel_array).permute(2, 0, 1))
    with torch.inference_mode():
        ref = net(x[None]).argmax(1)[0].numpy()
    label = np.asarray(nib.load(_out(mixed, mixed["results"]["endo/still_a.dcm"].outputs[0])).dataobj)
    assert label.shape == (64, 48, 1) and np.array_equal(label[:, :, 0].T, ref)


def test_lesion_area_and_top_confounders(mixed, net):
    r = mixed["results"]
    for res in (x for x in r.values() if x.status == "ok"):
        mask = np.asarray(nib.load(_out(mixed, res.outputs[0])).dataobj) if res.outputs[0].endswith(".nii.gz") else np.asarray(Image.open(_out(mixed, res.outputs[0])))
        assert res.lesion_area_px == int(mask.sum())
        names = [n for n, _ in res.top_confounders]
        weights = [w for _, w in res.top_confounders]
        assert len(names) == 3 and set(names) <= set(net.confounder_names) and weights == sorted(weights, reverse=True)
    assert r["ct5n/ (5 files)"].lesion_area_mm2 == pytest.approx(r["ct5n/ (5 files)"].lesion_area_px * 0.488281**2, rel=1e-5)
    assert r["photo0.png"].lesion_area_mm2 is None and r["emri_small.dcm"].lesion_area_mm2 is None
    assert r["endo/still_b.dcm"].lesion_area_mm2 == pytest.approx(r["endo/still_b.dcm"].lesion_area_px * 0.01)  # 0.1 mm pixels
    x = LoadCase()(next(c for c in discover(mixed["in"] / "photo1.png")))
    _, w = net.predict_with_confounders(x.frames)
    top = torch.argsort(w[0], descending=True)[:3]
    assert [n for n, _ in r["photo1.png"].top_confounders] == [net.confounder_names[i] for i in top]


def test_model_calls_are_batched_and_cover_every_frame(mixed):
    frames = sum(r.frames for r in mixed["results"].values() if r.status == "ok")
    assert sum(mixed["calls"]) == frames and max(mixed["calls"]) == 4 and len(mixed["calls"]) < frames


def test_same_size_inputs_share_batches(net, tmp_path):
    from mcdrl.synthetic import write_dicom_rgb

    for i in range(3):
        Image.fromarray(rgb_frames(1, 64, 80, seed=i)[0]).save(tmp_path / f"p{i}.png")
    write_dicom_rgb(tmp_path / "v.dcm", rgb_frames(5))  # 5 frames of 48 x 64
    calls = []
    real = type(net).predict_with_confounders
    net.predict_with_confounders = lambda x, **kw: calls.append(x.shape[0]) or real(net, x, **kw)
    try:
        FolderInferenceRunner(net, "cpu", tmp_path / "out", batch_size=4, progress=False).run(tmp_path)
    finally:
        del net.predict_with_confounders
    assert calls == [4, 1, 3]  # the video in chunks of 4, the three photos in one call


def test_no_patient_data_in_logs_summary_or_file_names(mixed):
    secrets = [SECRET_ID, "Doe", "John", "Evil", "etc^"]
    texts = [mixed["log"], (mixed["out"] / "summary.csv").read_text(encoding="utf-8"), (mixed["out"] / "summary.json").read_text(encoding="utf-8")]
    names = [p.as_posix() for p in mixed["out"].rglob("*")]
    for s in secrets:
        assert not any(s in t for t in texts + names), s
    assert mixed["results"]["endo/still_a.dcm"].case == f"dicom/{SERIES_A}"
    seg = pydicom.dcmread(_out(mixed, mixed["results"]["endo/still_a.dcm"].outputs[1]))
    assert "\\".join(str(v) for v in seg.PatientName) == SECRET_NAME and seg.PatientID == SECRET_ID  # the SEG belongs to its patient
    n = len(EXPECTED)
    assert "[1/%d]" % n in mixed["log"] and "[%d/%d]" % (n, n) in mixed["log"]  # one progress line per case


def test_strict_run_exits_nonzero_after_writing_everything(net, tmp_path):
    Image.fromarray(rgb_frames(1)[0]).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(SystemExit) as e:
        FolderInferenceRunner(net, "cpu", tmp_path / "out", strict="true", progress=False).run(tmp_path)
    assert "1 case(s) ok, 1 failed" in str(e.value.code) and (tmp_path / "out" / "good_mask.png").is_file()
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv", encoding="utf-8")))
    assert [(r["input"], r["status"]) for r in rows] == [("broken.png", "error"), ("good.png", "ok")]
    results = FolderInferenceRunner(net, "cpu", tmp_path / "out2", strict="false", progress=False).run(tmp_path)  # no SystemExit
    assert sorted((r.input, r.status) for r in results) == [("broken.png", "error"), ("good.png", "ok"), ("out/", "skipped")]  # out/: the first run's


def test_a_failing_writer_leaves_no_partial_output(net, tmp_path, monkeypatch):
    import mcdrl.io.dicom_seg as dicom_seg
    from mcdrl.io.writers import atomic_output
    from mcdrl.synthetic import write_dicom_rgb

    def broken(mask, sources, path, **kw):
        with atomic_output(path) as tmp:
            Path(tmp).write_bytes(b"half a SEG")
            raise OSError("disk full")

    monkeypatch.setattr(dicom_seg, "write_dicom_seg", broken)
    write_dicom_rgb(tmp_path / "in" / "x.dcm", rgb_frames(1), series_uid="1.2.3.4")
    (res,) = FolderInferenceRunner(net, "cpu", tmp_path / "out", strict=False, progress=False).run(tmp_path / "in")
    assert res.status == "error" and "disk full" in res.reason and res.outputs == []
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["summary.csv", "summary.json"]


def test_a_single_file_works_like_a_folder(net, tmp_path):
    src = pydicom_dir("dicomdirtests", "98892003", "MR2", "4950")  # one slice of a 3-plane localizer
    (res,) = FolderInferenceRunner(net, "cpu", tmp_path, progress=False).run(src)
    assert res.status == "ok" and res.frames == 1 and nib.load(tmp_path / res.outputs[0]).shape == (16, 16, 1)


def test_a_folder_without_images_is_an_input_error(net, tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match="no images under"):
        FolderInferenceRunner(net, "cpu", tmp_path / "out", progress=False).run(tmp_path)


def test_progress_bar_on_request(capsys):
    from mcdrl.io.summary import CaseResult, Progress

    p = Progress(2, enabled=True)
    p.update(CaseResult("a", "a.png", "image", "ok", frames=1, lesion_area_px=3, seconds=0.1))
    p.update(CaseResult("b", "b.png", "error", "error", reason="empty file (0 bytes)"))
    p.close()
    err = capsys.readouterr().err
    assert "2/2" in err and "ERROR b.png: empty file (0 bytes)" in err
