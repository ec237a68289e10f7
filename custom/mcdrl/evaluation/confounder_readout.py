"""``python -m mcdrl.evaluation.confounder_readout``: is the per-image confounder report right, at sites it never saw?

The shipped model's confounder readings are scored against the generator's labels (each rendered frame's true
confounders) at the held-out site F and the new site G (:data:`mcdrl.evaluation.robustness.NEW_SITE`), frames the
readout never calibrated on (it is calibrated on sites A-E, see :mod:`mcdrl.engines.readout_calibration`). Two readings:

* **old** (before issue 23): the MTRS regions' softmax resemblance to the dictionary (``MCDRLNet.confounder_resemblance``);
* **new**: the confounder readout, cos(F_vis, z_m) - cos(F_vis, neutral prompt) (``MCDRLNet.read_frames``).

Metrics (:func:`readout_metrics`), over the frames that have at least one confounder:

* top-1 hit rate: the highest-scoring confounder is one of the frame's (target >= 0.85);
* precision@3: the mean share of the three highest that the frame has (target >= 0.60); ``precision@3 ceiling`` is
  the most any reader could reach, mean(min(#true, 3) / 3);
* per-confounder AUC of the score against presence, over all frames, for every confounder that at least ``min_frames``
  (20) frames have (target >= 0.85 each);
* for the new readout also the presence decisions (calibrated thresholds): per-confounder read share against the true
  share, what the site profile reports.

Writes ``confounder_readout.json`` and ``confounder_readout.md`` (``bundle/docs/results/`` by default)::

    python -m mcdrl.evaluation.confounder_readout [--n 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import numpy as np
import torch

from mcdrl.evaluation.clip_probe import auc
from mcdrl.evaluation.scoring import build_bundle_network, write_json, write_report
from mcdrl.paths import default_bundle_root, portable_command

__all__ = ["TARGETS", "main", "per_confounder_auc", "precision_at_k", "readout_metrics", "render_site", "top1_hit_rate"]

TARGETS = {"top1_min": 0.85, "precision_at_3_min": 0.60, "auc_min": 0.85, "auc_min_frames": 20}


def top1_hit_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of the frames with >= 1 true confounder whose highest score is a true one: (N, M), (N, M) bool -> float."""
    labels = np.asarray(labels, bool)
    has = labels.any(1)
    if not has.any():
        return float("nan")
    top = np.asarray(scores)[has].argmax(1)
    return float(labels[has][np.arange(int(has.sum())), top].mean())


def precision_at_k(scores: np.ndarray, labels: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision@k, its ceiling) over the frames with >= 1 true confounder: the mean share of a frame's k highest
    scores that are true, and the mean of min(#true, k) / k (what a perfect reader gets)."""
    labels = np.asarray(labels, bool)
    has = labels.any(1)
    if not has.any():
        return float("nan"), float("nan")
    order = np.argsort(-np.asarray(scores)[has], axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(labels[has], order, axis=1)
    return float(hits.mean()), float((np.minimum(labels[has].sum(1), k) / k).mean())


def per_confounder_auc(scores: np.ndarray, labels: np.ndarray, names: list[str], min_frames: int = 20) -> dict[str, float]:
    """AUC of each confounder's score against its presence over all frames, for confounders that >= ``min_frames``
    frames have (and at least one frame lacks)."""
    labels = np.asarray(labels, bool)
    out = {}
    for m, name in enumerate(names):
        pos = int(labels[:, m].sum())
        if pos >= min_frames and pos < labels.shape[0]:
            out[name] = auc(np.asarray(scores)[:, m], labels[:, m])
    return out


def readout_metrics(scores: np.ndarray, labels: np.ndarray, names: list[str], min_frames: int = 20) -> dict:
    """All the module's metrics of one reading (rounded to 4 places), with the frame counts."""
    labels = np.asarray(labels, bool)
    p3, ceiling = precision_at_k(scores, labels, 3)
    aucs = per_confounder_auc(scores, labels, names, min_frames)
    r = lambda v: round(float(v), 4)  # noqa: E731
    return {"frames": int(labels.shape[0]), "frames_with_confounder": int(labels.any(1).sum()), "top1_hit_rate": r(top1_hit_rate(scores, labels)),
            "precision_at_3": r(p3), "precision_at_3_ceiling": r(ceiling), "auc": {k: r(v) for k, v in aucs.items()},
            "auc_min": r(min(aucs.values())) if aucs else None}


def render_site(spec, n: int, seed: int, tag: str, size: int = 224) -> list:
    """``n`` cases of site ``spec`` (:class:`mcdrl.synthetic.Case`), seeds derived from ``(seed, tag, i)``."""
    from mcdrl.synthetic import derive_seed, sample_case

    return [sample_case(spec, derive_seed(seed, tag, i), size) for i in range(n)]


@torch.no_grad()
def readings(net, cases: list, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Old and new confounder scores (N, M) and the lesion scores (N,) of rendered cases."""
    old, new, lesion = [], [], []
    for s in range(0, len(cases), batch_size):
        x = torch.stack([torch.from_numpy(c.image).permute(2, 0, 1).float() / 255.0 for c in cases[s : s + batch_size]])
        tokens, _ = net.backbone.forward_tokens(net._resize_in(x))
        idx, _ = net.selector(tokens, net.dictionary.class_embeddings, net.dictionary.background_embedding)
        old.append(net.confounder_resemblance(tokens, idx).float())
        score, conf = net.read_frames(x)
        new.append(conf.float())
        lesion.append(score.float())
    return {"old": torch.cat(old).numpy(), "new": torch.cat(new).numpy(), "lesion_score": torch.cat(lesion).numpy()}


def _met(m: dict) -> dict:
    aucs_ok = m["auc_min"] is None or m["auc_min"] >= TARGETS["auc_min"]
    return {"top1": m["top1_hit_rate"] >= TARGETS["top1_min"], "precision_at_3": m["precision_at_3"] >= TARGETS["precision_at_3_min"], "auc": aucs_ok}


def main(argv: list[str] | None = None) -> int:
    from mcdrl.evaluation.robustness import NEW_SITE
    from mcdrl.synthetic import SITES

    configs = Path(default_bundle_root()) / "configs"
    repo = configs.parent.parent
    p = argparse.ArgumentParser(prog="python -m mcdrl.evaluation.confounder_readout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle_root", default=str(configs.parent), help="the bundle whose models/model.pt is scored (default: this checkout's)")
    p.add_argument("--n", type=int, default=300, help="frames per site")
    p.add_argument("--seed", type=int, default=23)
    p.add_argument("--out", default=None, help="where confounder_readout.json/md go (default: <bundle_root>/docs/results)")
    a = p.parse_args(argv)
    bundle = Path(a.bundle_root)
    net, _ = build_bundle_network(str(configs / "inference.json"), bundle / "models" / "model.pt", {"bundle_root": str(bundle)})
    names = list(net.confounder_names)
    if not net.readout.is_calibrated:
        net.readout.present(torch.zeros(1, len(names)))  # the clear "run calibrate_readout" error
    sites = {}
    for name, spec in (("F", SITES["F"]), ("G", NEW_SITE)):
        cases = render_site(spec, a.n, a.seed, "confounder_readout")
        labels = np.array([[c in case.confounders for c in names] for case in cases], bool)
        r = readings(net, cases)
        present = net.readout.present(torch.from_numpy(r["new"])).numpy()
        old, new = readout_metrics(r["old"], labels, names), readout_metrics(r["new"], labels, names)
        sites[name] = {"title": spec.title, "old": old, "new": new, "targets_met": _met(new),
                       "presence": {n: {"read_share": round(float(present[:, m].mean()), 4), "true_share": round(float(labels[:, m].mean()), 4)} for m, n in enumerate(names)},
                       "presence_share_mean_abs_error": round(float(np.abs(present.mean(0) - labels.mean(0)).mean()), 4),
                       "old_weight_range": [round(float(r["old"].min()), 4), round(float(r["old"].max()), 4)]}
        print(f"{name}: old top-1 {old['top1_hit_rate']:.3f} p@3 {old['precision_at_3']:.3f} | new top-1 {new['top1_hit_rate']:.3f} p@3 {new['precision_at_3']:.3f} min AUC {new['auc_min']}", flush=True)
    doc = {"command": portable_command("python -m mcdrl.evaluation.confounder_readout", list(argv if argv is not None else sys.argv[1:]), repo),
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "frames_per_site": a.n, "seed": a.seed, "targets": TARGETS,
           "calibration": {"thresholds": [round(float(v), 5) for v in net.readout.thresholds], "source_share": [round(float(v), 4) for v in net.readout.source_share]},
           "sites": sites}
    out = Path(a.out or bundle / "docs" / "results")
    write_json(out / "confounder_readout.json", doc)
    write_report(out / "confounder_readout.md", report_lines(doc, names))
    return 0


def report_lines(doc: dict, names: list[str]) -> list[str]:
    ok = lambda b: "met" if b else "**missed**"  # noqa: E731
    lines = ["# The per-image confounder report against the generator's labels", "",
             f"Generated by `{doc['command'].strip()}`; do not edit by hand.", "",
             f"{doc['frames_per_site']} rendered frames per site, none of them seen by the readout's calibration (source sites A-E). "
             "**old**: the MTRS regions' softmax resemblance to the dictionary (the report before issue 23). "
             "**new**: the confounder readout, cos(F_vis, z_m) - cos(F_vis, \"An endoscopy image\"), the report's reading now. "
             "Top-1 and precision@3 count the frames that have at least one confounder.", "",
             "| site | reading | top-1 hit rate | precision@3 (ceiling) | lowest AUC (confounders with >= 20 frames) |", "|---|---|---|---|---|"]
    for s, r in doc["sites"].items():
        for which in ("old", "new"):
            m = r[which]
            worst = min(m["auc"].items(), key=lambda kv: kv[1]) if m["auc"] else ("-", float("nan"))
            lines.append(f"| {s} | {which} | {100 * m['top1_hit_rate']:.0f}% | {m['precision_at_3']:.2f} ({m['precision_at_3_ceiling']:.2f}) | {worst[1]:.2f} ({worst[0]}) |")
    lines += ["", f"Targets at F and at G: top-1 >= {100 * TARGETS['top1_min']:.0f}%, precision@3 >= {TARGETS['precision_at_3_min']:.2f}, "
              f"AUC >= {TARGETS['auc_min']:.2f} for every confounder with >= {TARGETS['auc_min_frames']} frames.", ""]
    for s, r in doc["sites"].items():
        t = r["targets_met"]
        lines.append(f"- {s}: top-1 {ok(t['top1'])}, precision@3 {ok(t['precision_at_3'])}, AUC {ok(t['auc'])}.")
    lines += ["", "Per-confounder AUC (old / new), and the new readout's presence decisions: the share of frames read with the confounder "
              "against the true share (what the site profile reports).", "",
              "| confounder | " + " | ".join(f"{s} AUC old / new | {s} read / true share" for s in doc["sites"]) + " |",
              "|---|" + "---|---|" * len(doc["sites"])]
    for n in names:
        cells = []
        for r in doc["sites"].values():
            a_old, a_new = r["old"]["auc"].get(n), r["new"]["auc"].get(n)
            cells.append("-" if a_new is None else f"{a_old:.2f} / {a_new:.2f}")
            cells.append(f"{100 * r['presence'][n]['read_share']:.0f}% / {100 * r['presence'][n]['true_share']:.0f}%")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Mean absolute error of the read shares: " + ", ".join(f"{s} {100 * r['presence_share_mean_abs_error']:.1f} points" for s, r in doc["sites"].items())
              + ". Old readings' weights ranged " + ", ".join(f"{s} {r['old_weight_range'][0]:.3f}-{r['old_weight_range'][1]:.3f}" for s, r in doc["sites"].items())
              + f" (uniform: {1 / len(names):.3f})."]
    return lines


if __name__ == "__main__":
    from mcdrl.errors import install_cli_hook

    install_cli_hook()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
