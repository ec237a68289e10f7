"""Tests of the synthetic multi-site endoscopy world (mcdrl.synthetic). Fast: ~10 s on one core."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

try:
    import mcdrl.synthetic  # noqa: F401
except ImportError:  # not pip-installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "custom"))

from mcdrl.networks.prompts import CONFOUNDERS, LESION_CLASSES, NO_LESION
from mcdrl.synthetic import (
    GENERIC_MIXTURE,
    SITES,
    Case,
    DeviceTraits,
    draw_case_params,
    generate_dataset,
    make_site_figure,
    render_case,
    sample_case,
    write_dicom_rgb,
)
from mcdrl.synthetic.device import fov_mask

SIZE = 224


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.fixture(scope="module")
def clean() -> Case:
    return render_case(3, "polyp", [])


def test_case_shapes_and_caption(clean: Case) -> None:
    assert clean.image.shape == (SIZE, SIZE, 3) and clean.image.dtype == np.uint8
    assert clean.mask.shape == (SIZE, SIZE) and clean.mask.dtype == np.uint8
    assert set(np.unique(clean.mask)) <= {0, 1}
    assert clean.caption == "An endoscopy image of a polyp" and clean.confounders == []
    c = render_case(3, "polyp", ["narrow-band imaging", "motion blur"])
    assert c.confounders == ["motion blur", "narrow-band imaging"]  # canonical order
    assert c.caption == "An endoscopy image of a polyp with motion blur and narrow-band imaging"
    assert render_case(1, NO_LESION, ["blood", "mucus", "a far view"]).caption == (
        "An endoscopy image of normal mucosa with a far view, mucus and blood")


def test_determinism() -> None:
    confs = ["motion blur", "mucus", "imaging artifacts", "specular reflection"]
    dev = SITES["C"].device
    a, b = render_case(42, "tumor", confs, dev), render_case(42, "tumor", confs, dev)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    c = render_case(43, "tumor", confs, dev)
    assert a.image.tobytes() != c.image.tobytes() and a.mask.tobytes() != c.mask.tobytes()
    s1, s2 = sample_case(SITES["D"], 7), sample_case(SITES["D"], 7)
    assert s1.image.tobytes() == s2.image.tobytes() and s1.caption == s2.caption
    assert sample_case(SITES["E"], 7).image.tobytes() != s1.image.tobytes()  # sites never share a scene


@pytest.mark.parametrize("confounder", CONFOUNDERS)
def test_each_confounder_changes_image(confounder: str, clean: Case) -> None:
    c = render_case(3, "polyp", [confounder])
    assert c.confounders == [confounder] and confounder in c.caption
    assert _mad(c.image, clean.image) > 0.5, confounder
    fov = fov_mask("circle", 0.47, SIZE) > 0.5
    if confounder == "a near view":
        assert c.mask.sum() > 1.8 * clean.mask.sum()
    elif confounder == "a far view":
        assert 0 < c.mask.sum() < 0.6 * clean.mask.sum()
    else:  # every other confounder leaves the lesion mask untouched
        assert np.array_equal(c.mask, clean.mask)
    img, ref = c.image[fov].astype(np.float32), clean.image[fov].astype(np.float32)
    if confounder == "bright lighting":
        assert img.mean() > ref.mean() + 20
    elif confounder == "dark lighting":
        assert img.mean() < 0.6 * ref.mean()
    elif confounder == "narrow-band imaging":  # red-dominant mucosa becomes green/cyan-dominant
        assert ref[:, 0].mean() > ref[:, 1].mean() + 40 and img[:, 1].mean() > img[:, 0].mean()
    elif confounder == "specular reflection":
        sat = lambda im: int((im.min(axis=-1) >= 245).sum())  # noqa: E731
        assert sat(c.image) > sat(clean.image) + 40
    elif confounder == "motion blur":
        grad = lambda im: float(np.abs(np.diff(im.astype(np.float32), axis=0)).mean() + np.abs(np.diff(im.astype(np.float32), axis=1)).mean())  # noqa: E731,E501
        assert grad(c.image) < 0.85 * grad(clean.image)


def test_lesion_classes_masks() -> None:
    fov = fov_mask("circle", 0.47, SIZE) > 0.5
    areas = {}
    for cls in LESION_CLASSES:
        ms = [render_case(s, cls, []).mask for s in range(3)]
        assert all(m.sum() > 20 for m in ms), cls
        assert all(not (m.astype(bool) & ~fov).any() for m in ms), f"{cls} mask leaks outside the FOV"
        areas[cls] = np.mean([m.sum() for m in ms])
    assert areas["nodule"] < areas["polyp"] < areas["tumor"]
    none = render_case(0, NO_LESION, ["blood"])
    assert none.mask.sum() == 0 and none.lesion_class == NO_LESION


def test_lesion_centroids_spread_over_fov() -> None:
    """Lesions are placed uniformly in the FOV: a centre prior must not localise them."""
    c, r_fov = SIZE / 2, 0.47 * SIZE
    cents = []
    for s in range(90):
        m = render_case(1000 + s, LESION_CLASSES[s % 5], []).mask
        ys, xs = np.nonzero(m)
        cents.append((ys.mean() - c, xs.mean() - c))
    cents = np.array(cents)
    rad = np.hypot(cents[:, 0], cents[:, 1]) / r_fov
    assert rad.mean() > 0.45 and (rad > 0.5).mean() > 0.45, rad.mean()
    quadrant = (cents[:, 0] > 0) * 2 + (cents[:, 1] > 0)
    assert np.bincount(quadrant, minlength=4).min() >= 0.12 * len(cents)


def test_sites_have_distinct_signatures() -> None:
    assert len(SITES) >= 5
    for name, spec in SITES.items():
        assert spec.signature and (spec.signature_confounders or spec.signature_device)
        others = [o for o in SITES.values() if o.name != name]
        for conf in spec.signature_confounders:
            assert spec.confounder_probs[conf] >= 0.4
            assert max(o.confounder_probs.get(conf, 0.0) for o in others) <= 0.15, (name, conf)
        for field in spec.signature_device:
            assert all(getattr(o.device, field) != getattr(spec.device, field) for o in others), (name, field)
    # Empirical rates from the (cheap) label draws: each signature confounder peaks at its site.
    n = 300
    rates = {name: dict.fromkeys(CONFOUNDERS, 0.0) for name in SITES}
    for name, spec in SITES.items():
        for s in range(n):
            for conf in draw_case_params(spec, s)[1]:
                rates[name][conf] += 1 / n
    assert max(SITES, key=lambda k: rates[k]["narrow-band imaging"]) == "A"
    for name, spec in SITES.items():
        for conf in spec.signature_confounders:
            assert max(SITES, key=lambda k: rates[k][conf]) == name, (name, conf)
    g = [draw_case_params(GENERIC_MIXTURE, s) for s in range(200)]
    seen = {c for _, confs, _ in g for c in confs}
    assert seen == set(CONFOUNDERS) and {cls for cls, _, _ in g} == set(LESION_CLASSES + [NO_LESION])


def test_sample_case_site_fields() -> None:
    for name, spec in SITES.items():
        case = sample_case(spec, 5)
        assert case.site == name and case.image.shape == (SIZE, SIZE, 3)
        assert (case.lesion_class == NO_LESION) == (case.mask.sum() == 0)


def test_invalid_names_raise() -> None:
    with pytest.raises(ValueError, match="unknown confounder 'fog'.*motion blur"):
        render_case(0, "polyp", ["fog"])
    with pytest.raises(ValueError, match="unknown lesion class 'ulcer'.*polyp"):
        render_case(0, "ulcer", [])
    with pytest.raises(ValueError, match="cannot both"):
        render_case(0, "polyp", ["a near view", "a far view"])
    with pytest.raises(ValueError):
        render_case(0, "polyp", "motion blur")  # a bare string, not a list
    with pytest.raises(ValueError, match="fov_shape"):
        DeviceTraits(fov_shape="triangle")
    with pytest.raises(ValueError, match="unknown site"):
        generate_dataset("/nonexistent", ["Z"], 1)


def test_generate_dataset_png_dicom_nifti(tmp_path: Path) -> None:
    import nibabel as nib
    import pydicom
    from PIL import Image

    dl_path = generate_dataset(tmp_path, ["A", "C"], 5, seed=1, formats=("png", "dicom", "nifti"), split=(0.6, 0.4))
    dl = json.loads(dl_path.read_text())
    assert dl_path.name == "datalist.json" and len(dl["training"]) == 6 and len(dl["validation"]) == 4
    entries = dl["training"] + dl["validation"]
    assert {e["site"] for e in entries} == {"A", "C"}
    for e in entries:
        assert set(e) >= {"image", "label", "site", "lesion_class", "confounders", "caption"}
        for key in ("image", "label", "image_dicom", "image_nifti", "label_nifti"):
            assert (tmp_path / e[key]).is_file(), e[key]
        img = np.asarray(Image.open(tmp_path / e["image"]))
        lab = np.asarray(Image.open(tmp_path / e["label"]))
        assert img.shape == (SIZE, SIZE, 3) and lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1}
        assert (e["lesion_class"] == NO_LESION) == (lab.sum() == 0)
        assert e["lesion_class"] in e["caption"] or e["lesion_class"] == NO_LESION
        ds = pydicom.dcmread(tmp_path / e["image_dicom"])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.1" and ds.PhotometricInterpretation == "RGB"
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID and len(ds.PixelSpacing) == 2
        assert np.array_equal(ds.pixel_array, img)
        assert ds.PatientName.family_name == "SYNTHETIC"
        nimg = np.asarray(nib.load(tmp_path / e["image_nifti"]).dataobj)
        nlab = np.asarray(nib.load(tmp_path / e["label_nifti"]).dataobj)
        assert np.array_equal(nimg, img.transpose(1, 0, 2)) and np.array_equal(nlab, lab.T)
    # Same seed -> identical bytes on disk (PNG) and identical datalist.
    dl2 = generate_dataset(tmp_path / "again", ["A", "C"], 5, seed=1, split=(0.6, 0.4))
    e0 = dl["training"][0]
    assert (tmp_path / e0["image"]).read_bytes() == (tmp_path / "again" / e0["image"]).read_bytes()
    assert json.loads(dl2.read_text())["training"][0]["caption"] == e0["caption"]
    assert not list(tmp_path.rglob("*.tmp*")) and not list(tmp_path.rglob(".*"))  # no temp files left


def test_write_dicom_multiframe(tmp_path: Path) -> None:
    import pydicom

    frames = [render_case(s, "polyp", ["motion blur"]).image for s in range(3)]
    p = write_dicom_rgb(tmp_path / "video.dcm", frames=frames, series_uid="1.2.3.4", study_uid="1.2.3")
    ds = pydicom.dcmread(p)
    assert int(ds.NumberOfFrames) == 3 and ds.pixel_array.shape == (3, SIZE, SIZE, 3)
    assert ds.SeriesInstanceUID == "1.2.3.4" and ds.StudyInstanceUID == "1.2.3"
    assert np.array_equal(ds.pixel_array[1], frames[1])
    one = pydicom.dcmread(write_dicom_rgb(tmp_path / "one.dcm", frames[0]))
    assert one.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.1" and "NumberOfFrames" not in one
    with pytest.raises(ValueError):
        write_dicom_rgb(tmp_path / "bad.dcm", frames[0], frames=frames)


def test_cli_and_figure(tmp_path: Path) -> None:
    from mcdrl.synthetic.__main__ import main

    assert main(["--out", str(tmp_path / "ds"), "--sites", "B", "--n", "2", "--seed", "3"]) == 0
    assert len(json.loads((tmp_path / "ds" / "datalist.json").read_text())["training"]) == 2
    fig = make_site_figure(tmp_path / "fig.png", sites=["A"], n_per_site=2)
    assert fig.is_file() and 10_000 < fig.stat().st_size < 1_500_000


def test_speed_report(capsys: pytest.CaptureFixture) -> None:
    """Speed is reported, not asserted (target: <= ~20 ms per 224 px frame on one core).

    CPU time (process_time) is reported next to wall time: on a shared machine wall time varies.
    """
    rng = np.random.default_rng(0)
    jobs = [(s, LESION_CLASSES[s % 5], draw_case_params(GENERIC_MIXTURE, s)[1]) for s in range(30)]
    clean_jobs = [(int(rng.integers(1 << 30)), "polyp", []) for _ in range(20)]
    render_case(0, "polyp", [])
    res = {}
    for name, js in (("clean", clean_jobs), ("generic mix", jobs)):
        t, c = time.perf_counter(), time.process_time()
        for j in js:
            render_case(*j)
        res[name] = ((time.perf_counter() - t) / len(js) * 1000, (time.process_time() - c) / len(js) * 1000)
    with capsys.disabled():
        print("\n[mcdrl.synthetic] render_case at %dpx, ms/frame (wall / cpu): " % SIZE
              + ", ".join(f"{k} {w:.1f} / {c:.1f}" for k, (w, c) in res.items()))


def test_centre_prior_does_not_localise() -> None:
    """Issue 3: lesions anywhere in the FOV, so picking the central 25% of patches scores <= 1.5x the lesion area."""
    import torch
    import torch.nn.functional as F

    from mcdrl.evaluation.clip_probe import localisation_ratios
    from mcdrl.synthetic import GENERIC_MIXTURE, sample_case

    fracs = []
    for s in range(120):
        m = sample_case(GENERIC_MIXTURE, seed=50_000 + s, size=160).mask
        if m.any():
            fracs.append(F.adaptive_avg_pool2d(torch.from_numpy(m).float()[None, None], 10).flatten(1))
    ratios = localisation_ratios(torch.rand(len(fracs), 100), torch.cat(fracs), 0.25, 10)
    assert ratios["centre_prior"] <= 1.5, ratios
    assert 0.8 <= ratios["random"] <= 1.2, ratios


# ----------------------------------------------------------------------------- byte-identity pins
#: sha256 of the image and mask bytes of a spread of cases, recorded with GENERATOR_VERSION 3 before the confounder
#: effects became functions of any image (mcdrl.synthetic.confounders). Re-record only with a GENERATOR_VERSION bump:
#: ``PYTHONPATH=custom python tests/test_synthetic.py --write-pins``.
PINS = Path(__file__).with_name("data") / "synthetic_pins.json"


def pin_cases() -> dict[str, object]:
    """Case id -> a zero-argument function rendering it: every site A-F and the generic mixture (3 seeds at 224, one
    at 96; two more of the mixture at 160), every confounder alone at 224 and 96, each lesion class clean, and mixes
    on the sites' devices."""
    cases: dict[str, object] = {}
    for spec in list(SITES.values()) + [GENERIC_MIXTURE]:
        for seed, size in ((0, 224), (1, 224), (2, 224), (0, 96)):
            cases[f"site-{spec.name}-s{seed}-{size}"] = lambda spec=spec, seed=seed, size=size: sample_case(
                spec, seed, size)
    for seed in (3, 4):  # the CLIP input size
        cases[f"site-generic-s{seed}-160"] = lambda seed=seed: sample_case(GENERIC_MIXTURE, seed, 160)
    for size in (224, 96):
        for conf in CONFOUNDERS:
            cases[f"alone-{conf}-{size}"] = lambda conf=conf, size=size: render_case(3, "polyp", [conf], size=size)
    for cls in LESION_CLASSES + [NO_LESION]:
        cases[f"clean-{cls}-224"] = lambda cls=cls: render_case(21, cls, [])
    mixes = [
        (11, "tumor", ["motion blur", "imaging artifacts", "uneven lighting", "mucus", "specular reflection"], "C"),
        (12, "inflammation", ["dark lighting", "narrow-band imaging", "a far view", "blood"], "D"),
        (13, "nodule", ["bright lighting", "white light imaging", "a near view", "specular reflection", "mucus"], "E"),
        (14, "cyst", ["blood", "mucus", "narrow-band imaging", "uneven lighting", "motion blur"], "F"),
        (15, NO_LESION, ["motion blur", "imaging artifacts", "dark lighting", "uneven lighting", "white light imaging",
                         "a near view", "mucus", "blood", "specular reflection"], "B"),
        (16, "polyp", ["bright lighting", "narrow-band imaging", "a far view", "mucus", "blood", "specular reflection",
                       "imaging artifacts", "motion blur", "uneven lighting"], "A"),
    ]
    for seed, cls, confs, site in mixes:
        for size in (224, 96):
            cases[f"mix-{seed}-{site}-{size}"] = lambda seed=seed, cls=cls, confs=confs, site=site, size=size: (
                render_case(seed, cls, confs, SITES[site].device, size))
    return cases


def _digest(case: Case) -> dict[str, str]:
    import hashlib

    sha = lambda a: hashlib.sha256(a.tobytes()).hexdigest()  # noqa: E731
    return {"image": sha(case.image), "mask": sha(case.mask),
            "shape": "x".join(map(str, case.image.shape))}


def write_pins() -> None:
    from mcdrl.synthetic import GENERATOR_VERSION

    pins = {"generator_version": GENERATOR_VERSION, "cases": {k: _digest(f()) for k, f in pin_cases().items()}}
    PINS.parent.mkdir(exist_ok=True)
    PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")


def test_generator_bytes_are_pinned() -> None:
    """The generator renders the pinned bytes for every pinned case (the demo CLIP and model were trained on them).

    The bytes also depend on numpy and Pillow (Pillow's JPEG codec for imaging artifacts, its drawing and resizing):
    a failure after upgrading them, with the generator untouched, means the library changed the pixels."""
    from mcdrl.synthetic import GENERATOR_VERSION

    pins = json.loads(PINS.read_text())
    assert pins["generator_version"] == GENERATOR_VERSION == 3
    cases = pin_cases()
    assert set(pins["cases"]) == set(cases) and len(cases) >= 72
    changed = [k for k, f in cases.items() if _digest(f()) != pins["cases"][k]]
    assert not changed, f"{len(changed)} of {len(cases)} cases render different bytes: {changed[:8]}"


if __name__ == "__main__" and sys.argv[1:] == ["--write-pins"]:
    write_pins()
