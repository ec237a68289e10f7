"""Does the text-query classifier's output depend on which source site's image embedding writes its weights?

Source-site frames only (the validation split of sites A-E); no held-out site is read and nothing is chosen by it.
For each frame the decoder features are those of the frame itself; only F_vis, which the controller reads to write
the dynamic 1x1 convs, is replaced by the mean F_vis of another source site (do(F_vis = mean of site s')). The
1x1-conv classifier has no such input, so it has nothing to compare here.

    PYTHONPATH=custom python bundle/docs/results/experiments/head_loso/site_conditioning.py [model.pt]

Prints: the share of F_vis's variance between sites; per frame with a lesion, the Dice of the predicted mask (no
presence decision, no post-processing) against the truth with its own F_vis, with its own site's mean F_vis (the
control) and with each other site's mean, and the Dice between those masks and the one from its own F_vis.
"""
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcdrl.evaluation.scoring import build_bundle_network, load_labelled_images

root = Path(__file__).resolve().parents[5]
net, _ = build_bundle_network(str(root / "bundle/configs/inference.json"),
                              sys.argv[1] if len(sys.argv) > 1 else root / "bundle/models/model.pt", {"bundle_root": str(root / "bundle")})
torch.set_num_threads(1)
frames = load_labelled_images(root / "data/synthetic/datalist.json", "validation")
sites = sorted({f["site"] for f in frames})


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


feats = []
with torch.no_grad():
    for f in frames:
        x = torch.from_numpy(f["image"]).permute(2, 0, 1).float()[None] / 255.0
        y = torch.from_numpy(f["mask"])
        tokens, pooled = net.backbone.forward_tokens(net._resize_in(x))
        feats.append((f["site"], x, y, tokens, pooled))
    emb = torch.cat([F.normalize(p, dim=-1) for *_, p in feats])
    site_of = [s for s, *_ in feats]
    means = {s: emb[[i for i, t in enumerate(site_of) if t == s]].mean(0, keepdim=True) for s in sites}
    total = float(((emb - emb.mean(0)) ** 2).sum(1).mean())
    between = float(np.mean([float(((means[s] - emb.mean(0)) ** 2).sum()) for s in site_of]))
    print(f"F_vis (normalised): between-site share of variance {between / total:.2f} over {len(site_of)} frames of {sites}")

    own, own_mean, agree_own_mean, swapped, agree = [], [], [], defaultdict(list), []
    for s, x, y, tokens, pooled in feats:
        if not y.any():
            continue
        pred = net._decode(tokens, x, pooled).argmax(1)[0].bool()
        own.append(dice(pred, y))
        p1 = net._decode(tokens, x, means[s] * pooled.norm()).argmax(1)[0].bool()  # the control: its own site's mean
        own_mean.append(dice(p1, y))
        agree_own_mean.append(dice(pred, p1))
        for t in sites:
            if t == s:
                continue
            p2 = net._decode(tokens, x, means[t] * pooled.norm()).argmax(1)[0].bool()
            swapped[s].append(dice(p2, y))
            agree.append(dice(pred, p2))
    print(f"control, its own site's mean F_vis: Dice {np.mean(own_mean):.3f}, Dice between the masks {np.mean(agree_own_mean):.3f}")
    print(f"lesion frames: {len(own)}; Dice with its own F_vis {np.mean(own):.3f}; with another source site's mean F_vis "
          f"{np.mean([v for vs in swapped.values() for v in vs]):.3f}; Dice between the two masks {np.mean(agree):.3f} "
          f"(median {np.median(agree):.3f}, 10th percentile {np.percentile(agree, 10):.3f})")
