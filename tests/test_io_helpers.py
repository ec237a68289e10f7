"""Shared helpers of the clinical I/O tests (tests/test_io_*.py): the tiny network and a messy export folder.

The folder mixes files we did not write (pydicom's and pydicom-data's test DICOMs, nibabel's test NIfTIs) with RGB
endoscopy DICOMs from our synthetic generator and the bad inputs of the issue. ``EXPECTED`` says what each input
must become. No tests here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from conftest import BUNDLE, TINY_OVERRIDES

#: PatientName / PatientID of one DICOM in the mixed folder: must never reach a file name, a log or the summary
SECRET_NAME = "Doe/../../etc^John\\Evil"
SECRET_ID = "PID-SECRET-4711"
SERIES_A = "1.2.826.0.1.3680043.8.498.1001"  # RGB still, with the secret patient name
SERIES_B = "1.2.826.0.1.3680043.8.498.1002"  # RGB still, another series in the same folder
SERIES_VIDEO = "1.2.826.0.1.3680043.8.498.1003"  # RGB video, 5 frames

#: input (relative path, or folder for a series) -> expected status; "ok" cases are processed
EXPECTED = {
    "photo0.png": "ok", "photo1.png": "ok", "photo2.png": "ok",
    "rgba.png": "ok", "grey16.png": "ok", "endo scan é ü.jpg": "ok",
    "endo/still_a.dcm": "ok", "endo/still_b.dcm": "ok", "endo/video.dcm": "ok",
    "ct5n/ (5 files)": "ok", "emri_small.dcm": "ok", "anatomical.nii": "ok", "nan.nii.gz": "ok",
    "bad/truncated.dcm": "error", "bad/zero.dcm": "error", "bad/notes.dcm": "error", "bad/report_sr.dcm": "error",
    "bad/example4d.nii.gz": "error", "bad/huge.png": "error", "README.txt": "skipped",
    "anon/ExplVR_BigEnd.dcm": "ok",  # big endian US without PatientID (and with ACR-NEMA style dates)
    "studies/case0.png": "ok", "studies/labels/": "skipped",  # a MONAI Label studies folder: its masks are no images
}


def build_tiny_net(world: dict, bundle_root: Path | None = None):
    """MCDRLNet from the tiny CLIP of ``tiny_world``, built through inference.json's ``network_def`` with overrides."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({**TINY_OVERRIDES, **tiny_inference_overrides(world, bundle_root or world["root"] / "unused_bundle")})
    return parser.get_parsed_content("network_def").eval()


def tiny_inference_overrides(world: dict, bundle_root: Path) -> dict:
    return {**TINY_OVERRIDES, "bundle_root": str(bundle_root), "clip_weights": str(world["weights"]), "dictionary_path": str(world["dictionary"])}


def save_bundle_root(net, root: Path) -> Path:
    """A bundle_root whose models/model.pt is ``net``'s bare state_dict (what the inference CLI loads)."""
    import torch

    (root / "models").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def dcm_file(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    assert path, f"pydicom test file {name} not found (pip install pydicom-data)"
    return str(path)


def pydicom_dir(*parts: str) -> Path:
    return Path(dcm_file("CT_small.dcm")).parent.joinpath(*parts)


def nibabel_data(name: str) -> str:
    import nibabel

    return os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", name)


def rgb_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8 reddish frames with a lighter disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.stack([150 + 40 * rng.random((h, w)), 60 + 20 * rng.random((h, w)), 50 + 20 * rng.random((h, w))], -1)
        disc = (yy - h // 2 - i) ** 2 + (xx - w // 2) ** 2 <= (min(h, w) // 5) ** 2
        img[disc] = [230, 160, 150]
        out[i] = img.astype(np.uint8)
    return out


def make_mixed_folder(root: Path) -> Path:
    """The messy export folder of ``EXPECTED`` (returns ``root``)."""
    import nibabel as nib
    from PIL import Image

    from mcdrl.synthetic import write_dicom_rgb

    root.mkdir(parents=True, exist_ok=True)
    frames = rgb_frames(5)
    for i in range(3):
        Image.fromarray(rgb_frames(1, 64, 80, seed=10 + i)[0]).save(root / f"photo{i}.png")
    rgba = np.concatenate([rgb_frames(1, 40, 40, seed=20)[0], np.full((40, 40, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.fromarray((np.arange(36 * 52).reshape(36, 52) * 30).astype(np.uint16)).save(root / "grey16.png")
    Image.fromarray(rgb_frames(1, 30, 44, seed=30)[0]).save(root / "endo scan é ü.jpg", quality=95)
    endo = root / "endo"  # two series (and a video) in one folder
    write_dicom_rgb(endo / "still_a.dcm", frames[0], series_uid=SERIES_A, patient_name=SECRET_NAME, patient_id=SECRET_ID)
    write_dicom_rgb(endo / "still_b.dcm", frames[1], series_uid=SERIES_B, study_uid=None)
    write_dicom_rgb(endo / "video.dcm", frames=list(frames), series_uid=SERIES_VIDEO)
    shutil.copytree(pydicom_dir("dicomdirtests", "98892001", "CT5N"), root / "ct5n")
    shutil.copy(dcm_file("emri_small.dcm"), root / "emri_small.dcm")
    shutil.copy(nibabel_data("anatomical.nii"), root / "anatomical.nii")
    vol = np.random.default_rng(1).normal(100, 20, (20, 24, 3)).astype(np.float32)
    vol[3, 4, 1] = np.nan
    nib.save(nib.Nifti1Image(vol, np.diag([0.5, 0.5, 2.0, 1.0])), root / "nan.nii.gz")
    bad = root / "bad"
    bad.mkdir()
    raw = Path(dcm_file("CT_small.dcm")).read_bytes()
    (bad / "truncated.dcm").write_bytes(raw[: len(raw) // 2])
    (bad / "zero.dcm").write_bytes(b"")
    (bad / "notes.dcm").write_text("exported by the recorder, not an image\n")
    shutil.copy(dcm_file("reportsi.dcm"), bad / "report_sr.dcm")
    shutil.copy(nibabel_data("example4d.nii.gz"), bad / "example4d.nii.gz")
    Image.new("L", (8193, 2)).save(bad / "huge.png")
    (root / "README.txt").write_text("export notes\n")
    (root / "anon").mkdir()
    shutil.copy(dcm_file("ExplVR_BigEnd.dcm"), root / "anon" / "ExplVR_BigEnd.dcm")
    studies = root / "studies"  # MONAI Label's datastore layout, as a server leaves it (no datastore_v2.json yet)
    for tag in ("final", "original"):
        (studies / "labels" / tag).mkdir(parents=True)
        Image.fromarray((rgb_frames(1, 32, 40, seed=40)[0, ..., 0] > 200).astype(np.uint8)).save(studies / "labels" / tag / "case0.png")
    Image.fromarray(rgb_frames(1, 32, 40, seed=40)[0]).save(studies / "case0.png")
    return root
