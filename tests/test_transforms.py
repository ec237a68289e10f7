"""Tests of the augmentation transforms: the 12 dictionary confounders on any frame, and the photometric list.

The real photograph is scikit-image's ``retina.jpg`` (a CC0 fundus photo: red tissue, vessels, a dark border around a
round field of view, like an endoscopy frame), resized to a non-square 333 x 517; the synthetic frame is the
generator's own 224 px output. Fast: ~10 s on one core.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from mcdrl.networks.prompts import CONFOUNDERS
from mcdrl.synthetic import render_case
from mcdrl.synthetic import confounders as C
from mcdrl.synthetic.layers import estimate_fov
from mcdrl.transforms import RandConfounder, RandConfounderd, RandHueSaturationd, photometric_augmentation

H, W = 333, 517


def _lum(x: np.ndarray) -> np.ndarray:
    return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]


def _grad(x: np.ndarray) -> float:
    return float(np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean())


def _spread(x: np.ndarray, fov: np.ndarray) -> float:
    """Brightest / darkest mean luminance of the 4 x 4 blocks that lie inside the field of view."""
    lum, (h, w), vals = _lum(x), fov.shape, []
    for i in range(4):
        for j in range(4):
            win = (slice(i * h // 4, (i + 1) * h // 4), slice(j * w // 4, (j + 1) * w // 4))
            if fov[win].mean() > 0.8:
                vals.append(lum[win][fov[win]].mean())
    return max(vals) / min(vals)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph: (3, 333, 517) float32 in [0, 1]."""
    from skimage.data import retina

    return np.ascontiguousarray(np.asarray(Image.fromarray(retina()).resize((W, H), Image.BILINEAR)).transpose(2, 0, 1),
                                dtype=np.float32) / 255


@pytest.fixture(scope="module")
def synth() -> np.ndarray:
    return np.ascontiguousarray(render_case(3, "polyp", []).image.transpose(2, 0, 1), dtype=np.float32) / 255


def _one(name: str, img, seed: int = 0):
    t = RandConfounder([name], prob=1.0, max_per_image=1)
    t.set_random_state(seed)
    return t(img)


def test_dictionary_covers_the_prompts() -> None:
    chain = [n for stage in C.STAGES.values() for n in stage]
    assert sorted(chain) == sorted(CONFOUNDERS) and len(chain) == 12
    assert set(C.EFFECTS) | set(C.GEOMETRY) == set(CONFOUNDERS) and not set(C.EFFECTS) & set(C.GEOMETRY)


@pytest.mark.parametrize("frame", ["photo", "synth"])
@pytest.mark.parametrize("name", CONFOUNDERS)
def test_every_confounder_changes_a_frame(name: str, frame: str, request: pytest.FixtureRequest) -> None:
    """Each prompt name changes a real photo (333 x 517) and a synthetic frame (224) in its own, expected way, and
    leaves the dark border outside the field of view untouched (except imaging artifacts, the sensor's)."""
    img = request.getfixturevalue(frame)
    out = _one(name, img)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == img.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - img).mean() > 0.5 / 255, name
    soft = estimate_fov(img)
    fov, outside = soft > 0.5, soft == 0
    assert outside.mean() > 0.15  # both frames have a dark border
    if name == "imaging artifacts":
        assert np.abs(out[:, outside] - img[:, outside]).max() > 0.1  # sensor noise and JPEG on the border too
    else:
        assert np.array_equal(out[:, outside], img[:, outside]), f"{name} changed the border"
    lum, lum0 = _lum(out)[fov].mean(), _lum(img)[fov].mean()
    if name == "bright lighting":
        assert lum > 1.2 * lum0
    elif name == "dark lighting":
        assert lum < 0.5 * lum0
    elif name == "uneven lighting":
        assert _spread(out, fov) > 1.3 * _spread(img, fov)
    elif name == "narrow-band imaging":  # red-dominant tissue loses its red dominance
        assert (img[0] - img[1])[fov].mean() > 0.2 and (out[0] - out[1])[fov].mean() < 0.25 * (img[0] - img[1])[fov].mean()
    elif name == "white light imaging":
        assert _grad(out) > 1.5 * _grad(img)
    elif name == "motion blur":
        assert _grad(out) < 0.7 * _grad(img)
    elif name == "specular reflection":
        assert int((out.min(0) > 0.95).sum()) > int((img.min(0) > 0.95).sum()) + 200
    elif name == "mucus":
        assert int(((out.min(0) - img.min(0)) > 0.15).sum()) > 500  # whitish, translucent
    elif name == "blood":
        assert int((((_lum(img) - _lum(out)) > 0.15) & (out[0] > 2 * out[1])).sum()) > 1000  # darker and red
    elif name == "imaging artifacts" and frame == "synth":  # 8 x 8 JPEG blocking at the reference scale
        d = np.abs(np.diff(_lum(out), axis=1))
        d0 = np.abs(np.diff(_lum(img), axis=1))
        assert d[:, 7::8].mean() / d.mean() > 1.5 * d0[:, 7::8].mean() / d0.mean()
    elif name in ("a near view", "a far view"):  # content magnified / shrunk: fine detail per pixel falls / rises
        assert np.abs(out - img)[:, fov].mean() > 5 / 255


@pytest.mark.parametrize("name", CONFOUNDERS)
def test_label_moves_only_with_near_and_far(name: str, photo: np.ndarray) -> None:
    """A mask drawn on a painted square of the photo: untouched by every effect but the two views, which move it with
    the square (same content), keep its dtype and shape, and make it bigger / smaller."""
    img = photo.copy()
    img[:, 120:170, 300:360] = np.array([0.1, 0.2, 0.9], np.float32)[:, None, None]
    mask = np.zeros((H, W), np.uint8)
    mask[120:170, 300:360] = 1
    t = RandConfounder([name], prob=1.0, max_per_image=1)
    t.set_random_state(1)
    out, lab = t(img, label=mask)
    assert lab.dtype == np.uint8 and lab.shape == (H, W) and set(np.unique(lab)) <= {0, 1}
    if name not in ("a near view", "a far view"):
        assert np.array_equal(lab, mask)
        return
    assert not np.array_equal(lab, mask)
    blue = (out[2] > 0.55) & (out[0] < 0.35)
    iou = (blue & (lab > 0)).sum() / (blue | (lab > 0)).sum()
    assert iou > 0.85, f"{name}: the label left its content (IoU {iou:.2f})"
    if name == "a near view":
        assert lab.sum() > 2.0 * mask.sum()
    else:
        assert 0 < (lab[120:170, 300:360] > 0).sum() < 0.5 * mask.sum()


def test_label_types_follow_the_input(photo: np.ndarray) -> None:
    img = MetaTensor(torch.from_numpy(photo), meta={"filename_or_obj": "retina.png"})
    lab = MetaTensor(torch.zeros(1, H, W), meta={"filename_or_obj": "mask.png"})
    lab[0, 100:200, 200:300] = 1
    t = RandConfounder(["a near view"], prob=1.0)
    t.set_random_state(0)
    out, lab2 = t(img, label=lab)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "retina.png" and out.dtype == torch.float32
    assert isinstance(lab2, MetaTensor) and lab2.meta["filename_or_obj"] == "mask.png" and lab2.shape == (1, H, W)
    assert set(torch.unique(lab2).tolist()) == {0.0, 1.0} and lab2.sum() > lab.sum()


def test_types_dtypes_range(synth: np.ndarray) -> None:
    """ndarray / Tensor / MetaTensor, float32 / float64 in -> the same out, in [0, 1], metadata kept."""
    for img in (synth, synth.astype(np.float64), torch.from_numpy(synth), torch.from_numpy(synth).double(),
                MetaTensor(torch.from_numpy(synth), meta={"filename_or_obj": "x.png"})):
        t = RandConfounder(prob=1.0, max_per_image=3)
        t.set_random_state(3)
        out = t(img)
        assert type(out) is type(img) and out.dtype == img.dtype and tuple(out.shape) == tuple(img.shape)
        assert 0 <= float(out.min()) and float(out.max()) <= 1 and 1 <= len(t.applied) <= 3
        if isinstance(img, MetaTensor):
            assert out.meta["filename_or_obj"] == "x.png"
    with pytest.raises(ValueError, match=r"\(3, H, W\) float RGB"):
        RandConfounder(prob=1.0)((synth * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"values must be in \[0, 1\]"):
        RandConfounder(prob=1.0)(synth * 255)


def test_determinism(photo: np.ndarray) -> None:
    def run(seed: int) -> list[np.ndarray]:
        t = RandConfounder(prob=1.0, max_per_image=3)
        t.set_random_state(seed)
        return [t(photo) for _ in range(3)]

    a, b, c = run(5), run(5), run(6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(a[0], a[1])  # successive calls draw anew


def test_unknown_names_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"unknown confounder 'fog'; known: \['motion blur', .*'specular reflection'\]"):
        RandConfounder(["mucus", "fog"])
    with pytest.raises(ValueError, match="list of names"):
        RandConfounder("mucus")
    with pytest.raises(ValueError, match="max_per_image"):
        RandConfounder(max_per_image=0)
    with pytest.raises(ValueError, match="weights: 'blood' is not one of"):
        RandConfounder(["mucus"], weights={"blood": 1.0})
    with pytest.raises(ValueError, match="not in the vocabulary"):
        RandConfounderd("image", confounders=["mucus"], vocabulary=["blood"])
    with pytest.raises(ValueError, match="cannot both"):
        C.apply_confounders(np.zeros((3, 32, 32), np.float32), ["a near view", "a far view"], 0)


def test_draws_exclusive_pairs_never_together_and_weights() -> None:
    t = RandConfounder(prob=1.0, max_per_image=12)
    t.set_random_state(0)
    counts, sizes = dict.fromkeys(CONFOUNDERS, 0), set()
    for _ in range(400):
        t.randomize()
        sizes.add(len(t.applied))
        for a, b in C.EXCLUSIVE:
            assert not (a in t.applied and b in t.applied), t.applied
        assert t.applied == [n for n in C.check_names(t.applied)]  # chain order, no duplicates
        for n in t.applied:
            counts[n] += 1
    assert min(counts.values()) > 0 and max(sizes) == 9 and min(sizes) == 1  # 12 names minus one of each pair
    w = RandConfounder(["mucus", "blood", "motion blur"], prob=1.0, max_per_image=1, weights={"blood": 0, "mucus": 3})
    w.set_random_state(0)
    got = []
    for _ in range(200):
        w.randomize()
        got += w.applied
    assert "blood" not in got and 0.6 < got.count("mucus") / len(got) < 0.9


def test_prob_zero_is_identity(photo: np.ndarray) -> None:
    t = RandConfounder(prob=0.0)
    assert t(photo) is photo and t.applied == []
    d = RandConfounderd("image", label_key="label", prob=0.0)
    data = {"image": photo, "label": np.ones((1, H, W), np.float32)}
    out = d(data)
    assert out["image"] is photo and out["label"] is data["label"]
    assert torch.equal(out["applied_confounders"], torch.zeros(12))


def test_dictionary_transform_and_collation(synth: np.ndarray) -> None:
    """Every image key gets the same draws; the label moves once; the multi-hot record collates to (B, 12)."""
    from monai.data import DataLoader, Dataset

    lab = np.zeros((1, 224, 224), np.float32)
    lab[0, 80:140, 90:150] = 1
    d = RandConfounderd(["image", "twin"], label_key="label", confounders=["a near view", "mucus"], prob=1.0,
                        max_per_image=2)
    d.set_random_state(0)
    out = d({"image": synth, "twin": synth.copy(), "label": lab})
    assert np.array_equal(out["image"], out["twin"])
    names = d.confounder.applied
    vec = out["applied_confounders"]
    assert vec.dtype == torch.float32 and vec.shape == (12,) and vec.sum() == len(names) >= 1
    assert [CONFOUNDERS[i] for i in vec.nonzero().ravel().tolist()] == [n for n in CONFOUNDERS if n in names]
    assert np.array_equal(out["label"], lab) == ("a near view" not in names)
    ds = Dataset([{"image": synth, "label": lab}] * 4, transform=RandConfounderd("image", label_key="label", prob=1.0))
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["applied_confounders"].shape == (4, 12) and batch["image"].shape == (4, 3, 224, 224)


def test_the_generator_calls_the_same_functions(monkeypatch: pytest.MonkeyPatch, synth: np.ndarray) -> None:
    """One implementation: with an effect of ``EFFECTS`` replaced by the identity, the generator's frame with that
    confounder is byte for byte its clean frame (so the whole effect comes from that function, called with the
    scene's exact layers), and RandConfounder returns its input (it calls the same function)."""
    clean = render_case(8, "polyp", [])
    for name in C.EFFECTS:
        calls = []

        def spy(img, rng, layers=None, *, _n=name, **kw):
            calls.append((_n, img.shape, layers))
            return img

        monkeypatch.setitem(C.EFFECTS, name, spy)
        case = render_case(8, "polyp", [name])
        assert case.image.tobytes() == clean.image.tobytes(), name
        assert len(calls) == 1 and calls[0][1] == (3, 224, 224)
        layers = calls[0][2]
        assert layers.estimate is False and layers.px == 1.0 and layers.shade is not None  # exact scene layers
        t = RandConfounder([name], prob=1.0, keep_border=False)
        t.set_random_state(0)
        assert np.array_equal(t(synth), synth) and len(calls) == 2 and calls[1][2].estimate is True
        monkeypatch.undo()
    assert render_case(8, "polyp", ["mucus"]).image.tobytes() != clean.image.tobytes()
    # The geometric pair: the generator's scene zoom and the finished-frame zoom come from one table.
    for name in C.GEOMETRY:
        z = C.GEOMETRY[name](synth, np.random.default_rng(0))[2]
        assert C.ZOOM[name][0] <= z <= C.ZOOM[name][1]


def test_scene_layers_are_shared_and_exact() -> None:
    """The generator's layers are its scene's arrays: blood adds to the scene's haemoglobin, which narrow-band imaging
    then turns brown (as in the generator's chain); a missing exact layer is an error, never a guess."""
    from mcdrl.synthetic._ops import rng_for
    from mcdrl.synthetic.frames import render_background
    from mcdrl.synthetic.layers import Layers

    scene = render_background(rng_for(4, "scene"), 224, 1.0)
    layers = scene.layers()
    assert layers.shade is scene.shade and layers.heme is scene.heme and scene.heme.max() == 0
    nbi_before = C.narrow_band_imaging(scene.rgb, rng_for(4, "narrow-band imaging"), layers)
    C.blood(scene.rgb, rng_for(4, "blood"), layers)
    assert scene.heme.max() > 0.5  # written in place
    nbi_after = C.narrow_band_imaging(scene.rgb, rng_for(4, "narrow-band imaging"), layers)
    stained = scene.heme > 0.5
    assert (nbi_after[1:, stained] < nbi_before[1:, stained]).mean() > 0.99  # blood darkens NBI's green and blue
    with pytest.raises(ValueError, match="'shade' is missing"):
        C.mucus(scene.rgb, rng_for(4, "mucus"), Layers(estimate=False))


def test_fast_motion_blur_matches_the_exact_kernel(photo: np.ndarray) -> None:
    exact = C.motion_blur(photo, np.random.default_rng(2))
    fast = C.motion_blur(photo, np.random.default_rng(2), max_taps=16)
    assert np.abs(exact - fast).mean() < 0.01 and not np.array_equal(exact, photo)


def test_field_of_view_estimate(photo: np.ndarray, synth: np.ndarray) -> None:
    """Dark-bordered frames get their round field of view; a photo without a border gets all ones."""
    from mcdrl.synthetic import SITES

    fov = estimate_fov(photo)
    assert fov.shape == (H, W) and fov[H // 2, W // 2] == 1 and fov[0, 0] == 0 and fov[-1, -1] == 0
    assert 0.65 < fov.mean() < 0.9
    site_c = render_case(2, "polyp", [], SITES["C"].device).image  # grey border with burned-in text
    fc = estimate_fov(np.ascontiguousarray(site_c.transpose(2, 0, 1), dtype=np.float32) / 255)
    assert fc[112, 112] == 1 and fc[3, 3] == 0 and fc[5, 200] == 0  # the text strip is not tissue
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB").resize((200, 150)), np.float32).transpose(2, 0, 1) / 255
    assert estimate_fov(np.ascontiguousarray(hopper)).min() == 1.0


def test_photometric_augmentation(synth: np.ndarray) -> None:
    from monai.transforms import Compose
    from monai.utils import set_determinism

    img = MetaTensor(torch.from_numpy(synth), meta={"filename_or_obj": "x.png"})

    def run() -> list[torch.Tensor]:
        set_determinism(0)
        c = Compose(photometric_augmentation("image", strength=1.0, prob=0.8))
        return [c({"image": img})["image"] for _ in range(3)]

    try:
        a, b = run(), run()
    finally:
        set_determinism(None)
    for x, y in zip(a, b):
        assert isinstance(x, MetaTensor) and x.meta["filename_or_obj"] == "x.png" and x.dtype == torch.float32
        assert x.shape == (3, 224, 224) and 0 <= float(x.min()) and float(x.max()) <= 1
        assert torch.equal(x, y)  # reproducible under set_determinism
        assert not torch.equal(x.as_tensor(), img.as_tensor())
    assert not torch.equal(a[0], a[1])
    ident = Compose(photometric_augmentation("image", strength=0.0))({"image": img})["image"]
    assert torch.allclose(ident, img, atol=1e-6)
    hs = RandHueSaturationd("image", prob=1.0, hue=0.1, saturation=(0.2, 0.3))
    hs.set_random_state(0)
    grey = hs({"image": img})["image"]
    assert (grey.max(0).values - grey.min(0).values).mean() < 0.5 * (img.max(0).values - img.min(0).values).mean()
    with pytest.raises(ValueError, match="strength"):
        photometric_augmentation("image", strength=-1)


#: The config items proposed for train.json's preprocessing (after Resized and the flips); the report quotes them.
CONFIG_SNIPPET = {
    "imports": ["$import mcdrl"],
    "confounders": CONFOUNDERS,
    "confounder_aug_prob": 0.5,
    "photometric_strength": 1.0,
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "mcdrl.transforms.RandConfounderd", "keys": "image", "label_key": "label",
         "prob": "@confounder_aug_prob", "max_per_image": 2, "vocabulary": "@confounders"},
        {"_target_": "Compose", "transforms": {"_target_": "mcdrl.transforms.photometric_augmentation",
                                               "keys": "image", "strength": "@photometric_strength", "prob": 0.3}},
    ]},
}


def test_config_snippet_builds(synth: np.ndarray) -> None:
    """The proposed bundle config items parse with MONAI's ConfigParser and run on an (image, label) pair."""
    from monai.bundle import ConfigParser

    pre = ConfigParser(CONFIG_SNIPPET).get_parsed_content("preprocessing")
    pre.set_random_state(0)
    lab = np.zeros((1, 224, 224), np.float32)
    out = pre({"image": synth, "label": lab})
    assert out["image"].shape == (3, 224, 224) and out["image"].dtype == torch.float32
    assert 0 <= float(out["image"].min()) and float(out["image"].max()) <= 1 and out["applied_confounders"].shape == (12,)


def test_speed_report(photo: np.ndarray, synth: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    """Per-effect CPU time (ms, one thread, as in a DataLoader worker) at 224 px and on a 1280 x 1024 frame: reported,
    not asserted. ``(none)`` is the fixed cost of a call (field-of-view estimate, conversions, clip)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    big = np.ascontiguousarray(np.stack([np.asarray(Image.fromarray(c).resize((1280, 1024), Image.BILINEAR))
                                         for c in photo]))
    rows = {}
    try:
        C.apply_confounders(synth, ["a near view"], 0)  # imports
        for label, img, n in (("224 px", synth, 3), ("1280x1024", big, 1)):
            res = {}
            for name in ["(none)"] + CONFOUNDERS:
                t = time.process_time()
                for s in range(n):
                    C.apply_confounders(img, [] if name == "(none)" else [name], s)
                res[name] = (time.process_time() - t) / n * 1000
            rows[label] = res
    finally:
        torch.set_num_threads(threads)
    with capsys.disabled():
        for label, res in rows.items():
            print(f"\n[mcdrl.transforms] apply_confounders {label}, ms cpu: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in res.items()))
    assert set(rows["224 px"]) == {"(none)", *CONFOUNDERS}


# ----------------------------------------------------------------------------- masks as datasets publish them
def _lesion_mask(h: int = 288, w: int = 352) -> np.ndarray:
    """A 0/255 uint8 mask with an irregular lesion (an ellipse with a bump), like a Kvasir-SEG polyp mask."""
    yy, xx = np.mgrid[:h, :w]
    blob = ((yy - 140) / 70.0) ** 2 + ((xx - 170) / 95.0) ** 2 <= 1
    bump = (yy - 95) ** 2 + (xx - 230) ** 2 <= 35**2
    return ((blob | bump) * 255).astype(np.uint8)


def _read_labels(paths) -> list[np.ndarray]:
    """Each mask file through the bundle's own validation preprocessing (train.json, label_threshold at its default)."""
    from conftest import BUNDLE
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    pre = parser.get_parsed_content("validate#preprocessing")
    image = paths[0].parent / "frame.png"
    Image.fromarray(np.full((*np.asarray(Image.open(paths[0])).shape[:2], 3), 128, np.uint8)).save(image)
    return [np.asarray(pre({"image": str(image), "label": str(p)})["label"])[0] for p in paths]


def test_jpeg_mask_reads_like_its_lossless_source(tmp_path) -> None:
    """Kvasir-SEG and PolypGen publish JPEG masks: read with > 0 the compression halo became lesion (+6 % area here).
    The JPEG mask and its lossless PNG source now give lesion areas within 1 %, 0/1 and 0/255 PNGs read alike, and a
    lesion-free JPEG (background plus compression noise) reads as empty."""
    mask = _lesion_mask()
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(mask // 255).save(tmp_path / "m01.png")
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=75)
    noisy = np.zeros_like(mask)
    noisy[100:104, 100:104] = 12  # a faint speck: one mode plus compression noise, no lesion
    Image.fromarray(noisy).save(tmp_path / "empty.jpg", quality=75)
    jpeg = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert len(np.unique(jpeg)) > 2 and (jpeg > 0).sum() > 1.03 * (mask > 0).sum()  # the halo is there
    png, png01, jpg, empty = _read_labels([tmp_path / "m.png", tmp_path / "m01.png", tmp_path / "m.jpg", tmp_path / "empty.jpg"])
    area_png, area_jpg = png.sum(), jpg.sum()
    print(f"\nlesion area: PNG {int(area_png)}, JPEG q75 {int(area_jpg)} (> 0 would give {int((jpeg > 0).sum())})")
    assert area_png == (mask > 0).sum() and np.array_equal(png, png01)
    assert abs(area_jpg - area_png) <= 0.01 * area_png, (area_png, area_jpg)
    assert empty.sum() == 0


def test_mask_threshold_modes() -> None:
    from mcdrl.transforms import LabelToBinary, binarize_mask, mask_threshold

    grey = np.array([[0, 100, 200, 255]], np.uint8)
    assert mask_threshold(grey) == 127.5 and mask_threshold(grey, 50) == 50.0
    assert mask_threshold(np.array([0, 1]), "auto") == 0.5 and mask_threshold(np.array([0, 40000]), "auto") == 32767.5
    assert 255 / 4 <= mask_threshold(grey, "auto", "x.JPG") <= 3 * 255 / 4
    assert binarize_mask(np.dstack([grey, 255 - grey, grey])).tolist() == [[False, False, True, True]]  # first channel
    lab = MetaTensor(torch.tensor([[[0.0, 3.0, 250.0]]]), meta={"filename_or_obj": "/d/masks/a.png"})
    assert LabelToBinary()(lab).tolist() == [[[0.0, 0.0, 1.0]]]
    assert LabelToBinary(threshold=0)(lab).tolist() == [[[0.0, 1.0, 1.0]]]  # the old reading, still available
    with pytest.raises(ValueError, match="label_threshold must be a number or one of"):
        LabelToBinary(threshold="median")
