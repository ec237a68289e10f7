"""The speed wing (what it computes: interleaving, ratios, part shares, the report) and the optimised network paths it
times (equivalence with the plain reference path).

No test here asserts a speed: timings on a shared 2-core machine are not test material; clocks are faked where the
value matters.
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

from mcdrl.evaluation.speed import report
from mcdrl.evaluation.speed.runner import part_shares, random_network
from mcdrl.evaluation.speed.timing import PartTimer, interleaved, paired_ratio, peak_rss_mb
from mcdrl.networks.clip_backbone import CLIPVisualBackbone
from mcdrl.networks.dictionary import ConfounderDictionary
from mcdrl.networks.head import SegmentationHead
from mcdrl.networks.intervention import CausalIntervention, InterventionBlock
from mcdrl.networks.mcdrlnet import MCDRLNet
from mcdrl.networks.region_selection import RegionSelector

SKIPS = json.loads((REPO / "bundle" / "configs" / "inference.json").read_text())["decoder_skip_channels"]


def build_network(model_name: str, heads: int = 2, decoder_channels=(16, 8), use_intervention: bool = True, **config):
    """The bundle's network_def with random weights, a small decoder, the intervention on, and config keys (None: as shipped)."""
    return random_network(model_name, intervention_heads=heads, decoder_channels=list(decoder_channels), use_intervention=use_intervention,
                          decoder_skip_channels=SKIPS[: len(decoder_channels)], **{k: v for k, v in config.items() if v is not None})


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


def reference_text_queries(clf, x: torch.Tensor, queries: torch.Tensor, image_embedding: torch.Tensor) -> torch.Tensor:
    """The text-query classifier as first written: every (image, query) pair's dynamic 1x1 convs by einsum, then the
    background logit from the last query and the lesion logit as the logsumexp of the others."""
    b, q = x.shape[0], queries.shape[0]
    cond = torch.cat([F.normalize(image_embedding, dim=-1)[:, None].expand(b, q, -1), F.normalize(queries, dim=-1)[None].expand(b, q, -1)], -1)
    params, offset = clf.controller(cond), 0
    h = clf.reduce(x)[:, None].expand(b, q, -1, -1, -1)
    for j, (cin, cout) in enumerate(clf.sizes):
        w = params[..., offset:offset + cin * cout].reshape(b, q, cout, cin)
        bias = params[..., offset + cin * cout:offset + cin * cout + cout]
        offset += cin * cout + cout
        h = torch.einsum("bqoi,bqihw->bqohw", w, h) + bias[..., None, None]
        h = F.relu(h) if j < len(clf.sizes) - 1 else h
    h = h[:, :, 0]
    return torch.stack([h[:, -1], torch.logsumexp(h[:, :-1], dim=1)], dim=1)


def reference_head(head: SegmentationHead, grid: torch.Tensor, image: torch.Tensor | None = None, queries: torch.Tensor | None = None,
                   image_embedding: torch.Tensor | None = None) -> torch.Tensor:
    """The decoder in plain NCHW layout throughout (the unoptimised path), with its skips from the image if it has them,
    and the text-query classifier (:func:`reference_text_queries`) where the head has one."""
    x = head.dropout(head.proj(grid))
    skips = head.pixel_encoder(image) if head.pixel_encoder is not None else []
    for stage, k in zip(head.stages, head.skip_levels):
        x = stage(x, skips[k] if k >= 0 and skips else None)
    if head.uses_text_queries:
        return reference_text_queries(head.classifier, x, queries, image_embedding)
    return head.classifier(x)


def reference_eval_forward(net: MCDRLNet, x: torch.Tensor) -> torch.Tensor:
    """MCDRL eval forward composed step by step from the parts, with the reference (SDPA) intervention layers and the
    reference (NCHW) decoder."""
    s = net.image_size
    xs = F.interpolate(x, size=[s, s], mode="bilinear", align_corners=False, antialias=True)
    tokens, pooled = net.backbone.forward_tokens(xs)
    d = net.dictionary
    text = (torch.cat([d.class_embeddings, d.background_embedding[None]]), pooled) if net.head.uses_text_queries else ()
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
    if net.head.pixel_encoder is not None:  # the skips read the input at its own resolution: logits at H x W
        return reference_head(net.head, grid, net.backbone.normalize(x), *text)
    return F.interpolate(reference_head(net.head, grid, None, *text), size=x.shape[-2:], mode="bilinear", align_corners=False)


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
    config = json.loads((REPO / "bundle" / "configs" / "inference.json").read_text())
    head = SegmentationHead(d, (16, 8), skip_channels=tuple(config["decoder_skip_channels"])[:2], skip_block=config["decoder_skip_block"],
                            classifier=config["decoder_classifier"], embed_dim=d)
    plain = MCDRLNet(backbone, ConfounderDictionary(None, d), RegionSelector(0.5), CausalIntervention(d, 3, heads=2), head)
    assert list(net.state_dict()) == list(plain.state_dict())


class FakeClock:
    """A clock that advances by ``step`` seconds at every reading (and by what ``advance`` adds)."""

    def __init__(self, step: float = 0.0):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def test_interleaved_rotates_the_order_and_times_each_call_with_the_given_clock():
    clock, order = FakeClock(), []
    cost = {"a": 0.010, "b": 0.030, "c": 0.020}

    def fn(name):
        def call():
            order.append(name)
            clock.advance(cost[name])

        return call

    t = interleaved({n: fn(n) for n in cost}, rounds=4, warmup=1, clock=clock)
    assert order == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]  # warm-up, then rotations
    assert t == {n: pytest.approx([1e3 * c] * 4) for n, c in cost.items()}
    assert paired_ratio(t, "b", "a") == pytest.approx(3.0)


def test_paired_ratio_cancels_load_drift():
    # the machine gets 4x slower during the run; B is always half of A in its own round
    t = {"a": [10.0, 40.0, 40.0], "b": [5.0, 20.0, 20.0]}
    assert paired_ratio(t, "a", "b") == 2.0 and paired_ratio(t, "b", "a") == 0.5
    assert paired_ratio({"a": [10.0, 40.0, 40.0], "b": [20.0, 20.0, 5.0]}, "a", "b") == 2.0  # not the ratio of medians (1.0)


def test_part_timer_counts_outermost_calls_once_and_restores_the_methods():
    clock = FakeClock()

    class Part:
        def inner(self):
            clock.advance(1.0)

        def outer(self):
            clock.advance(2.0)
            self.inner()  # same part: not counted twice

    class Other:
        def run(self, part):
            clock.advance(4.0)
            part.outer()

    part, other = Part(), Other()
    timer = PartTimer({"part": [(part, "outer"), (part, "inner")], "other": [(other, "run")]}, clock=clock)
    with timer.active():
        other.run(part)
        part.inner()
    assert timer.ms == {"part": pytest.approx(4000.0), "other": pytest.approx(7000.0)}
    assert "outer" not in vars(part) and "run" not in vars(other)  # the class methods are back
    timer.reset()
    part.outer()
    assert timer.ms["part"] == 0.0


def test_part_shares_of_a_real_forward_sum_to_one_and_follow_the_intervention():
    net = build_network(TINY)
    x = torch.rand(1, 3, 64, 64)
    net.use_intervention = False
    off = part_shares(net, x, rounds=2)
    net.use_intervention = True
    on = part_shares(net, x, rounds=2)
    for shares in (off, on):
        assert set(shares) == {"backbone", "mtrs", "intervention", "head", "presence", "other"}
        assert sum(shares.values()) == pytest.approx(1.0)
        assert all(shares[p] > 0 for p in ("backbone", "mtrs", "head", "presence"))
    assert off["intervention"] == 0.0 < on["intervention"]
    assert "forward" not in vars(net.head) and "gate" not in vars(net)


def _result(dice: dict | None = None) -> dict:
    fwd = [{"model": m, "batch": b, "input_size": 224, "clip_size": 160 if m == "demo" else 224, "visual_ms": 10.0, "shipped_ms": 11.0 * k, "intervention_ms": 13.0, "shipped_over_visual": 1.1 * k,
            "intervention_over_visual": 1.3, "parts_shipped": {"backbone": 0.9, "head": 0.1}, "parts_intervention": {"backbone": 0.8, "head": 0.2}}
           for m, k in (("demo", 3.0), ("ViT-B-16", 1.0)) for b in (1, 8)]
    fwd[-1]["shipped_over_visual"] = 1.25
    train = [{"model": "ViT-B-16", "batch": 8, "shipped_ms": 100.0, "intervention_ms": 110.0, "baseline_ms": 95.0,
              "shipped_over_baseline": 1.05, "intervention_over_baseline": 1.16}]
    folder = [{"model": m, "images": 16, "size": 224, "batch": 8, "images_per_s": {"bare": 10.0, "torch": 8.0, "onnxruntime": 14.0, "onnxruntime-int8": 20.0},
               "folder_over_bare": 0.8, "onnxruntime_over_torch": r, "onnxruntime-int8_over_torch": 2.5} for m, r in (("demo", 1.8), ("ViT-B-16", 1.4))]
    return {"command": "python -m mcdrl.evaluation.speed", "date": "today", "main_model": "ViT-B-16", "forward": fwd, "train_step": train,
            "folder": folder, "rss": {"ViT-B-16": 1300.0}, "dice": dice or {},
            "machine": {"cpu": "x", "usable_cores": 2, "torch": "2", "torch_threads": 2, "load_average": [0, 0, 0], "load_average_after": [1, 1, 1]}}


def test_report_takes_the_main_model_and_checks_each_target():
    dice = {"torch": {"train_sites": 0.700, "heldout_F": 0.400}, "onnxruntime-int8": {"train_sites": 0.698, "heldout_F": 0.393}}
    r = report.finish(_result(dice))
    h = r["headline"]
    assert (h["forward_ratio_bs1"], h["forward_ratio_bs8"]) == (pytest.approx(1.1), 1.25)  # ViT-B-16's rows, not the demo's
    assert h["train_step_ratio"] == 1.05 and h["peak_rss_mb"] == 1300.0
    assert h["onnxruntime_speedup"] == 1.4 and h["int8_speedup"] == 2.5  # the lowest over the models
    assert h["int8_dice_cost_points"] == pytest.approx(0.7)  # the worse set: F, 0.400 -> 0.393
    met = {k: c["met"] for k, c in r["targets"].items()}
    assert met == {"forward_ratio_bs1": "met", "forward_ratio_bs8": "NOT met", "train_step_ratio": "met", "peak_rss_mb": "met",
                   "onnxruntime_speedup": "NOT met", "int8_speedup": "met", "int8_dice_cost_points": "NOT met"}
    md = report.to_markdown(r)
    assert "make bench" in md and "`python -m mcdrl.evaluation.speed`" in md and "| ViT-B-16 | 8 | 224 / 224 | 10.0 | 11.0 | 1.250 |" in md and "| demo | 1 | 224 / 160 |" in md
    assert "| onnxruntime-int8 | 0.6980 | 0.3930 |" in md and "pending" not in md
    assert report.finish(_result({"torch": {"train_sites": 0.7}}))["headline"]["int8_dice_cost_points"] is None  # needs both sets


def test_pending_report_invents_no_figures(tmp_path):
    r = report.pending("the head changes", "make bench")
    assert all(c["value"] is None and c["met"] == "n/a" for c in r["targets"].values())
    report.write(r, tmp_path / "bench.json", tmp_path / "bench.md")
    md = (tmp_path / "bench.md").read_text()
    assert md.count("Figures pending re-measurement") == 1 and "the head changes" in md and "not measured in this run" in md
    assert json.loads((tmp_path / "bench.json").read_text())["pending"] == "the head changes"
    assert not list(tmp_path.glob(".*tmp"))  # written through temporary files, none left


def test_engine_dice_reads_the_evaluations(tmp_path):
    for engine, value in (("torch", 0.7), ("onnxruntime-int8", 0.69)):
        for name in ("train_sites", "heldout_F"):
            (tmp_path / f"engine_{engine}" / name).mkdir(parents=True)
            (tmp_path / f"engine_{engine}" / name / "metrics.csv").write_text(f"val_mean_dice\t{value}\nval_mean_iou\t0.5\n")
    assert report.engine_dice(tmp_path) == {"onnxruntime-int8": {"train_sites": 0.69, "heldout_F": 0.69}, "torch": {"train_sites": 0.7, "heldout_F": 0.7}}
    assert report.engine_dice(tmp_path / "none") == {}


def test_dice_only_reads_new_engine_dice_into_the_report_and_keeps_its_timings(tmp_path):
    """After a retrain of the same network, `speed --dice-only` replaces the engines' Dice and the int8 Dice cost in
    bench.json/bench.md, keeps every timing, and says on the page when the Dice were read; it refuses a pending
    report (nothing to keep) and a missing engine-dice folder, naming the file."""
    old = report.finish(_result({"torch": {"train_sites": 0.700, "heldout_F": 0.400}, "onnxruntime-int8": {"train_sites": 0.698, "heldout_F": 0.393}}))
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    report.write(old, out, md)
    for engine, values in (("torch", (0.71, 0.45)), ("onnxruntime-int8", (0.709, 0.449))):
        for name, value in zip(("train_sites", "heldout_F"), values):
            (tmp_path / f"engine_{engine}" / name).mkdir(parents=True)
            (tmp_path / f"engine_{engine}" / name / "metrics.csv").write_text(f"val_mean_dice\t{value}\nval_mean_iou\t0.5\n")
    cmd = [PYTHON, "-m", "mcdrl.evaluation.speed", "--dice-only", "--output", str(out), "--markdown", str(md)]
    proc = subprocess.run([*cmd, "--dice-dir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = json.loads(out.read_text())
    assert new["dice"]["torch"] == {"train_sites": 0.71, "heldout_F": 0.45}
    assert new["headline"]["int8_dice_cost_points"] == pytest.approx(0.1) and new["targets"]["int8_dice_cost_points"]["met"] == "met"
    for key in ("forward", "train_step", "folder", "rss", "date", "command", "machine"):
        assert new[key] == old[key], key
    assert {k: v for k, v in new["headline"].items() if k != "int8_dice_cost_points"} == \
        {k: v for k, v in old["headline"].items() if k != "int8_dice_cost_points"}
    page = md.read_text()
    assert "| torch | 0.7100 | 0.4500 |" in page and f"read on {new['dice_read']['date']}" in page
    assert "the timings are still those of today" in page and "--dice-only" in new["dice_read"]["command"]
    bad = subprocess.run([*cmd, "--dice-dir", str(tmp_path / "none")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "make engine-dice" in bad.stderr and str(out) in bad.stderr
    assert "records no network fingerprint" in proc.stderr  # a report from before fingerprints: read, with a warning
    report.write(report.pending("the head changes", "make bench"), out, None)
    bad = subprocess.run([*cmd, "--dice-dir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "pending" in bad.stderr


def test_dice_only_refuses_timings_of_another_network(tmp_path):
    """The full run records each model's network fingerprint; `--dice-only` keeps the timings only while the configs
    still build that network, and names the model whose network changed."""
    from mcdrl.evaluation.speed.runner import network_fingerprint

    fingerprint = network_fingerprint(random_network(TINY))
    other_weights = random_network(TINY, seed=1)
    assert next(other_weights.head.parameters()).ne(next(random_network(TINY).head.parameters())).any()
    assert network_fingerprint(other_weights) == fingerprint  # the weights do not enter it
    assert network_fingerprint(random_network(TINY, alpha=0.25)) != fingerprint  # a setting with no parameter of its own does
    assert network_fingerprint(random_network(TINY, use_intervention=True)) != fingerprint
    for engine in ("torch", "onnxruntime-int8"):
        for name in ("train_sites", "heldout_F"):
            (tmp_path / f"engine_{engine}" / name).mkdir(parents=True)
            (tmp_path / f"engine_{engine}" / name / "metrics.csv").write_text("val_mean_dice\t0.7\nval_mean_iou\t0.5\n")
    out = tmp_path / "bench.json"
    cmd = [PYTHON, "-m", "mcdrl.evaluation.speed", "--dice-only", "--output", str(out), "--markdown", "", "--dice-dir", str(tmp_path)]
    for stored, ok in ((fingerprint, True), ("0123456789abcdef", False)):
        report.write(report.finish({**_result(), "network": {TINY: stored}}), out, None)
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
        if ok:
            assert json.loads(out.read_text())["network"] == {TINY: fingerprint} and "fingerprint" not in proc.stderr
        else:
            assert f"the network of {TINY} changed" in proc.stderr and str(out) in proc.stderr and "make bench" in proc.stderr


def test_peak_rss_probe_is_not_inflated_by_a_large_parent():
    """The probe measures a fresh process: 1 GiB held by the parent changes its figure by far less than 1 GiB."""
    alone = peak_rss_mb(TINY)
    ballast = torch.ones(2**28)  # 1 GiB touched in this (parent) process
    try:
        child = peak_rss_mb(TINY)
    finally:
        del ballast
    assert alone > 100 and abs(child - alone) < 256, (alone, child)


def test_quick_run_writes_every_section(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run([PYTHON, "-m", "mcdrl.evaluation.speed", "--quick", "--output", str(out), "--markdown", str(md), "--dice-dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [(f["model"], f["batch"]) for f in r["forward"]] == [(TINY, 1), (TINY, 2)]
    assert all(len(f["rounds_ms"][k]) == 2 for f in r["forward"] for k in ("visual", "shipped", "intervention"))
    assert r["train_step"][0]["batch"] == 2 and set(r["train_step"][0]["rounds_ms"]) == {"shipped", "intervention", "baseline"}
    assert set(r["folder"][0]["images_per_s"]) == {"bare", "torch", "onnxruntime", "onnxruntime-int8"}
    assert r["rss"][TINY] > 0 and r["headline"]["int8_dice_cost_points"] is None and r["dice"] == {}
    assert set(r["network"]) == {TINY} and len(r["network"][TINY]) == 16  # what --dice-only checks later
    for key in report.TARGETS:
        assert key in proc.stdout and key in r["targets"]
    assert "| mcdrl-tiny-vit | 4 x 64² (batch 2) |" in md.read_text()
    assert {(f["input_size"], f["clip_size"]) for f in r["forward"]} == {(64, 64)} and r["train_step"][0]["input_size"] == 64
