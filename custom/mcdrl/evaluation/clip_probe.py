"""Does a CLIP know the MCDRL vocabulary, and does MTRS localise with it? Measured on held-out generated images.

``python -m mcdrl.evaluation.clip_probe --clip_model mcdrl-demo-vit --clip_weights FILE --n 400 --out results.json``

* imaging mode: NBI vs white light, top-1 of the two confounder prompts, on images rendered in one of the two modes
  (``white light imaging`` is a rendered mode in this world: the HD processor look). Plain frames, which no caption
  names a mode for, are added in ``nbi_vs_white_light_top1_all_images`` (counted as white light);
* lighting: bright / dark / uneven, top-1 of three (images with exactly one of them);
* distance: near vs far, top-1 of two (images with one of them);
* presence AUC of blur, artifacts, mucus, blood and specular reflection: score = cos(image, "An endoscopy image with X")
  - cos(image, "An endoscopy image"), against whether X was rendered;
* lesion class zero-shot top-1 over the 5 class prompts (images with a lesion; chance 20%);
* a pixel baseline for motion blur: the AUC of minus the variance of a Laplacian of the grey CLIP-size image (central
  half), i.e. whether the cue is present in the pixels the CLIP sees;
* a feature probe per presence confounder: the AUC of an L2-regularised logistic regression on the pooled image
  embedding, 5-fold cross-validated over the evaluated images, i.e. whether the encoder represents the cue at all,
  whatever the text says (the confounders the prompts do read are its positive controls);
* image -> caption retrieval R@1 / R@5 among the evaluated images;
* MTRS localisation at alpha: the lesion fraction of the selected positions divided by the lesion's area fraction,
  averaged over lesion images, next to the same ratio for random selection and for a centre prior, for every
  read-out x scoring combination.

The images come from :data:`mcdrl.synthetic.GENERIC_MIXTURE` with a seed disjoint from pretraining's.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcdrl.networks.clip_backbone import CLIPVisualBackbone, create_clip
from mcdrl.networks.prompts import BACKGROUND_PROMPT, CLASS_TEMPLATE, CONFOUNDER_TEMPLATE, LESION_CLASSES
from mcdrl.networks.region_selection import RegionSelector
from mcdrl.utils import atomic_path

__all__ = ["auc", "evaluate_clip", "localisation_ratios", "probe_auc"]

logger = logging.getLogger("mcdrl.evaluation.clip_probe")
PRESENCE = ["motion blur", "imaging artifacts", "mucus", "blood", "specular reflection"]
LIGHTING = ["bright lighting", "dark lighting", "uneven lighting"]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as P(score_pos > score_neg) + P(equal) / 2 over all pairs; NaN without both classes."""
    labels = np.asarray(labels, bool)
    pos, neg = np.asarray(scores)[labels], np.asarray(scores)[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def localisation_ratios(scores: torch.Tensor, frac: torch.Tensor, alpha: float, grid: int) -> dict[str, float]:
    """Selected-lesion-fraction / lesion-area ratios for MTRS, random and centre-prior selection.

    Args:
        scores: (B, L) MTRS scores. frac: (B, L) lesion fraction of each patch (pixel coverage). alpha: kept fraction.
    """
    b, L = scores.shape
    n = max(1, round(alpha * L))
    area = frac.mean(dim=1)
    sel = frac.gather(1, scores.topk(n, dim=1).indices).mean(dim=1)
    yy, xx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centre = -((yy - (grid - 1) / 2) ** 2 + (xx - (grid - 1) / 2) ** 2).flatten().float()
    cen = frac[:, centre.topk(n).indices].mean(dim=1)
    rnd = frac.gather(1, torch.rand(b, L, generator=torch.Generator().manual_seed(0)).topk(n, dim=1).indices).mean(dim=1)
    keep = area > 0
    ratio = lambda s: float((s[keep] / area[keep]).mean())  # noqa: E731
    return {"mtrs": ratio(sel), "random": ratio(rnd), "centre_prior": ratio(cen)}


def probe_auc(features: torch.Tensor, labels: np.ndarray, folds: int = 5, l2: float = 1e-2) -> float:
    """Cross-validated AUC of a logistic-regression probe: features (n, d), binary labels (n,).

    Image i is in fold i % folds; each fold is scored by a probe fit (LBFGS, L2 penalty ``l2`` on the weights) on the
    other folds, with the features standardised by the training folds' statistics. Returns the AUC of the pooled
    out-of-fold scores. Deterministic.
    """
    x, y = features.double(), torch.as_tensor(np.asarray(labels, dtype=np.float64))
    scores = torch.zeros(len(y), dtype=torch.float64)
    fold = torch.arange(len(y)) % folds
    for f in range(folds):
        tr, te = fold != f, fold == f
        mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
        xt = (x[tr] - mean) / std
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(xt @ w + b, y[tr]) + l2 * w.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        scores[te] = ((x[te] - mean) / std @ w + b).detach()
    return auc(scores.numpy(), y.numpy().astype(bool))


@torch.no_grad()
def evaluate_clip(model_name: str, weights_path: str | None, n: int = 400, seed: int = 987_654, alpha: float = 0.25, batch_size: int = 32) -> dict:
    """All the figures above as one dict (see the module docstring)."""
    import open_clip

    from mcdrl.synthetic import GENERIC_MIXTURE, sample_case

    clip = create_clip(model_name, weights_path)
    tok = open_clip.get_tokenizer(model_name)
    backbones = {r: CLIPVisualBackbone(model_name, readout=r, clip=clip).eval() for r in ("maskclip", "proj")}
    size, grid = backbones["maskclip"].image_size, backbones["maskclip"].grid_size

    def text(prompts):
        return F.normalize(clip.encode_text(tok(prompts)).float(), dim=-1)

    conf_prompts = {c: CONFOUNDER_TEMPLATE.format(domain=c) for c in PRESENCE + LIGHTING + ["narrow-band imaging", "white light imaging", "a near view", "a far view"]}
    t_conf = dict(zip(conf_prompts, text(list(conf_prompts.values()))))
    t_neutral = text(["An endoscopy image"])[0]
    t_cls = text([CLASS_TEMPLATE.format(cls=c) for c in LESION_CLASSES])
    t_bg = text([BACKGROUND_PROMPT])[0]

    img_emb, caps, confs, classes, fracs, sharpness = [], [], [], [], [], []
    laplace = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    dense = {r: [] for r in backbones}
    for start in range(0, n, batch_size):
        cases = [sample_case(GENERIC_MIXTURE, seed=seed + i) for i in range(start, min(n, start + batch_size))]
        x = torch.stack([torch.from_numpy(c.image).permute(2, 0, 1).float() / 255.0 for c in cases])
        x = F.interpolate(x, size=[size, size], mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        q = size // 4
        sharpness.append(F.conv2d(x.mean(1, keepdim=True), laplace)[:, 0, q:-q, q:-q].flatten(1).var(dim=1))
        for r, bb in backbones.items():
            tokens, pooled = bb.forward_tokens(x)
            dense[r].append(tokens.float())
            if r == "maskclip":
                img_emb.append(F.normalize(pooled.float(), dim=-1))
        masks = torch.stack([torch.from_numpy(c.mask).float() for c in cases])[:, None]
        fracs.append(F.adaptive_avg_pool2d(masks, grid).flatten(1))
        caps += [c.caption for c in cases]
        confs += [set(c.confounders) for c in cases]
        classes += [LESION_CLASSES.index(c.lesion_class) if c.lesion_class in LESION_CLASSES else -1 for c in cases]
    img = torch.cat(img_emb)
    frac = torch.cat(fracs)
    cls = torch.tensor(classes)
    res: dict = {"clip_model": model_name, "n_images": n, "seed": seed}

    def top1(names, subset):
        idx = [i for i, c in enumerate(confs) if subset(c)]
        if not idx:
            return float("nan"), 0
        t = torch.stack([t_conf[k] for k in names])
        pred = (img[idx] @ t.t()).argmax(1)
        truth = torch.tensor([next(j for j, k in enumerate(names) if k in confs[i] or (k == "white light imaging" and "narrow-band imaging" not in confs[i])) for i in idx])
        return float((pred == truth).float().mean()), len(idx)

    modes = {"narrow-band imaging", "white light imaging"}
    res["nbi_vs_white_light_top1"], res["nbi_vs_white_light_n"] = top1(["narrow-band imaging", "white light imaging"], lambda c: len(c & modes) == 1)
    res["nbi_vs_white_light_top1_all_images"], _ = top1(["narrow-band imaging", "white light imaging"], lambda c: True)
    res["lighting_top1"], res["lighting_n"] = top1(LIGHTING, lambda c: len(c & set(LIGHTING)) == 1)
    res["near_vs_far_top1"], res["near_far_n"] = top1(["a near view", "a far view"], lambda c: len(c & {"a near view", "a far view"}) == 1)
    res["presence_auc"] = {}
    for k in PRESENCE:
        s = (img @ t_conf[k] - img @ t_neutral).numpy()
        res["presence_auc"][k] = auc(s, np.array([k in c for c in confs]))
    res["motion_blur_pixel_baseline_auc"] = auc(-torch.cat(sharpness).numpy(), np.array(["motion blur" in c for c in confs]))
    res["feature_probe_auc"] = {k: probe_auc(img, np.array([k in c for c in confs])) for k in PRESENCE}
    les = cls >= 0
    res["lesion_class_top1"] = float(((img[les] @ t_cls.t()).argmax(1) == cls[les]).float().mean())
    t_caps = torch.cat([text(caps[i : i + 64]) for i in range(0, len(caps), 64)])
    ranks = (img @ t_caps.t()).argsort(dim=1, descending=True)
    hit = ranks == torch.arange(len(caps))[:, None]
    res["retrieval_r1"] = float(hit[:, :1].any(1).float().mean())
    res["retrieval_r5"] = float(hit[:, :5].any(1).float().mean())
    res["localisation_alpha"] = alpha
    res["localisation"] = {}
    for r in backbones:
        tokens = torch.cat(dense[r])[les]
        for scoring in ("max", "max_minus_background"):
            scores = RegionSelector(alpha, scoring).score(tokens, t_cls, t_bg)
            res["localisation"][f"{r}/{scoring}"] = localisation_ratios(scores, frac[les], alpha, grid)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip_model", default="mcdrl-demo-vit")
    p.add_argument("--clip_weights", default=None)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--alpha", type=float, default=0.25)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    a = p.parse_args(argv)
    res = evaluate_clip(a.clip_model, a.clip_weights, a.n, alpha=a.alpha)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        with atomic_path(a.out) as tmp:
            Path(tmp).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
