"""``python -m mcdrl.evaluation.robustness``: the shipped model under image shifts that no prompt names, and at a site
that no file of the synthetic world defines.

* **Shifts**: colour and tone changes of the source-site validation frames (hue rotations, colour casts, gamma,
  contrast, saturation) and two acquisition changes (JPEG compression, defocus). None of them is a dictionary
  confounder, and they are fixed here, once, not tuned: the training recipe never sees this module. The report gives
  each shift's Dice beside the clean Dice of the same frames, and the ratio (target >= 0.85).
* **A new site** ("G", defined only here): a device the world's sites never use (a green-tinted scope with a grey
  octagonal field of view, burned-in text, strong edge enhancement and its own gamma) and a mixture of known
  confounders unlike any site's. Its Dice is reported beside the in-domain Dice (the source-site validation frames),
  and the ratio (target >= 0.90).

Writes ``robustness.json`` and ``robustness.md`` (``bundle/docs/results/`` by default)::

    python -m mcdrl.evaluation.robustness [--n_site 160] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from mcdrl.evaluation.scoring import build_bundle_network, load_labelled_images, parse_sets, score_images, summarise, write_json, write_report
from mcdrl.paths import default_bundle_root, portable_command

__all__ = ["NEW_SITE", "SHIFTS", "main", "new_site_images"]


def _hue(deg: float):
    def f(img: np.ndarray) -> np.ndarray:
        hsv = np.asarray(Image.fromarray(img).convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(deg / 360 * 256))) % 256
        return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    return f


def _gains(r: float, g: float, b: float):
    return lambda img: np.clip(img.astype(np.float32) * np.array([r, g, b], np.float32), 0, 255).astype(np.uint8)


def _gamma(gamma: float):
    lut = (255 * (np.arange(256) / 255) ** gamma + 0.5).astype(np.uint8)
    return lambda img: lut[img]


def _contrast(k: float):
    def f(img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32)
        return np.clip(x.mean() + k * (x - x.mean()), 0, 255).astype(np.uint8)
    return f


def _saturation(k: float):
    def f(img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32)
        grey = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]
        return np.clip(grey + k * (x - grey), 0, 255).astype(np.uint8)
    return f


def _jpeg(quality: int):
    def f(img: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        return np.asarray(Image.open(buf).convert("RGB"))
    return f


def _defocus(radius: float):
    return lambda img: np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


#: name -> (description, function on an (H, W, 3) uint8 frame)
SHIFTS = {
    "hue +25 deg": ("hue rotated by +25 degrees", _hue(25)),
    "hue -25 deg": ("hue rotated by -25 degrees", _hue(-25)),
    "warm cast": ("white balance warm: R x1.15, B x0.8", _gains(1.15, 1.0, 0.8)),
    "cool cast": ("white balance cool: R x0.85, B x1.2", _gains(0.85, 1.0, 1.2)),
    "green cast": ("green cast: G x1.15", _gains(0.92, 1.15, 0.92)),
    "gamma 0.6": ("tone curve x^0.6 (lifted mid-tones)", _gamma(0.6)),
    "gamma 1.6": ("tone curve x^1.6 (crushed mid-tones)", _gamma(1.6)),
    "low contrast": ("contrast x0.6 about the mean", _contrast(0.6)),
    "desaturated": ("saturation x0.4", _saturation(0.4)),
    "oversaturated": ("saturation x1.6", _saturation(1.6)),
    "jpeg q15": ("JPEG quality 15", _jpeg(15)),
    "defocus": ("Gaussian defocus, radius 1.5 px", _defocus(1.5)),
}


def _new_site():
    from mcdrl.synthetic import DeviceTraits, SiteSpec

    probs = {"motion blur": 0.2, "imaging artifacts": 0.1, "bright lighting": 0.3, "dark lighting": 0.1, "uneven lighting": 0.25,
             "narrow-band imaging": 0.3, "white light imaging": 0.2, "a near view": 0.3, "a far view": 0.2, "mucus": 0.3, "blood": 0.3,
             "specular reflection": 0.5}
    device = DeviceTraits("G: community scope", (0.9, 1.08, 0.95), "octagon", 0.45, "gray", True, (255, 220, 90),
                          noise_sigma=0.014, sharpness=0.5, gamma=0.9)
    return SiteSpec("G", "Community endoscopy unit (robustness report only)", probs,
                    {"polyp": 0.2, "tumor": 0.15, "inflammation": 0.15, "nodule": 0.15, "cyst": 0.15, "none": 0.2}, device,
                    "a green-tinted scope with a grey octagonal FOV, burned-in text, edge enhancement and gamma 0.9; an even mix of confounders")


#: the site of the report, defined here only (the synthetic world's SITES stay A-F)
NEW_SITE = _new_site()


def new_site_images(n: int, seed: int = 4242, size: int = 224) -> list[dict]:
    """``n`` rendered frames of :data:`NEW_SITE`, as :func:`mcdrl.evaluation.scoring.score_images` takes them."""
    from mcdrl.synthetic import derive_seed, sample_case

    out = []
    for i in range(n):
        c = sample_case(NEW_SITE, derive_seed(seed, "robustness", i), size)
        out.append({"id": f"G_{i:05d}", "site": "G", "lesion_class": c.lesion_class, "confounders": c.confounders, "image": c.image, "mask": c.mask > 0})
    return out


def main(argv: list[str] | None = None) -> int:
    configs = Path(default_bundle_root()) / "configs"
    repo = configs.parent.parent
    p = argparse.ArgumentParser(prog="python -m mcdrl.evaluation.robustness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle_root", default=str(configs.parent), help="the bundle whose models/model.pt is scored (default: this checkout's)")
    p.add_argument("--datalist", default=str(repo / "data" / "synthetic" / "datalist.json"), help="its validation split is the clean, in-domain set")
    p.add_argument("--n_site", type=int, default=160, help="frames of the new site")
    p.add_argument("--out", default=None, help="where robustness.json/md go (default: <bundle_root>/docs/results)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a config value of the network (repeatable)")
    a = p.parse_args(argv)
    bundle = Path(a.bundle_root)
    a.out = a.out or str(bundle / "docs" / "results")
    net, post = build_bundle_network(str(configs / "inference.json"), bundle / "models" / "model.pt", {"bundle_root": str(bundle), **parse_sets(a.set)})
    clean_imgs = load_labelled_images(a.datalist, "validation")
    clean = summarise(score_images(net, clean_imgs, post))
    print(f"clean: Dice {clean['dice']:.3f}", flush=True)
    shifts = {}
    for name, (desc, fn) in SHIFTS.items():
        r = summarise(score_images(net, clean_imgs, post, image_fn=fn))
        shifts[name] = {"description": desc, **r, "ratio_to_clean": round(r["dice"] / clean["dice"], 4)}
        print(f"{name}: Dice {r['dice']:.3f} ({shifts[name]['ratio_to_clean']:.2f} of clean)", flush=True)
    site = summarise(score_images(net, new_site_images(a.n_site), post))
    site_doc = {"name": NEW_SITE.name, "title": NEW_SITE.title, "signature": NEW_SITE.signature, **site,
                "ratio_to_in_domain": round(site["dice"] / clean["dice"], 4)}
    print(f"new site G: Dice {site['dice']:.3f} ({site_doc['ratio_to_in_domain']:.2f} of in-domain)", flush=True)
    doc = {"command": portable_command("python -m mcdrl.evaluation.robustness", list(argv if argv is not None else sys.argv[1:]), repo),
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "clean_in_domain": clean, "shifts": shifts, "new_site": site_doc,
           "targets": {"shift_ratio_min": 0.85, "new_site_ratio_min": 0.90}}
    out = Path(a.out)
    write_json(out / "robustness.json", doc)
    worst = min(shifts.items(), key=lambda kv: kv[1]["ratio_to_clean"])
    lines = ["# Robustness of the shipped model", "", f"Generated by `{doc['command'].strip()}`; do not edit by hand.", "",
             f"Clean, in-domain (source-site validation, {clean['n']} frames): Dice {clean['dice']:.3f}, false alarms "
             f"{100 * (clean['false_alarm_rate'] or 0):.0f}%, sensitivity {100 * (clean['sensitivity'] or 0):.0f}%.", "",
             "| shift | what | Dice | of clean | false alarms | sensitivity |", "|---|---|---|---|---|---|"]
    for name, r in shifts.items():
        lines.append(f"| {name} | {r['description']} | {r['dice']:.3f} | {r['ratio_to_clean']:.2f} | {100 * (r['false_alarm_rate'] or 0):.0f}% | {100 * (r['sensitivity'] or 0):.0f}% |")
    lines += ["", f"Worst shift: {worst[0]} ({worst[1]['ratio_to_clean']:.2f} of clean; target >= 0.85).", "",
              f"New site G ({NEW_SITE.signature}; {site['n']} frames): Dice {site['dice']:.3f}, {site_doc['ratio_to_in_domain']:.2f} of in-domain "
              f"(target >= 0.90); false alarms {100 * (site['false_alarm_rate'] or 0):.0f}%, sensitivity {100 * (site['sensitivity'] or 0):.0f}%."]
    write_report(out / "robustness.md", lines)
    return 0


if __name__ == "__main__":
    from mcdrl.errors import install_cli_hook

    install_cli_hook()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
