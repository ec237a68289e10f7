"""``make demo``: segment a synthetic site that the shipped model never trained on, and report Dice per case.

    python -m mcdrl.demo --out demo_out [--site F] [--n 8] [--seed 2026]

1. checks the shipped weights against ``bundle/large_files.yml`` (sha256) before anything loads them;
2. generates ``n`` cases of the held-out site with :mod:`mcdrl.synthetic` (images, ground-truth masks);
3. runs the bundle's own inference workflow on them, through the real CLI
   (``python -m monai.bundle run --config_file bundle/configs/inference.json ...``);
4. writes overlay PNGs (prediction red, ground truth green outline) and ``summary.md`` / ``summary.html`` with each
   case's Dice against the synthetic ground truth.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mcdrl.deploy.shipped import verify_shipped
from mcdrl.evaluation.metrics import per_image_metrics

from .paths import default_bundle_root
from .utils import atomic_path

__all__ = ["main", "run_demo"]

#: the site the shipped demo model was not trained on (it trained on A-E; see bundle/docs/README.md)
HELD_OUT_SITE = "F"


def _overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32).copy()
    out[pred] = 0.55 * out[pred] + 0.45 * np.array([255, 40, 40])
    edge = gt & ~(np.roll(gt, 1, 0) & np.roll(gt, -1, 0) & np.roll(gt, 1, 1) & np.roll(gt, -1, 1))
    out[edge] = [40, 255, 40]
    return out.clip(0, 255).astype(np.uint8)


def _find_mask(mask_dir: Path, stem: str) -> Path:
    hits = sorted(p for p in mask_dir.rglob("*.png") if p.name.startswith(stem + "_") or p.stem == stem)
    if not hits:
        raise FileNotFoundError(f"inference wrote no mask for {stem} under {mask_dir}")
    return hits[0]


def run_demo(out: Path, site: str = HELD_OUT_SITE, n: int = 8, seed: int = 2026, bundle_root: str | None = None) -> dict:
    """Run the demo end to end; returns the summary dict (also written as JSON)."""
    from .synthetic import generate_dataset

    t0 = time.time()
    bundle = Path(bundle_root or default_bundle_root())
    verify_shipped(bundle)
    out.mkdir(parents=True, exist_ok=True)
    datalist = json.loads(generate_dataset(out / "data", [site], n, seed=seed, split=(1.0, 0.0)).read_text())
    cases = datalist["training"] + datalist.get("validation", [])
    images = out / "data" / "images" / site
    masks = out / "masks"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
           "--logging_file", str(bundle / "configs" / "logging.conf"), "--bundle_root", str(bundle),
           "--dataset_dir", str(images), "--output_dir", str(masks)]
    t_inf = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"bundle inference failed (exit {proc.returncode}): {' '.join(cmd)}")
    t_inf = time.time() - t_inf
    rows = []
    (out / "overlays").mkdir(exist_ok=True)
    scores = {Path(r["input"]).stem: r.get("lesion_score") for r in json.loads((masks / "summary.json").read_text())["cases"]}
    for case in cases:
        stem = Path(case["image"]).stem
        image = np.array(Image.open(out / "data" / case["image"]).convert("RGB"))
        gt = np.array(Image.open(out / "data" / case["label"])) > 0
        pred = np.array(Image.open(_find_mask(masks, stem))) > 0
        import torch

        m = per_image_metrics(torch.from_numpy(pred), torch.from_numpy(gt))
        with atomic_path(out / "overlays" / f"{stem}.png") as tmp:
            Image.fromarray(_overlay(image, pred, gt)).save(tmp, format="PNG")
        score = scores.get(stem)
        rows.append({"case": stem, "lesion_class": case["lesion_class"], "confounders": case.get("confounders", []),
                     "lesion_score": None if score is None else round(float(score), 4),
                     "dice": round(m["dice"], 4), "iou": round(m["iou"], 4), "lesion_px_true": int(gt.sum()), "lesion_px_pred": int(pred.sum())})
    free = [r for r in rows if r["lesion_px_true"] == 0]
    summary = {"site": site, "n": len(rows), "seed": seed, "mean_dice": round(float(np.mean([r["dice"] for r in rows])), 4),
               "lesion_free_frames": len(free), "false_alarms": sum(r["lesion_px_pred"] > 0 for r in free),
               "inference_seconds": round(t_inf, 1), "total_seconds": round(time.time() - t0, 1), "cases": rows}
    _write_reports(out, summary)
    return summary


def _score(r: dict) -> str:
    return "-" if r.get("lesion_score") is None else f"{r['lesion_score']:.2f}"


def _write_reports(out: Path, s: dict) -> None:
    head = (f"Held-out site {s['site']}: {s['n']} cases, mean Dice {s['mean_dice']:.3f}; false alarms on {s['false_alarms']} of "
            f"{s['lesion_free_frames']} lesion-free frames (inference {s['inference_seconds']} s, demo {s['total_seconds']} s)")
    md = [f"# MCDRL demo\n\n{head}\n", "| case | class | confounders | lesion score | Dice | IoU | lesion px (true / pred) | overlay |", "|---|---|---|---|---|---|---|---|"]
    for r in s["cases"]:
        md.append(f"| {r['case']} | {r['lesion_class']} | {', '.join(r['confounders']) or '-'} | {_score(r)} | {r['dice']:.3f} | {r['iou']:.3f} | {r['lesion_px_true']} / {r['lesion_px_pred']} | ![](overlays/{r['case']}.png) |")
    cells = "".join(
        f"<figure><img src='overlays/{html.escape(r['case'])}.png' width=224><figcaption>{html.escape(r['case'])} {html.escape(r['lesion_class'])}: "
        f"Dice {r['dice']:.3f}, lesion score {_score(r)}</figcaption></figure>"
        for r in s["cases"]
    )
    page = f"<!doctype html><meta charset=utf-8><title>MCDRL demo</title><h1>MCDRL demo</h1><p>{html.escape(head)}. Red: prediction; green outline: ground truth.</p><div style='display:flex;flex-wrap:wrap;gap:8px'>{cells}</div>"
    for name, text in (("summary.md", "\n".join(md) + "\n"), ("summary.html", page), ("summary.json", json.dumps(s, indent=1))):
        with atomic_path(out / name) as tmp:
            Path(tmp).write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Segment a held-out synthetic site with the shipped MCDRL model.")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--site", default=HELD_OUT_SITE)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--bundle_root", default=None)
    a = p.parse_args(argv)
    s = run_demo(Path(a.out), a.site, a.n, a.seed, a.bundle_root)
    for r in s["cases"]:
        print(f"{r['case']:>12}  {r['lesion_class']:<12} lesion score {_score(r)}  Dice {r['dice']:.3f}")
    print(f"mean Dice {s['mean_dice']:.3f} on held-out site {s['site']} ({s['n']} cases), false alarms on {s['false_alarms']} of "
          f"{s['lesion_free_frames']} lesion-free frames; report: {Path(a.out) / 'summary.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
