"""The demo-CLIP pretraining workflow (bundle/configs/pretrain_clip.json) and its evaluator, on the tiny config."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BUNDLE, TINY, bundle_cli

from mcdrl.engines.pretrain import CLIPPretrainer
from mcdrl.networks.prompts import CONFOUNDERS


def test_pretrain_workflow_writes_loadable_weights_and_evaluator_runs(tmp_path):
    from safetensors.torch import load_file

    from mcdrl.evaluation.clip_probe import evaluate_clip
    from mcdrl.networks.clip_backbone import create_clip

    out = tmp_path / "clip" / "tiny.safetensors"
    proc = bundle_cli(["run", "pretrain", "--config_file", str(BUNDLE / "configs" / "pretrain_clip.json")], cwd=tmp_path,
                      overrides={"clip_model": TINY, "clip_weights": str(out), "steps": 3, "pool_size": 16, "batch_size": 8,
                                 "num_workers": 1, "save_dtype": "float32"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and not list(out.parent.glob("*.tmp*"))  # atomic: no temp file left behind
    fresh = create_clip(TINY, None).state_dict()
    saved = load_file(str(out))
    assert set(saved) == set(fresh)
    assert any(not torch.equal(saved[k], fresh[k]) for k in fresh if fresh[k].is_floating_point())  # it trained
    clip = create_clip(TINY, out)  # strict load through the same factory every config uses
    assert clip is not None
    res = evaluate_clip(TINY, str(out), n=12, batch_size=6)
    assert 0.0 <= res["nbi_vs_white_light_top1"] <= 1.0 and 0.0 <= res["retrieval_r5"] <= 1.0
    assert 0.0 <= res["motion_blur_pixel_baseline_auc"] <= 1.0 or math.isnan(res["motion_blur_pixel_baseline_auc"])
    assert set(res["feature_probe_auc"]) == set(res["presence_auc"])
    assert all(0.0 <= v <= 1.0 or math.isnan(v) for v in res["feature_probe_auc"].values())
    loc = res["localisation"]["maskclip/max_minus_background"]
    assert all(math.isfinite(v) for v in loc.values())


def test_feature_probe_finds_a_linear_cue_and_not_noise():
    from mcdrl.evaluation.clip_probe import probe_auc

    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, generator=g) < 0.2).numpy()
    noise = torch.randn(400, 16, generator=g)
    cue = noise.clone()
    cue[:, 3] += 1.5 * torch.from_numpy(labels).float()  # one feature shifted for positives
    assert probe_auc(cue, labels) > 0.8
    assert 0.4 < probe_auc(noise, labels) < 0.6  # out-of-fold scoring: no credit for fitting noise
    assert probe_auc(cue, labels) == probe_auc(cue, labels)  # deterministic


def test_dense_loss_targets_lesion_class_and_background_inside_fov():
    """Lesion patches (fraction >= 0.5) -> their class; background patches inside the FOV -> the background prompt;
    partial and out-of-FOV patches are ignored: moving a prompt towards a patch's target lowers the loss."""
    k, d = 5, 8
    prompts = torch.nn.functional.normalize(torch.randn(k + 1, d), dim=-1)
    frac = torch.zeros(1, 2, 2)
    frac[0, 0, 0] = 1.0  # lesion patch
    frac[0, 0, 1] = 0.3  # partial: ignored
    fov = torch.ones(1, 2, 2)
    fov[0, 1, 1] = 0.0  # outside the FOV: ignored
    cls = torch.tensor([2])
    tokens = torch.stack([prompts[2], torch.randn(d), prompts[k], torch.randn(d)])[None]  # (1, 4, d)
    good = CLIPPretrainer._dense_loss(tokens, prompts, frac, cls, fov, torch.tensor(10.0))
    swapped = torch.stack([prompts[k], tokens[0, 1], prompts[2], tokens[0, 3]])[None]
    bad = CLIPPretrainer._dense_loss(swapped, prompts, frac, cls, fov, torch.tensor(10.0))
    assert good < 0.1 < bad
    noise = torch.randn(1, 4, d) * 5  # the ignored patches do not matter
    moved = tokens.clone()
    moved[0, 1], moved[0, 3] = noise[0, 1], noise[0, 3]
    assert torch.allclose(CLIPPretrainer._dense_loss(moved, prompts, frac, cls, fov, torch.tensor(10.0)), good)


def test_prompt_loss_rewards_the_true_class_and_confounders():
    """Image-level prompt terms: lower when the image embedding is its class prompt plus its confounders' directions."""
    torch.manual_seed(0)
    d, k, c = 16, 5, 12
    class_emb, conf_emb, neutral = torch.randn(k + 1, d), torch.randn(c, d), torch.randn(1, d)
    cls = torch.tensor([1, -1])
    present = torch.zeros(2, c)
    present[0, 3] = present[1, 7] = 1
    aligned = torch.stack([class_emb[1] + conf_emb[3], class_emb[k] + conf_emb[7]]) * 5
    wrong = torch.stack([class_emb[2] + conf_emb[5], class_emb[0] + conf_emb[1]]) * 5
    scale = torch.tensor(20.0)
    good = CLIPPretrainer._prompt_loss(aligned, class_emb, conf_emb, neutral, cls, present, scale)
    bad = CLIPPretrainer._prompt_loss(wrong, class_emb, conf_emb, neutral, cls, present, scale)
    assert good < bad


def test_presence_weights_scale_one_confounders_term_and_reject_unknown_names(tmp_path):
    """A per-confounder weight multiplies that confounder's BCE (and only it); an unknown name is a clear error."""
    torch.manual_seed(0)
    d, k, c = 16, 5, 12
    class_emb, conf_emb, neutral = torch.randn(k + 1, d), torch.randn(c, d), torch.randn(1, d)
    pooled, cls, present = torch.randn(4, d), torch.tensor([0, 1, -1, 2]), (torch.rand(4, c) < 0.3).float()
    scale = torch.tensor(10.0)
    base = CLIPPretrainer._prompt_loss(pooled, class_emb, conf_emb, neutral, cls, present, scale)
    w = torch.ones(c)
    assert torch.allclose(CLIPPretrainer._prompt_loss(pooled, class_emb, conf_emb, neutral, cls, present, scale, w), base)
    w[4] = 9.0
    img = torch.nn.functional.normalize(pooled, dim=-1)
    pres = (img @ torch.nn.functional.normalize(conf_emb, dim=-1).t() - img @ torch.nn.functional.normalize(neutral, dim=-1).t()) * scale
    bce4 = torch.nn.functional.binary_cross_entropy_with_logits(pres[:, 4], present[:, 4])
    weighted = CLIPPretrainer._prompt_loss(pooled, class_emb, conf_emb, neutral, cls, present, scale, w)
    assert torch.allclose(weighted - base, 8.0 * bce4 / c, atol=1e-6)
    p = CLIPPretrainer(output_path=str(tmp_path / "w.safetensors"), presence_weights={"motion blur": 97.0})
    assert p.presence_weights[CONFOUNDERS.index("motion blur")] == 97.0 and p.presence_weights.sum() == 97.0 + 11
    with pytest.raises(ValueError, match="unknown confounders.*motion blurr"):
        CLIPPretrainer(presence_weights={"motion blurr": 2.0})
