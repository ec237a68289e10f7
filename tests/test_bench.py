"""The benchmark and the speed paths: equivalence with the plain fp32 path, bf16 mask agreement, the bench JSON.

No test here asserts a speed: timings on a shared 2-core machine are not test material.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PYTHON, REPO, TINY

from mcdrl.evaluation.speed.fast import AutocastInferer, mask_dice
from mcdrl.evaluation.speed.models import build_network
from mcdrl.evaluation.speed.timing import ModuleTimer, interleaved, paired_ratio
from mcdrl.networks.clip_backbone import CLIPVisualBackbone
from mcdrl.networks.dictionary import ConfounderDictionary
from mcdrl.networks.head import SegmentationHead
from mcdrl.networks.intervention import CausalIntervention, InterventionBlock
from mcdrl.networks.mcdrlnet import MCDRLNet
from mcdrl.networks.region_selection import RegionSelector

HEADLINE_KEYS = ["forward_ratio_bs1", "forward_ratio_bs8", "train_step_ratio", "peak_rss_mb", "intervention_fraction"]


def randomise_linears(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and biases for every Linear (the intervention's residual branches start at zero, which would
    make an equivalence test of the attention vacuous)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * m.in_features**-0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return module


def reference_head(head: SegmentationHead, grid: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
    """The decoder in plain NCHW layout throughout (the unoptimised path), with its skips from the image if it has them."""
    x = head.dropout(head.proj(grid))
    skips = head.pixel_encoder(image) if head.pixel_encoder is not None else []
    for stage, k in zip(head.stages, head.skip_levels):
        x = stage(x, skips[k] if k >= 0 and skips else None)
    return head.classifier(x)


def reference_eval_forward(net: MCDRLNet, x: torch.Tensor) -> torch.Tensor:
    """MCDRL eval forward composed step by step from the parts, with the reference (SDPA) intervention layers and the
    reference (NCHW) decoder."""
    s = net.image_size
    xs = F.interpolate(x, size=[s, s], mode="bilinear", align_corners=False, antialias=True)
    tokens = net.backbone.forward_dense(xs)
    d = net.dictionary
    if net.deconfounding == "all":  # the text-guided projection, where the network has it (inference.json: regions)
        tokens = net.projection(tokens)
    idx, _ = net.selector(tokens, d.class_embeddings, d.background_embedding)
    gather_idx = idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    f = torch.gather(tokens, 1, gather_idx)
    if net.deconfounding == "regions":
        f = net.projection(f)
    for layer in net.intervention.layers:
        f = reference_block(layer, f, d.confounders)
    tokens = tokens.scatter(1, gather_idx, f)
    b, _, dim = tokens.shape
    grid = tokens.transpose(1, 2).reshape(b, dim, net.grid_size, net.grid_size)
    out = net.grid_size * net.head.upsample_factor
    pixels = net.backbone.normalize(F.interpolate(xs, size=[out, out], mode="bilinear", align_corners=False, antialias=True))
    return F.interpolate(reference_head(net.head, grid, pixels), size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
def test_optimised_eval_forward_equals_reference_path(size):
    net = build_network(TINY, heads=2, decoder_channels=(16, 8))
    randomise_linears(net.intervention)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out, ref = net(x), reference_eval_forward(net, x)
        net.use_intervention = False
        without = net(x)
    assert out.shape == (2, 2, *size) and out.is_contiguous()
    assert (out - ref).abs().max().item() <= 1e-4
    assert (out - without).abs().max().item() > 1e-3  # the intervention really contributes: the test is not vacuous


@pytest.mark.parametrize("deconfounding", [None, "regions"])  # None: the shipped scope (inference.json)
@pytest.mark.parametrize("use_intervention", [True, False])
def test_one_pass_predict_with_confounders_equals_two_pass_reference(use_intervention, deconfounding):
    """predict_with_confounders runs the intervention once; its logits must equal the eval forward, and its confounder
    reading the readout's scores of F_vis (computed here from a separate pass)."""
    net = build_network(TINY, heads=2, decoder_channels=(16, 8), use_intervention=use_intervention, deconfounding=deconfounding)
    assert net.deconfounding == (deconfounding or json.loads((REPO / "bundle/configs/inference.json").read_text())["deconfounding"])
    randomise_linears(net.intervention)
    x = torch.rand(3, 3, 72, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        logits, weights = net.predict_with_confounders(x)
        ref = reference_eval_forward(net, x) if use_intervention else net(x)
        _, pooled = net.backbone.forward_tokens(net._resize_in(x))
        # the confounder readout (uncalibrated here: r = 0): cos(F_vis, z_m), whatever the intervention does
        ref_w = torch.nn.functional.cosine_similarity(pooled[:, None], net.dictionary.confounders[None], dim=-1)
    assert (logits - ref).abs().max().item() <= 1e-4
    assert weights.shape == (3, 12) and (weights - ref_w).abs().max().item() <= 1e-4
    assert (weights.max(-1).values > weights.min(-1).values).all()


def test_channels_last_head_equals_nchw_head_forward_and_backward():
    torch.manual_seed(0)
    head = SegmentationHead(64, (32, 16, 8), dropout=0.0).train()
    grid = torch.randn(2, 64, 7, 7, requires_grad=True)
    out = head(grid)
    out.square().mean().backward()
    grads = [p.grad.clone() for p in head.parameters()] + [grid.grad.clone()]
    head.zero_grad()
    grid.grad = None
    ref = reference_head(head, grid)
    ref.square().mean().backward()
    ref_grads = [p.grad for p in head.parameters()] + [grid.grad]
    assert out.shape == (2, 2, 56, 56) and out.is_contiguous()
    assert (out - ref).abs().max().item() <= 1e-4
    assert max((g - r).abs().max().item() for g, r in zip(grads, ref_grads)) <= 1e-4


def reference_block(block: InterventionBlock, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The intervention layer as first written: q/k/v projections and fused SDPA over the M confounders."""
    b, n, d = x.shape
    q, k, v = block._qkv(x, z)
    a = F.scaled_dot_product_attention(q, k, v)
    x = x + block.drop(block.out_proj(a.transpose(1, 2).reshape(b, n, d)))
    return x + block.drop(block.ffn(block.norm_ffn(x)))


@pytest.mark.parametrize("dim,heads", [(64, 2), (512, 8)])
def test_folded_intervention_equals_sdpa_reference_forward_backward_and_traced(dim, heads):
    torch.manual_seed(0)
    block = randomise_linears(InterventionBlock(dim, heads)).train()
    z = F.normalize(torch.randn(12, dim), dim=-1)
    assert heads * 12 < dim  # the folded path is the one under test
    x1 = torch.randn(2, 9, dim, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    out, ref = block(x1, z), reference_block(block, x2, z)
    assert (out - ref).abs().max().item() <= 1e-4
    out.square().mean().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    ref.square().mean().backward()
    assert max((g - p.grad).abs().max().item() for g, p in zip(grads, block.parameters())) <= 1e-4
    assert (x1.grad - x2.grad).abs().max().item() <= 1e-4
    block.eval()
    traced = torch.jit.trace(block, (torch.randn(1, 5, dim), z), check_trace=False)
    x = torch.randn(3, 7, dim)
    with torch.no_grad():
        assert (traced(x, z) - reference_block(block, x, z)).abs().max().item() <= 1e-4


def test_eval_fold_cache_follows_weight_and_dictionary_changes():
    """The eval-time fold cache never serves stale matrices: in-place updates, load_state_dict and a new dictionary."""
    torch.manual_seed(0)
    block = randomise_linears(InterventionBlock(64, 2)).eval()
    z = F.normalize(torch.randn(12, 64), dim=-1)
    x = torch.randn(2, 5, 64)
    with torch.inference_mode():
        first = block(x, z)
        assert block._fold_cache is not None
        assert torch.equal(block(x, z), first)  # served from the cache
        assert (first - reference_block(block, x, z)).abs().max().item() <= 1e-4
    with torch.no_grad():
        block.q_proj.weight.mul_(1.5)  # in-place, as an optimiser step
        assert (block(x, z) - reference_block(block, x, z)).abs().max().item() <= 1e-4
        other = randomise_linears(InterventionBlock(64, 2))
        block.load_state_dict(other.state_dict())
        assert (block(x, z) - reference_block(other, x, z)).abs().max().item() <= 1e-4
        z2 = F.normalize(torch.randn(12, 64), dim=-1)
        assert (block(x, z2) - reference_block(other, x, z2)).abs().max().item() <= 1e-4
        z2_copy = z2.clone()
        z2.mul_(-1)  # the same storage, new values
        assert (block(x, z2) - reference_block(other, x, z2)).abs().max().item() <= 1e-4
        z2.copy_(z2_copy)
        fp32 = block(x, z2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            block(x, z2)
            assert block._fold_cache[2][0].dtype == torch.bfloat16
        assert torch.equal(block(x, z2), fp32)  # the bf16 fold is not served to the fp32 path
    block.train()
    assert block._fold_cache is None
    out = block(x, z)
    assert out.requires_grad and block._fold_cache is None  # never cached with autograd on


def test_state_dict_keys_unchanged_by_benchmark_builds():
    """The benchmark's networks are the bundle's: same key set as a network built part by part."""
    net = build_network(TINY, heads=2, decoder_channels=(16, 8))
    backbone = CLIPVisualBackbone(TINY, None)
    d = backbone.embed_dim
    head = SegmentationHead(d, (16, 8), skip_channels=tuple(json.loads((REPO / "bundle" / "configs" / "inference.json").read_text())["decoder_skip_channels"])[:2])
    plain = MCDRLNet(backbone, ConfounderDictionary(None, d), RegionSelector(0.5), CausalIntervention(d, 3, heads=2), head)
    assert list(net.state_dict()) == list(plain.state_dict())


def _tiny_fitted_network(tmp_path):
    """A small ViT with an 8x8 token grid (64 px, patch 8), fitted for 120 AdamW steps to 8 disc images.

    A fitted network is needed for a meaningful mask comparison: random weights give near-tie logits everywhere.
    """
    import open_clip
    from conftest import make_tiny_dataset

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0, "pool_type": "avg"},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "mcdrl-bench-test-p8.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    net = build_network("mcdrl-bench-test-p8", heads=2, decoder_channels=(16, 8))
    from PIL import Image

    datalist = json.loads(make_tiny_dataset(tmp_path / "data").read_text())
    entries = datalist["training"] + datalist["validation"]
    x = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / "data" / e["image"]))).permute(2, 0, 1).float() / 255 for e in entries])
    y = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / "data" / e["label"]))).long() for e in entries])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(120):
        opt.zero_grad()
        F.cross_entropy(net(x)["pred"], y).backward()
        opt.step()
    return net.eval(), x, y


def test_bf16_autocast_masks_stay_within_one_percent_dice_of_fp32(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is faster and immune to other jobs on a shared machine
    try:
        torch.manual_seed(0)
        net, x, y = _tiny_fitted_network(tmp_path)
        with torch.inference_mode():
            fp32 = net(x)
            bf16 = AutocastInferer("bfloat16")(x, net)
    finally:
        torch.set_num_threads(threads)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    truth = F.one_hot(y, 2).permute(0, 3, 1, 2).float()
    dice_fp32, dice_bf16 = mask_dice(fp32, truth).mean().item(), mask_dice(bf16, truth).mean().item()
    assert dice_fp32 >= 0.9, f"the network did not fit (Dice {dice_fp32:.3f}); the comparison would be meaningless"
    assert abs(dice_bf16 - dice_fp32) <= 0.01, (dice_fp32, dice_bf16)
    agreement = mask_dice(fp32, bf16)
    assert agreement.mean().item() >= 0.99, agreement.tolist()
    assert not torch.equal(fp32, bf16)  # bf16 really ran


def test_autocast_inferer_switches_and_refuses_fp16_on_cpu():
    net = build_network(TINY, heads=2, decoder_channels=(16, 8))
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(AutocastInferer(enabled=False)(x, net), net(x))
        with pytest.raises(ValueError, match="bfloat16 on CPU"):
            AutocastInferer("float16")(x, net)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        AutocastInferer("float32")


def test_mask_dice_conventions():
    empty = torch.zeros(1, 2, 4, 4)
    empty[:, 0] = 1.0  # background wins everywhere
    full = torch.zeros(1, 2, 4, 4)
    full[:, 1] = 1.0
    assert mask_dice(empty, empty).item() == 1.0
    assert mask_dice(empty, full).item() == 0.0
    half = empty.clone()
    half[:, 1, :2] = 2.0  # 8 of 16 pixels foreground
    assert mask_dice(half, full).item() == pytest.approx(2 * 8 / (8 + 16))


def test_interleaved_timer_and_module_timer_count_real_calls():
    net = build_network(TINY, heads=2, decoder_channels=(16, 8))
    x = torch.rand(1, 3, 64, 64)
    calls = {"a": 0, "b": 0}

    def bump(k):
        calls[k] += 1

    t = interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, repeats=3, warmup=1)
    assert calls == {"a": 4, "b": 4} and t["a"]["repeats"] == 3 and t["a"]["median_ms"] >= 0 and len(t["b"]["times_ms"]) == 3
    timer = ModuleTimer({"intervention": net.intervention, "head": net.head})
    with torch.inference_mode(), timer.active():
        net(x)
        net.use_intervention = False
        net(x)
    assert timer.calls == {"intervention": 1, "head": 2}
    assert timer.total_ms["intervention"] > 0
    net.intervention(torch.rand(1, 8, 32), net.dictionary.confounders)  # hooks are removed afterwards
    assert timer.calls["intervention"] == 1


def test_paired_ratio_cancels_load_drift():
    # the machine gets 4x slower during the run; B is always half of A in its own round
    t = {"a": {"times_ms": [10.0, 40.0, 40.0]}, "b": {"times_ms": [5.0, 20.0, 20.0]}}
    assert paired_ratio(t, "a", "b") == 2.0
    assert paired_ratio(t, "b", "a") == 0.5


def test_quick_benchmark_writes_json_and_markdown(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [PYTHON, "-m", "mcdrl.evaluation.speed", "--quick", "--output", str(out), "--markdown", str(md)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in HEADLINE_KEYS:
        assert isinstance(result[key], float) and np.isfinite(result[key]) and result[key] > 0, key
        assert set(result["targets"][key]) >= {"target", "value", "met"}
    assert 0 < result["intervention_fraction"] < 1
    m = result["machine"]
    assert m["logical_cores"] >= 1 and m["torch"] == torch.__version__ and m["torch_threads"] >= 1
    assert len(result["load"]["before"]) == 3 and isinstance(result["load"]["shared"], bool)
    assert {(r["batch"], r["input_size"]) for r in result["forward"]} == {(1, 64), (1, 128), (2, 64), (2, 128)}
    assert all(len(r["rounds_ms"]["mcdrl"]) == r["repeats"] for r in result["forward"])
    assert result["rss"]["peak_rss_mb"] >= result["rss"]["rss_after_import_mb"] > 0
    assert result["profile"]["top"] and result["profile"]["top"][0]["self_ms_per_forward"] > 0
    assert result["bf16"]["mask_dice_min"] <= 1.0
    assert "images_per_s" in result["folder_inference"]
    text = md.read_text()
    assert "| model | batch | input |" in text and "forward_ratio_bs1" in text
    assert "forward_ratio_bs1" in proc.stdout  # the ratios are printed too

    # --update re-measures one section and keeps the rest
    proc = subprocess.run(
        [PYTHON, "-m", "mcdrl.evaluation.speed", "--quick", "--update", "rss", "--output", str(out), "--markdown", str(md)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    updated = json.loads(out.read_text())
    assert updated["forward"] == result["forward"] and updated["date"] == result["date"]
    assert [u["sections"] for u in updated["updates"]] == [["rss"]]
    assert updated["peak_rss_mb"] == updated["rss"]["peak_rss_mb"]
    assert "Re-measured later: rss" in md.read_text()


def test_peak_rss_probe_is_not_inflated_by_a_large_parent():
    from mcdrl.evaluation.speed.probe import measure_peak_rss

    ballast = torch.ones(2**28)  # 1 GiB touched in this (parent) process
    try:
        child = measure_peak_rss(TINY, 1, size=64, repeats=1)
    finally:
        del ballast
    assert child["rss_after_import_mb"] <= child["peak_rss_mb"] < child["rss_after_import_mb"] + 700
    assert child["peak_rss_inference_mb"] is None or child["peak_rss_inference_mb"] <= child["peak_rss_mb"]


def test_bench_refuses_cuda_without_a_gpu(capsys):
    from mcdrl.evaluation.speed.cli import parse_args

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda", "--quick"])
    assert "no CUDA device" in capsys.readouterr().err


def test_bench_defaults_write_into_the_bundle_docs():
    from mcdrl.evaluation.speed.cli import parse_args

    a = parse_args([])
    assert a.output == str(REPO / "bundle" / "docs" / "results" / "bench.json")
    assert a.models == ["mcdrl-demo-vit", "ViT-B-16"] and a.main_model == "ViT-B-16" and a.batches == [1, 8] and a.large_size == 512
    assert a.sizes == [None, 224, 512]  # CLIP size, the demo frames' native size, a larger native size
