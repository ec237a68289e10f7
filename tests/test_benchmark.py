"""The LOSO benchmark (python -m mcdrl.evaluation.loso): its parts, and the smoke profile end to end on the tiny CLIP.

Mechanics only: the scores of a 2-epoch tiny-CLIP run mean nothing, so no test asserts a score level.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PYTHON, REPO, TINY, save_tiny_clip

from mcdrl.errors import ConfigError, InputFileError
from mcdrl.evaluation.loso.features import apply_flip
from mcdrl.evaluation.loso.gin import gin_augment
from mcdrl.evaluation.loso.methods import ABLATIONS, EXPERIMENTS, METHODS, dictionary_prompts
from mcdrl.evaluation.loso.model import build_network, encode_trunk, forward_cached, forward_diagnostics, load_backbone
from mcdrl.evaluation.loso.profiles import TRAIN_DEFAULTS, get_profile
from mcdrl.evaluation.loso.train import batch_dice
from mcdrl.evaluation.metrics import per_image_metrics
from mcdrl.networks.prompts import CONFOUNDER_FAMILIES, CONFOUNDERS, family_of


def _resolve(cfg: dict, value):
    if isinstance(value, str) and value.startswith("@"):
        node = cfg
        for part in value[1:].split("#"):
            node = node[part]
        return node
    return value


def test_train_defaults_mirror_train_json():
    cfg = json.loads((REPO / "bundle" / "configs" / "train.json").read_text())
    for key, value in TRAIN_DEFAULTS.items():
        assert _resolve(cfg, cfg[key]) == value, f"TRAIN_DEFAULTS[{key!r}] = {value!r} but train.json has {cfg[key]!r}"


def test_methods_differ_only_in_their_settings():
    s = {name: m.settings(TRAIN_DEFAULTS) for name, m in METHODS.items()}
    assert s["baseline"] == {**s["mcdrl"], "use_intervention": False, "lambda_causal": 0.0, "lambda_contrast": 0.0}
    assert s["baseline_gin"] == {**s["baseline"], "augmentation": "gin"}
    assert s["wo_mtrs"] == {**s["mcdrl"], "alpha": 1.0}
    assert s["wo_cdrl"] == {**s["mcdrl"], "use_intervention": False, "lambda_causal": 0.0}
    assert (s["mcdrl"]["alpha"], s["mcdrl"]["depth"], s["mcdrl"]["lambda_causal"], s["mcdrl"]["lambda_contrast"]) == (0.5, 3, 0.5, 0.1)
    changed = {name: {k for k, v in m.settings(TRAIN_DEFAULTS).items() if v != s["mcdrl"][k]} for name, m in ABLATIONS.items()}
    assert all(len(c) == 1 for c in changed.values()), changed
    # an experiment adds its one setting; the published methods' settings (hence their cached run ids) do not change
    assert EXPERIMENTS["mcdrl_prior"].settings(TRAIN_DEFAULTS) == {**s["mcdrl"], "weighting": "prior"}
    assert all("weighting" not in v for v in s.values())


def test_dictionary_prompts():
    assert dictionary_prompts(12) == CONFOUNDERS
    assert dictionary_prompts(15)[:12] == CONFOUNDERS and len(set(dictionary_prompts(15))) == 15
    assert len({family_of(c) for c in dictionary_prompts(3)}) == 3
    assert {family_of(c) for c in dictionary_prompts(6)} == set(CONFOUNDER_FAMILIES)
    with pytest.raises(ValueError, match="dictionary size"):
        dictionary_prompts(14)


def test_gin_augment_is_random_bounded_and_reproducible():
    x = torch.rand(3, 3, 40, 40)
    a = gin_augment(x, torch.Generator().manual_seed(1))
    b = gin_augment(x, torch.Generator().manual_seed(1))
    c = gin_augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert (a - x).abs().mean() > 0.02
    # a spatial structure survives (GIN changes intensities/colours, not geometry): mask-like edges stay put
    edge = torch.zeros(1, 3, 40, 40)
    edge[..., :, 20:] = 1.0
    out = gin_augment(edge, torch.Generator().manual_seed(3))
    left, right = out[0, :, 5:35, 5:15], out[0, :, 5:35, 25:35]  # beyond the 4-pixel reach of four 3x3 layers
    assert left.flatten(1).std(1).max() < 1e-4 and right.flatten(1).std(1).max() < 1e-4


def test_batch_dice_matches_per_image_metrics():
    rng = np.random.default_rng(0)
    preds, labels = [], []
    for case in range(8):
        p = torch.from_numpy(rng.random((24, 24)) > 0.7)
        y = torch.from_numpy(rng.random((24, 24)) > 0.6)
        if case == 0:
            p, y = torch.zeros_like(p), torch.zeros_like(y)  # empty + empty = 1
        if case == 1:
            y = torch.zeros_like(y)  # empty truth, non-empty prediction = 0
        preds.append(p)
        labels.append(y)
    fast = batch_dice(torch.stack(preds), torch.stack(labels))
    ref = torch.tensor([per_image_metrics(p.long(), y.long())["dice"] for p, y in zip(preds, labels)])
    assert torch.allclose(fast, ref, atol=1e-6)
    assert fast[0] == 1 and fast[1] == 0


def test_apply_flip_views():
    x = torch.arange(6.0).view(1, 2, 3)
    assert torch.equal(apply_flip(x, 0), x)
    assert torch.equal(apply_flip(x, 1), x.flip(-1))
    assert torch.equal(apply_flip(x, 2), x.flip(-2))
    assert torch.equal(apply_flip(x, 3), x.flip(-1).flip(-2))


def _net(world, **overrides):
    settings = {**METHODS["mcdrl"].settings(TRAIN_DEFAULTS), **overrides}
    backbone = load_backbone(TINY, world["weights"])
    torch.manual_seed(0)
    return build_network(backbone, world["dictionary"], 12, settings, 2, (8, 8, 8, 8), "max_minus_background")


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_forward_from_cached_tokens_equals_mcdrlnet(tiny_world, alpha):
    """The benchmark's forward from cached trunk tokens is MCDRLNet's own forward (eval and train)."""
    net = _net(tiny_world, alpha=alpha)
    x = torch.rand(2, 3, 80, 80)
    net.eval()
    ref = net(x)
    x_in = encode_trunk(net.backbone, x)
    assert x_in.shape == (2, 1 + net.grid_size ** 2, 32)
    assert torch.allclose(forward_cached(net, x_in, (80, 80)), ref, atol=1e-5)
    logits, idx, weights = forward_diagnostics(net, x_in, (80, 80))
    ref_logits, ref_weights = net.predict_with_confounders(x)
    assert torch.allclose(logits, ref_logits, atol=1e-5) and torch.allclose(weights, ref_weights, atol=1e-5)
    assert idx.shape == (2, max(1, round(alpha * net.grid_size ** 2)))
    net.train()
    ref_train = net(x)
    out = forward_cached(net, x_in, (80, 80))
    for key in ("pred", "image_embedding", "region_embedding"):
        assert torch.allclose(out[key], ref_train[key], atol=1e-5), key
    assert out["intervention_on"] is True


def test_only_the_tail_of_the_encoder_trains(tiny_world):
    net = _net(tiny_world)
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"backbone", "intervention", "head"}
    backbone_trainable = {n for n, p in net.backbone.named_parameters() if p.requires_grad}
    assert backbone_trainable and all(n.startswith(("visual.transformer.resblocks.1.", "visual.ln_post.", "visual.proj")) for n in backbone_trainable)
    assert not any(p.requires_grad for p in net.backbone.visual.conv1.parameters())


def test_prepare_rejects_missing_and_foreign_dictionaries(tiny_world, tmp_path):
    from mcdrl.evaluation.loso.runner import prepare
    from mcdrl.networks.dictionary import build_dictionary

    profile = get_profile("smoke")
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(InputFileError, match="nope.safetensors"):
        prepare(profile, TINY, tiny_world["weights"], missing, tmp_path / "cache")
    other = save_tiny_clip(tmp_path / "other.safetensors", seed=1)
    foreign = build_dictionary(TINY, other, tmp_path / "foreign.safetensors")
    with pytest.raises(ConfigError, match="sha256"):
        prepare(profile, TINY, tiny_world["weights"], foreign, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # checked before any world is generated


def _run_cli(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([PYTHON, "-m", "mcdrl.evaluation.loso", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_smoke_profile_end_to_end(tiny_world, tmp_path):
    """The smoke profile: 5 methods x 3 held-out sites x 2 seeds + the ablation grid, in 2 worker processes."""
    out, cache = tmp_path / "results", tmp_path / "cache"
    args = ["--profile", "smoke", "--clip_model", TINY, "--clip_weights", str(tiny_world["weights"]),
            "--dictionary_path", str(tiny_world["dictionary"]), "--out", str(out), "--cache_dir", str(cache), "--ablations"]
    proc = _run_cli(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    prof = get_profile("smoke")
    doc = json.loads((out / "loso.json").read_text())
    assert set(doc["methods"]) == set(METHODS)
    for name, m in doc["methods"].items():
        assert 0.0 <= m["dice_mean"] <= 1.0 and m["dice_std"] >= 0.0
        assert set(m["per_site_dice"]) == set(prof.sites)
        assert len(m["per_seed_dice"]) == len(prof.seeds)
        assert m["dice_mean"] == pytest.approx(np.mean(m["per_seed_dice"]))
        assert np.mean(list(m["per_site_dice"].values())) == pytest.approx(m["dice_mean"])
    assert doc["meta"]["wall_time_s"] > 0 and doc["meta"]["cpu_count"] >= 1
    assert "target" in doc["comparison"]
    att = doc["diagnostics"]["mcdrl_attention"]
    assert len(att["confounders"]) == 12 and sum(att["mean_weight"].values()) == pytest.approx(1.0, abs=1e-3)
    # per-image CSVs: one row per test image, held-out site and seed; Dice recomputes the JSON's mean
    n_rows = len(prof.sites) * len(prof.seeds) * prof.n_per_site
    for name in METHODS:
        lines = (out / "loso_raw" / f"{name}.csv").read_text().splitlines()
        assert lines[0] == "held_out,seed,id,lesion_class,dice,iou,pixel_accuracy,hd95"
        assert len(lines) == 1 + n_rows
    rows = [line.split(",") for line in (out / "loso_raw" / "mcdrl.csv").read_text().splitlines()[1:]]
    site_seed = {}
    for r in rows:
        site_seed.setdefault((r[0], r[1]), []).append(float(r[4]))
    per_seed = [np.mean([np.mean(site_seed[(s, str(k))]) for s in prof.sites]) for k in prof.seeds]
    assert np.mean(per_seed) == pytest.approx(doc["methods"]["mcdrl"]["dice_mean"], abs=1e-3)
    md = (out / "loso.md").read_text()
    for name in METHODS:
        assert f"| {name} |" in md
    assert "do not edit by hand" in md and "Per held-out site: Dice" in md
    assert (out / "loso.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    abl = json.loads((out / "ablations.json").read_text())
    assert [e["value"] for e in abl["groups"]["dictionary size"]] == [3, 6, 12, 15]
    assert [e["value"] for e in abl["groups"]["intervention depth"]] == [1, 3, 5]
    assert [e["value"] for e in abl["groups"]["alpha"]] == [0.25, 0.5, 0.75]
    assert (out / "ablations.png").read_bytes()[:4] == b"\x89PNG" and "## alpha" in (out / "ablations.md").read_text()
    # a second invocation reuses every finished run and reproduces the same numbers
    again = _run_cli(args[:-1] + ["--out", str(tmp_path / "again")])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "runs reused" in again.stdout
    doc2 = json.loads((tmp_path / "again" / "loso.json").read_text())
    assert {k: v["dice_mean"] for k, v in doc2["methods"].items()} == {k: v["dice_mean"] for k, v in doc["methods"].items()}
