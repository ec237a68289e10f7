"""The MCDRL parts and the composed network: shapes, TorchScript, weights, MTRS, intervention, losses, stage 1."""

from __future__ import annotations

import copy
import io
import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, save_tiny_clip

from mcdrl.networks.clip_backbone import CLIPVisualBackbone, create_clip
from mcdrl.networks.dictionary import ConfounderDictionary, build_dictionary, load_artifact
from mcdrl.networks.head import SegmentationHead, UNetHead
from mcdrl.networks.intervention import CausalIntervention, InterventionBlock
from mcdrl.networks.losses import MCDRLLoss
from mcdrl.errors import ConfigError
from mcdrl.networks.mcdrlnet import MCDRLNet
from mcdrl.networks.region_selection import RegionSelector


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised residual branches random weights, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def build_net(world, model_name=TINY, weights="world", alpha=0.5, use_intervention=True, depth=3) -> MCDRLNet:
    weights = world["weights"] if weights == "world" else weights
    backbone = CLIPVisualBackbone(model_name, weights)
    d = backbone.embed_dim
    dictionary = ConfounderDictionary(world["dictionary"] if model_name == TINY else None, d)
    intervention = randomise(CausalIntervention(d, depth, heads=2))
    return MCDRLNet(backbone, dictionary, RegionSelector(alpha), intervention, SegmentationHead(d, (16, 8)), use_intervention=use_intervention)


def test_fresh_intervention_block_is_the_identity():
    x, z = torch.randn(2, 5, 32), torch.randn(12, 32)
    assert torch.equal(CausalIntervention(32, 3, heads=4)(x, z), x)


@pytest.mark.parametrize("size", [(64, 64), (96, 80), (37, 123), (224, 224)])
def test_eval_output_shape_follows_input(tiny_world, size):
    net = build_net(tiny_world).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, *size))
    assert out.shape == (2, 2, *size)
    assert torch.isfinite(out).all()


def test_resnet_backbone_works(tmp_path):
    backbone = CLIPVisualBackbone("mcdrl-tiny-rn", None)
    dense, pooled = backbone(torch.rand(2, 3, 64, 64))
    assert dense.shape == (2, backbone.embed_dim, 2, 2) and pooled.shape == (2, backbone.embed_dim)


def test_traced_network_equals_eager_on_several_sizes(tiny_world):
    net = build_net(tiny_world).eval()
    traced = torch.jit.trace(net, torch.rand(1, 3, 64, 64), check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    for size in [(64, 64), (100, 72), (256, 256)]:
        x = torch.rand(2, 3, *size)
        with torch.no_grad():
            assert (loaded(x) - net(x)).abs().max().item() <= 1e-4


def test_state_dict_round_trip_strict_weights_only(tiny_world, tmp_path):
    net = build_net(tiny_world).eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    fresh = build_net(tiny_world, weights=None).eval()
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    missing, unexpected = fresh.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


def test_dropout_argument_reaches_head(tiny_world):
    net = build_net(tiny_world)
    net2 = MCDRLNet(net.backbone, net.dictionary, net.selector, net.intervention, net.head, dropout=0.3)
    assert net2.head.dropout.p == pytest.approx(0.3)


def test_training_forward_exposes_auxiliary_terms(tiny_world):
    net = build_net(tiny_world).train()
    out = net(torch.rand(2, 3, 64, 64))
    d = net.backbone.embed_dim
    assert out["pred"].shape == (2, 2, 64, 64)
    assert out["image_embedding"].shape == (2, d) and out["region_embedding"].shape == (2, d)


def test_text_tower_is_not_part_of_the_network(tiny_world):
    keys = build_net(tiny_world).state_dict().keys()
    assert not any(k.startswith(("backbone.transformer", "backbone.token_embedding", "backbone.text")) for k in keys)
    assert all(not k.startswith("backbone.") or k.startswith("backbone.visual.") for k in keys)


# ---- MTRS ------------------------------------------------------------------------------------------------------
def test_mtrs_picks_most_prompt_similar_positions():
    d, L = 8, 16
    e = F.normalize(torch.randn(3, d), dim=-1)
    bg = torch.zeros(d)
    tokens = torch.randn(1, L, d) * 0.01
    lesion_positions = [2, 5, 11, 14]
    for i, p in enumerate(lesion_positions):
        tokens[0, p] = e[i % 3] * 5  # exactly aligned with a class prompt
    sel = RegionSelector(alpha=0.25, scoring="max")
    idx, scores = sel(tokens, e, bg)
    assert idx.shape == (1, 4)
    assert sorted(idx[0].tolist()) == lesion_positions
    assert scores.shape == (1, L)


def test_mtrs_background_scoring_suppresses_background_like_positions():
    d = 8
    e = F.normalize(torch.eye(d)[:2], dim=-1)
    bg = torch.eye(d)[2]
    tokens = torch.zeros(1, 4, d)
    tokens[0, 0] = torch.eye(d)[0] + torch.eye(d)[2] * 2.0  # lesion-ish but mostly "normal mucosa"
    tokens[0, 1] = torch.eye(d)[0] * 0.6 + torch.eye(d)[3] * 0.4  # weaker lesion match, not background
    tokens[0, 2] = torch.eye(d)[4]
    tokens[0, 3] = torch.eye(d)[5]
    plain = RegionSelector(0.25, "max")(tokens, e, bg)[0]
    contrast = RegionSelector(0.25, "max_minus_background")(tokens, e, bg)[0]
    assert plain.tolist() == [[1]] or plain.tolist() == [[0]]
    assert contrast.tolist() == [[1]]


def test_mtrs_alpha_one_keeps_all_positions():
    tokens = torch.randn(2, 9, 8)
    idx, _ = RegionSelector(alpha=1.0)(tokens, torch.randn(3, 8), torch.randn(8))
    assert [sorted(r) for r in idx.tolist()] == [list(range(9))] * 2


def test_mtrs_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        RegionSelector(alpha=0.0)


# ---- intervention ----------------------------------------------------------------------------------------------
def test_attention_rows_sum_to_one_over_the_12_confounders():
    block = InterventionBlock(dim=32, heads=4)
    w = block.attention_weights(torch.randn(2, 5, 32), torch.randn(12, 32))
    assert w.shape == (2, 4, 5, 12)
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 5), atol=1e-6)


def test_fused_attention_equals_explicit_softmax():
    torch.manual_seed(0)
    block = randomise(InterventionBlock(dim=32, heads=4)).eval()
    x, z = torch.randn(2, 5, 32), torch.randn(12, 32)
    w = block.attention_weights(x, z)
    v = block.v_proj(block.norm_kv(z)).view(1, 12, 4, 8).transpose(1, 2)
    a = (w @ v).transpose(1, 2).reshape(2, 5, 32)
    ref = x + block.out_proj(a)
    ref = ref + block.ffn(block.norm_ffn(ref))
    assert torch.allclose(block(x, z), ref, atol=1e-5)


def test_prior_weighting_adds_the_same_prior_expectation_to_every_region():
    torch.manual_seed(0)
    block = randomise(InterventionBlock(dim=32, heads=4, weighting="prior")).eval()
    x, z = torch.randn(2, 5, 32), torch.randn(12, 32)
    w = block.attention_weights(x, z)
    assert w.shape == (2, 4, 5, 12) and torch.allclose(w, torch.full_like(w, 1 / 12))
    # E_z over P(z) = 1/12 of the value vectors: one vector, whatever the region
    ref = x + block.out_proj(block.v_proj(block.norm_kv(z)).mean(0))
    ref = ref + block.ffn(block.norm_ffn(ref))
    assert torch.allclose(block(x, z), ref, atol=1e-5)
    attn = InterventionBlock(dim=32, heads=4)
    attn.load_state_dict(block.state_dict())  # same weights, the paper's weighting: the regions' own attention
    assert not torch.allclose(attn(x, z), block(x, z), atol=1e-3)
    with pytest.raises(ValueError, match="weighting"):
        InterventionBlock(dim=32, heads=4, weighting="posterior")


def test_use_intervention_false_bypasses_the_layer_exactly(tiny_world):
    torch.manual_seed(0)
    on = build_net(tiny_world).eval()
    off = build_net(tiny_world, use_intervention=False).eval()
    off.load_state_dict(on.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        tokens = on.backbone.forward_dense(on._resize_in(x))
        bypass_tokens, _, _ = off._regions(tokens)
        assert torch.equal(bypass_tokens, tokens)
        baseline = off._decode(tokens, x)
        assert torch.equal(off(x), baseline)
        assert not torch.equal(on(x), baseline)


def test_predict_with_confounders_reports_the_readout(tiny_world):
    net = build_net(tiny_world).eval()
    x = torch.rand(3, 3, 64, 64)
    logits, w = net.predict_with_confounders(x)
    assert logits.shape == (3, 2, 64, 64) and w.shape == (3, 12)
    with torch.no_grad():
        assert torch.allclose(w, net.readout(net.backbone.forward_tokens(net._resize_in(x))[1], net.dictionary.confounders), atol=1e-5)
    assert len(net.confounder_names) == 12 and net.confounder_names[0] == "motion blur"


# ---- losses ----------------------------------------------------------------------------------------------------
def test_causal_loss_is_zero_at_the_class_anchor(tiny_world):
    dictionary = ConfounderDictionary(tiny_world["dictionary"], 32)
    loss = MCDRLLoss(dictionary)
    classes = torch.tensor([0, 3])
    pooled = dictionary.class_anchors[classes] * 7.0  # scale does not matter: both sides are normalised
    assert loss.causal(pooled, classes).item() == pytest.approx(0.0, abs=1e-10)
    assert loss.causal(torch.randn(2, 32), classes).item() > 0.01


def test_loss_terms_and_class_masking(tiny_world):
    dictionary = ConfounderDictionary(tiny_world["dictionary"], 32)
    loss = MCDRLLoss(dictionary, lambda_causal=0.5, lambda_contrast=0.1, tau=0.5)
    out = {"pred": torch.randn(2, 2, 8, 8), "image_embedding": torch.randn(2, 32), "region_embedding": torch.randn(2, 32), "intervention_on": True}
    label = torch.randint(0, 2, (2, 1, 8, 8)).float()
    total = loss(out, {"label": label, "lesion_class": torch.tensor([1, -1])})
    t = loss.last_terms
    assert set(t) == {"seg", "contrast", "causal", "total"}
    assert total.item() == pytest.approx(t["seg"] + 0.5 * t["causal"] + 0.1 * t["contrast"], rel=1e-5)
    # the intervention off -> no causal term; all classes unknown -> the class terms are exactly zero
    out["intervention_on"] = False
    loss(out, {"label": label, "lesion_class": torch.tensor([-1, -1])})
    assert "causal" not in loss.last_terms and loss.last_terms["contrast"] == 0.0


# ---- stage 1 ---------------------------------------------------------------------------------------------------
def test_changing_a_prompt_changes_the_artifact(tiny_world, tmp_path):
    base = ["motion blur", "blood"]
    a = build_dictionary(TINY, tiny_world["weights"], tmp_path / "a.safetensors", confounders=base)
    b = build_dictionary(TINY, tiny_world["weights"], tmp_path / "b.safetensors", confounders=["motion blur", "bile"])
    ta, ma = load_artifact(a)
    tb, mb = load_artifact(b)
    assert torch.equal(ta["confounders"][0], tb["confounders"][0])
    assert not torch.equal(ta["confounders"][1], tb["confounders"][1])
    assert mb["confounders"] == ["motion blur", "bile"] and mb["confounder_prompts"][1] == "An endoscopy image with bile"
    assert ma["clip_model"] == TINY and len(ma["clip_weights_sha256"]) == 64


def test_artifact_count_mismatch_names_both_numbers(tiny_world):
    with pytest.raises(ValueError, match=r"12 confounders.*num_confounders=15"):
        ConfounderDictionary(tiny_world["dictionary"], 32, num_confounders=15)


def test_artifact_dimension_mismatch_names_both_numbers(tiny_world):
    with pytest.raises(ValueError, match=r"dimension 32.*has 64"):
        ConfounderDictionary(tiny_world["dictionary"], 64)


def test_artifact_from_other_clip_weights_is_refused(tiny_world, tmp_path):
    other = save_tiny_clip(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(ValueError, match="sha256"):
        build_net(tiny_world, weights=other)


def test_missing_or_corrupt_artifact_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_dictionary"):
        ConfounderDictionary(tmp_path / "nope.safetensors", 32)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable"):
        ConfounderDictionary(bad, 32)


# ---- CLIP factory ----------------------------------------------------------------------------------------------
def test_local_weights_file_is_loaded(tiny_world):
    from safetensors.torch import load_file

    model = create_clip(TINY, tiny_world["weights"])
    saved = load_file(str(tiny_world["weights"]))
    assert torch.equal(model.visual.conv1.weight, saved["visual.conv1.weight"])


def test_local_weights_folder_is_loaded(tiny_world, tmp_path):
    folder = tmp_path / "clipdir"
    folder.mkdir()
    (folder / "open_clip_model.safetensors").write_bytes(tiny_world["weights"].read_bytes())
    assert torch.equal(create_clip(TINY, folder).visual.proj, create_clip(TINY, tiny_world["weights"]).visual.proj)


@pytest.mark.parametrize(
    "name,weights,error,match",
    [
        (TINY, "/no/such/clip.bin", FileNotFoundError, "not found.*local file"),
        (TINY, "openai", ValueError, "not a local path"),
        ("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", None, ValueError, "hub.*clip_weights"),
        ("ViT-Q-99", None, ValueError, "Unknown CLIP model name"),
    ],
)
def test_clip_factory_refuses_hub_and_missing_weights(name, weights, error, match):
    with pytest.raises(error, match=match):
        create_clip(name, weights)


def test_weights_for_a_different_config_name_the_file(tiny_world):
    from mcdrl.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"{tiny_world['weights'].name}.*wrong model name"):
        create_clip("mcdrl-tiny-rn", tiny_world["weights"])


# ---- [ours] presence decision, skips from the image, text-guided de-confounding -------------------------------
def build_full_net(world, presence=True, deconfounding="none", skips=(4, 8)) -> MCDRLNet:
    torch.manual_seed(0)
    backbone = CLIPVisualBackbone(TINY, world["weights"])
    d = backbone.embed_dim
    return MCDRLNet(backbone, ConfounderDictionary(world["dictionary"], d), RegionSelector(0.5), randomise(CausalIntervention(d, 2, heads=2)),
                    SegmentationHead(d, (16, 8), skip_channels=skips), deconfounding=deconfounding, presence_decision=presence)


def test_presence_decision_empties_the_mask_below_the_threshold(tiny_world):
    net = build_full_net(tiny_world).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        raw, score = net.forward_with_score(x)
        assert score.shape == (3,) and bool(((score >= 0) & (score <= 1)).all())
        assert torch.equal(net(x), raw)  # threshold 0: nothing is emptied
        net.presence_threshold.fill_(float(score.sort().values[1]) + 1e-6)  # the two lowest-scoring images are rejected
        gated = net(x)
    rejected = score < net.presence_threshold
    assert int(rejected.sum()) == 2
    assert not bool((gated[rejected].argmax(1) == 1).any())  # no lesion pixel on a rejected image
    assert torch.equal(gated[~rejected], raw[~rejected])  # the kept image is untouched
    logits, weights, s = net.predict_with_confounders(x, with_score=True)
    assert torch.allclose(logits, gated, atol=1e-5) and torch.allclose(s, score, atol=1e-6) and weights.shape == (3, 12)
    assert "presence_threshold" in net.state_dict()
    net.presence_decision = False
    with torch.no_grad():
        assert torch.allclose(net(x), raw, atol=1e-5)


def test_skip_head_uses_the_image_and_traces(tiny_world):
    net = build_full_net(tiny_world).eval()
    assert net.head.pixel_encoder is not None and net.head.skip_levels == [1, 0]
    x = torch.rand(1, 3, 64, 64)
    traced = torch.jit.trace(net, x, check_trace=False)
    for size in [(64, 64), (90, 70)]:
        y = torch.rand(2, 3, *size)
        with torch.no_grad():
            out = net(y)
            assert out.shape == (2, 2, *size) and (traced(y) - out).abs().max().item() <= 1e-4
    with torch.no_grad():  # the skips carry the image: the same CLIP grid with another image gives other logits
        base = net.head(torch.zeros(1, 32, 4, 4), torch.zeros(1, 3, 16, 16))
        other = net.head(torch.zeros(1, 32, 4, 4), torch.ones(1, 3, 16, 16))
    assert not torch.allclose(base, other)
    with pytest.raises(ValueError, match="skip"):
        SegmentationHead(32, (16, 8), skip_channels=(4, 8, 8))


def test_skip_head_decodes_at_the_input_resolution(tiny_world):
    """Issue 23: the pixel pathway reads the input at its own H x W and the logits come out there, with no upsampling
    from the CLIP size; a one-pixel detail of the input reaches the logits at that pixel's neighbourhood. With
    ``head_resolution`` the head runs at that size and its logits are resized to H x W."""
    net = build_full_net(tiny_world, presence=False).eval()
    x = torch.rand(2, 3, 97, 131)
    with torch.no_grad():
        tokens, _, _ = net._regions(net.backbone.forward_dense(net._resize_in(x)))
        grid = tokens.transpose(1, 2).reshape(2, -1, net.grid_size, net.grid_size)
        levels = net.head.pixel_encoder(net.backbone.normalize(x))
        assert [tuple(t.shape[-2:]) for t in levels] == [(97, 131), (49, 66)]
        assert torch.equal(net(x), net.head(grid, net.backbone.normalize(x)))  # no resize after the head
        y = x.clone()
        y[:, :, 40, 70] = 1 - y[:, :, 40, 70]  # one pixel changed: the pixel pathway carries it to the logits there
        diff = (net.head(grid, net.backbone.normalize(y)) - net.head(grid, net.backbone.normalize(x))).abs().sum((0, 1))
        peak = divmod(int(diff.argmax()), diff.shape[1])
        assert abs(peak[0] - 40) <= 1 and abs(peak[1] - 70) <= 1 and diff[:, :20].max() < 0.01 * diff.max()  # GroupNorm: tiny far away
    net.head_resolution = 64
    with torch.no_grad():
        out = net(x)
        small = F.interpolate(x, size=[64, 64], mode="bilinear", align_corners=False, antialias=True)
        want = F.interpolate(net.head(grid, net.backbone.normalize(small)), size=[97, 131], mode="bilinear", align_corners=False)
    assert out.shape == (2, 2, 97, 131) and torch.allclose(out, want, atol=1e-6)
    with pytest.raises(ConfigError, match="head_resolution"):
        MCDRLNet(net.backbone, net.dictionary, net.selector, net.intervention, net.head, head_resolution=8)


def test_confounder_projection_keeps_the_classes_and_removes_the_confounders(tiny_world):
    from mcdrl.networks.deconfounding import ConfounderProjection

    d = ConfounderDictionary(tiny_world["dictionary"], 32)
    proj = ConfounderProjection(d)
    q = proj.basis
    assert q.shape == (32, 12) and 1 <= proj.rank <= 12
    keep = torch.cat([d.class_embeddings, d.background_embedding[None]])
    assert torch.allclose(proj(keep), keep, atol=1e-5)  # P e_k = e_k, P e_bg = e_bg
    z = proj(d.confounders)
    basis_keep, _ = torch.linalg.qr(keep.t())
    assert torch.allclose(z, (z @ basis_keep) @ basis_keep.t(), atol=1e-5)  # what is left of z_m lies in span(e_k, e_bg)
    x = torch.randn(5, 32)
    assert torch.allclose(proj(proj(x)), proj(x), atol=1e-5)  # a projection
    assert torch.allclose(ConfounderProjection(ConfounderDictionary(None, 32))(x), x)  # an empty dictionary: identity


@pytest.mark.parametrize("scope", ["all", "regions"])
def test_deconfounding_scope(tiny_world, scope):
    ref = build_full_net(tiny_world, deconfounding="none").eval()
    net = build_full_net(tiny_world, deconfounding=scope).eval()
    net.load_state_dict(ref.state_dict())
    ref.use_intervention = net.use_intervention = False
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        tokens = ref.backbone.forward_dense(ref._resize_in(x))
        out, f, idx = net._regions(tokens)
        changed = (out - tokens).abs().sum(-1)[0] > 1e-6
    selected = torch.zeros_like(changed).scatter_(0, idx[0], True)
    if scope == "regions":
        assert bool(changed[selected].all()) and not bool(changed[~selected].any())
    else:
        assert bool(changed.all())
    with pytest.raises(ValueError, match="deconfounding"):
        build_full_net(tiny_world, deconfounding="everywhere")


def test_contrast_targets_give_empty_masks_the_normal_mucosa_class(tiny_world):
    dictionary = ConfounderDictionary(tiny_world["dictionary"], 32)
    loss = MCDRLLoss(dictionary, no_lesion_class=True)
    label = torch.zeros(4, 1, 8, 8)
    label[0, 0, 2, 2] = label[2, 0, 3, 3] = 1
    targets = loss.contrast_targets(torch.tensor([1, 3, -1, -1]), label)
    assert targets.tolist() == [1, 5, -1, 5]  # a lesion's class; K for an empty mask whatever the class says; unknown + lesion: no term
    assert MCDRLLoss(dictionary).contrast_targets(torch.tensor([1, 3, -1, -1]), label).tolist() == [1, 3, -1, -1]


def test_counterfactual_term_is_zero_for_identical_pairs_and_grows_with_the_difference(tiny_world):
    from mcdrl.networks.losses import js_divergence

    loss = MCDRLLoss(ConfounderDictionary(tiny_world["dictionary"], 32), lambda_causal=0, lambda_contrast=0, lambda_counterfactual=1.0)
    torch.manual_seed(0)
    f, p = torch.randn(2, 16, 32), torch.randn(2, 2, 8, 8)
    same = {"pred": torch.cat([p, p]), "features": torch.cat([f, f]), "image_embedding": torch.randn(4, 32), "region_embedding": torch.randn(4, 32), "intervention_on": True}
    label = torch.zeros(4, 1, 8, 8)
    loss(same, {"label": label, "lesion_class": torch.full((4,), -1), "paired": True})
    assert loss.last_terms["counterfactual"] == pytest.approx(0.0, abs=1e-6)
    other = {**same, "features": torch.cat([f, f + 0.5 * torch.randn_like(f)]), "pred": torch.cat([p, -p])}
    total = loss(other, {"label": label, "lesion_class": torch.full((4,), -1), "paired": True})
    t = loss.last_terms
    assert t["counterfactual"] > 0.05 and total.item() == pytest.approx(t["seg"] + t["counterfactual"], rel=1e-5)
    loss(other, {"label": label, "lesion_class": torch.full((4,), -1), "paired": False})
    assert "counterfactual" not in loss.last_terms
    js = js_divergence(torch.tensor([[[[20.0]], [[-20.0]]]]), torch.tensor([[[[-20.0]], [[20.0]]]]))
    assert float(js) == pytest.approx(np.log(2), abs=1e-4)


# ----------------------------------------------------------------------------- the intervention, trained so it can help
def _one_adamw_step_shift(residual: str, lr: float = 1e-3) -> float:
    """||F_ca - F|| / ||F|| after one AdamW step on a loss that pulls every region token towards one direction."""
    torch.manual_seed(0)
    block = CausalIntervention(32, 1, heads=4, residual=residual)
    f, z, target = torch.randn(4, 6, 32) * 3, torch.randn(12, 32), torch.randn(32)
    with torch.no_grad():
        assert torch.equal(block(f, z), f)  # both start as the identity
    opt = torch.optim.AdamW(block.parameters(), lr=lr)
    (-(block(f, z) @ target).mean()).backward()
    opt.step()
    with torch.no_grad():
        return float((block(f, z) - f).norm() / f.norm())


def test_gated_residual_survives_the_first_adamw_step():
    """Issue 22: AdamW moves every weight of a zero-initialised branch by about lr in its first step, so the tokens
    jump; a tanh gate at 0 moves by tanh(lr) and the branch with it."""
    zero, gated = _one_adamw_step_shift("zero"), _one_adamw_step_shift("gated")
    assert zero > 1e-3 and gated < 0.02 * zero, (zero, gated)  # measured 7.4e-3 against 7.4e-5
    block = CausalIntervention(32, 2, heads=4, residual="gated")
    assert {n for n, _ in block.named_parameters() if "gate" in n} == {f"layers.{i}.gate_{b}" for i in (0, 1) for b in ("attn", "ffn")}
    with pytest.raises(ValueError, match="residual"):
        CausalIntervention(32, 1, heads=4, residual="scaled")


def test_anchor_cross_entropy_cannot_be_met_by_one_shared_vector(tiny_world):
    """L_causal as a cross-entropy over the K anchors equals its hand computation, and an embedding shared by two
    images of different classes scores at least log 2 (p_y1 + p_y2 <= 1), while the paper's squared distance is
    lowered by moving every image towards the anchors' common direction."""
    d = ConfounderDictionary(tiny_world["dictionary"], 32)
    ce = MCDRLLoss(d, causal_loss="anchor_ce", tau=0.5)
    anchors = F.normalize(d.class_anchors, dim=-1)
    e = torch.randn(3, 32)
    y = torch.tensor([0, 2, 4])
    want = F.cross_entropy(F.normalize(e, dim=-1) @ anchors.t() / 0.5, y)
    assert torch.allclose(ce.causal(e, y), want, atol=1e-6)
    shared = torch.randn(1, 32).expand(2, 32)
    assert float(ce.causal(shared, torch.tensor([0, 1]))) >= math.log(2) - 1e-6
    mse = MCDRLLoss(d, causal_loss="mse")
    common = anchors.mean(0, keepdim=True)
    assert float(mse.causal(common.expand(2, 32), torch.tensor([0, 1]))) < float(mse.causal(shared, torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="causal_loss"):
        MCDRLLoss(d, causal_loss="l1")


def test_head_reading_both_sees_the_clip_features_beside_the_intervened(tiny_world):
    torch.manual_seed(0)
    backbone = CLIPVisualBackbone(TINY, tiny_world["weights"])
    d = backbone.embed_dim
    parts = lambda head: (backbone, ConfounderDictionary(tiny_world["dictionary"], d), RegionSelector(0.5),  # noqa: E731
                          CausalIntervention(d, 1, heads=2, residual="gated"), head)
    net = MCDRLNet(*parts(SegmentationHead(2 * d, (16, 8), skip_channels=(4, 8))), head_input="both").eval()
    x = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        tokens = net.backbone.forward_dense(net._resize_in(x))
        both, _, _ = net._regions(tokens)
        assert both.shape[-1] == 2 * d and torch.equal(both[..., :d], tokens) and torch.equal(both[..., d:], tokens)  # gates at 0
        assert net(x).shape == (2, 2, 48, 40)
    with pytest.raises(ConfigError, match="2 x d"):
        MCDRLNet(*parts(SegmentationHead(d, (16, 8))), head_input="both")


def build_head_variant(world, **head_kw) -> MCDRLNet:
    torch.manual_seed(0)
    backbone = CLIPVisualBackbone(TINY, world["weights"])
    d = backbone.embed_dim
    return MCDRLNet(backbone, ConfounderDictionary(world["dictionary"], d), RegionSelector(0.5), randomise(CausalIntervention(d, 2, heads=2)),
                    SegmentationHead(d, (16, 8), skip_channels=(4, 8), embed_dim=d, **head_kw), presence_decision=True)


@pytest.mark.parametrize("head_kw", [{"skip_block": "residual"}, {"classifier": "text_queries"},
                                     {"classifier": "text_queries", "query_hidden": 4, "query_stride": 2}])
def test_head_alternatives_train_decode_at_the_input_size_and_trace(tiny_world, head_kw):
    """Issue 23's two alternatives to the shipped head: each one key, each gives (B, 2, H, W) at the input's own
    size, trains end to end, and traces (what the bundle's exports need)."""
    net = build_head_variant(tiny_world, **head_kw)
    x = torch.rand(2, 3, 90, 70)
    out = net.train()(x)
    assert out["pred"].shape == (2, 2, 90, 70)
    out["pred"][:, 1].mean().backward()
    trained = net.head.pixel_encoder if "skip_block" in head_kw else net.head.classifier.controller
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
    net.eval()
    traced = torch.jit.trace(net, torch.rand(1, 3, 64, 64), check_trace=False)
    with torch.no_grad():
        assert (traced(x) - net(x)).abs().max().item() <= 1e-4
        net.presence_decision = False
        assert torch.allclose(net(x), net.forward_with_score(x)[0], atol=1e-5)


def test_residual_pixel_encoder_is_monai_residual_units(tiny_world):
    from monai.networks.blocks import ResidualUnit

    net = build_head_variant(tiny_world, skip_block="residual")
    assert all(isinstance(level, ResidualUnit) for level in net.head.pixel_encoder.levels)
    levels = net.head.pixel_encoder(torch.rand(1, 3, 97, 131))
    assert [tuple(t.shape[1:]) for t in levels] == [(4, 97, 131), (8, 49, 66)]
    with pytest.raises(ValueError, match="skip_block"):
        SegmentationHead(32, (16, 8), skip_channels=(4, 8), skip_block="dense")


def test_text_query_classifier_reads_the_class_prompts_and_the_image_embedding(tiny_world):
    """The Universal Model pattern: the lesion logit comes from the K lesion queries (logsumexp), the background logit
    from "normal mucosa"; other queries or another F_vis give other logits, and the output is one dynamic head's
    1x1 convs (checked against a hand computation for one query)."""
    from mcdrl.networks.head import TextQueryClassifier

    torch.manual_seed(0)
    clf = TextQueryClassifier(8, 32)
    feats, queries, emb = torch.randn(2, 8, 5, 7), torch.randn(6, 32), torch.randn(2, 32)
    out = clf(feats, queries, emb)
    assert out.shape == (2, 6, 5, 7)
    params = clf.controller(torch.cat([F.normalize(emb[1], dim=0), F.normalize(queries[3], dim=0)]))
    h = clf.reduce(feats[1:2])[0].flatten(1)  # (8, 35)
    w1, b1 = params[:64].view(8, 8), params[64:72]
    w2, b2 = params[72:136].view(8, 8), params[136:144]
    w3, b3 = params[144:152].view(1, 8), params[152:153]
    want = w3 @ F.relu(w2 @ F.relu(w1 @ h + b1[:, None]) + b2[:, None]) + b3[:, None]
    assert torch.allclose(out[1, 3].flatten(), want[0], atol=1e-5)
    assert not torch.allclose(clf(feats, queries.flip(0), emb), out)
    assert not torch.allclose(clf(feats, queries, emb.flip(0)), out)

    net = build_head_variant(tiny_world, classifier="text_queries").eval()
    assert net.class_queries().shape == (6, 32)  # the 5 lesion prompts, then "normal mucosa"
    torch.testing.assert_close(net.class_queries()[-1], net.dictionary.background_embedding)
    grid, image = torch.randn(1, 32, 4, 4), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        q = net.head.classifier(net.head.stages[1](net.head.stages[0](net.head.proj(grid), net.head.pixel_encoder(image)[1]),
                                                   net.head.pixel_encoder(image)[0]), net.class_queries(), emb[:1])
        logits = net.head(grid, image, net.class_queries(), emb[:1])
    assert torch.allclose(logits[:, 0], q[:, -1], atol=1e-6) and torch.allclose(logits[:, 1], torch.logsumexp(q[:, :-1], 1), atol=1e-6)
    with pytest.raises(ValueError, match="text queries"):
        net.head(grid, image)
    with pytest.raises(ValueError, match="classifier"):
        SegmentationHead(32, (16, 8), classifier="queries")


def test_cheaper_text_query_classifier_pools_then_upsamples_two_logits(tiny_world):
    """``decoder_query_stride`` s: the dynamic convs run on the reduced features average-pooled by s, and only the two
    logits (background; the lesion queries' logsumexp) are upsampled to the decoder's size, odd sizes too;
    ``decoder_query_hidden`` narrows the dynamic convs, and weights of another width are named by that key."""
    from mcdrl.networks.head import TextQueryClassifier
    from mcdrl.networks.weights import weights_mismatch

    torch.manual_seed(0)
    pooled = TextQueryClassifier(8, 32, stride=2)
    feats, queries, emb = torch.randn(2, 8, 15, 17), torch.randn(6, 32), torch.randn(2, 32)
    out = pooled(feats, queries, emb)
    assert out.shape == (2, 6, 8, 9)
    reduced = pooled.reduce(feats)
    h = F.avg_pool2d(reduced, 2, ceil_mode=True)
    assert torch.allclose(h[..., -1, -1], reduced[..., -1, -1])  # the last window holds one pixel: its mean is itself
    bare = copy.deepcopy(pooled)
    bare.stride, bare.reduce = 1, torch.nn.Identity()  # the same dynamic convs, at full resolution, on the pooled features
    torch.testing.assert_close(bare(h, queries, emb), out)
    assert TextQueryClassifier(8, 32, hidden=4).controller.out_features == 2 * (4 * 4 + 4) + (4 * 1 + 1)
    with pytest.raises(ValueError, match="stride"):
        TextQueryClassifier(8, 32, stride=0)

    net = build_head_variant(tiny_world, classifier="text_queries", query_stride=2).eval()
    grid, image, emb = torch.randn(1, 32, 4, 4), torch.rand(1, 3, 18, 14), torch.randn(1, 32)
    with torch.no_grad():
        logits = net.head(grid, image, net.class_queries(), emb)
        skips = net.head.pixel_encoder(image)
        q = net.head.classifier(net.head.stages[1](net.head.stages[0](net.head.proj(grid), skips[1]), skips[0]), net.class_queries(), emb)
    assert q.shape == (1, 6, 9, 7) and logits.shape == (1, 2, 18, 14)
    want = F.interpolate(torch.stack([q[:, -1], torch.logsumexp(q[:, :-1], 1)], 1), size=(18, 14), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, want)
    with pytest.raises(ValueError, match="query_hidden and query_stride"):
        SegmentationHead(32, (16, 8), query_stride=2)
    shipped = build_head_variant(tiny_world, classifier="text_queries").state_dict()
    narrow = build_head_variant(tiny_world, classifier="text_queries", query_hidden=4).state_dict()
    assert weights_mismatch(shipped, narrow).startswith("decoder_query_hidden is 8 in the config, 4 in the weights")


def test_weights_of_another_head_alternative_name_the_config_key(tiny_world):
    from mcdrl.networks.weights import weights_mismatch

    shipped = build_full_net(tiny_world).state_dict()
    for key, head_kw in [("decoder_skip_block", {"skip_block": "residual"}), ("decoder_classifier", {"classifier": "text_queries"})]:
        other = build_head_variant(tiny_world, **head_kw).state_dict()
        value = next(iter(head_kw.values()))
        assert weights_mismatch(shipped, other).startswith(f"{key} is conv in the config, {value} in the weights")
        assert weights_mismatch(other, other) is None


def test_unet_head_is_the_monai_unet_with_the_clip_grid_at_its_bottleneck():
    """UNetHead, layer for layer, is monai.networks.nets.UNet(channels, strides 2, num_res_units 2): with the UNet's
    weights copied in and the bottleneck's weights for the grid's channels zero, its logits are the UNet's, at any
    input size (odd ones are cropped back, so the UNet's own divisible sizes and the others agree); with those
    weights not zero, the CLIP grid changes the logits."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    channels = (4, 8, 16, 32)
    head, unet = UNetHead(32, channels, grid_channels=8).eval(), UNet(2, 3, 2, channels, (2, 2, 2), num_res_units=2).eval()
    levels = len(channels) - 1
    copied = {}
    for k in range(levels):
        prefix = "model" + ".1.submodule" * k
        copied.update({f"pixel_encoder.{k}.{n}": v for n, v in unet.state_dict().items() if n.startswith(prefix + ".0.")
                       for n in [n[len(prefix) + 3:]]})
        copied.update({f"decoder.{k}.{n}": v for n, v in unet.state_dict().items() if n.startswith(prefix + ".2.")
                       for n in [n[len(prefix) + 3:]]})
    bottom = "model" + ".1.submodule" * (levels - 1) + ".1.submodule."
    for n, v in unet.state_dict().items():
        if n.startswith(bottom):
            mine = head.state_dict()["bottleneck." + n[len(bottom):]]
            if mine.shape != v.shape:  # the convs that read [deepest level, grid]: the grid's input channels get zeros
                v = torch.cat([v, torch.zeros(v.shape[0], mine.shape[1] - v.shape[1], *v.shape[2:])], dim=1)
            copied["bottleneck." + n[len(bottom):]] = v
    missing = head.load_state_dict(copied, strict=False).missing_keys
    assert sorted(missing) == sorted(k for k in head.state_dict() if k.startswith("proj."))  # everything else is the UNet's
    for size in [(64, 64), (90, 70), (37, 123)]:
        image, grid = torch.rand(2, 3, *size), torch.rand(2, 32, 3, 3)
        with torch.no_grad():
            out = head(grid, image)
            assert out.shape == (2, 2, *size)
            if size[0] % 8 == 0 and size[1] % 8 == 0:
                assert torch.allclose(out, unet(image), atol=1e-5)
            assert torch.equal(out, head(torch.rand(2, 32, 3, 3), image))  # grid weights zero: the grid does not matter
    fresh = UNetHead(32, channels, grid_channels=8).eval()
    with torch.no_grad():
        image = torch.rand(1, 3, 64, 64)
        assert not torch.allclose(fresh(torch.zeros(1, 32, 3, 3), image), fresh(torch.ones(1, 32, 3, 3), image))
    for bad, match in [({"channels": (8,)}, "at least 2"), ({"num_res_units": 0}, "num_res_units"),
                       ({"classifier": "mlp"}, "classifier"), ({"query_stride": 2}, "query_hidden and query_stride")]:
        with pytest.raises(ValueError, match=match):
            UNetHead(32, **{"channels": channels, **bad})


@pytest.mark.parametrize("classifier", ["conv", "text_queries"])
def test_mcdrlnet_with_the_unet_head_trains_decodes_at_the_input_size_and_traces(tiny_world, classifier):
    """The UNet head composes with the rest of MCDRLNet as the shipped head does: (B, 2, H, W) at the input's own size,
    gradients into the pixel pathway, the grid's projection and the CLIP trunk's trained block, the presence decision,
    and a trace that follows the input size (the exports)."""
    torch.manual_seed(0)
    backbone = CLIPVisualBackbone(TINY, tiny_world["weights"])
    d = backbone.embed_dim
    net = MCDRLNet(backbone, ConfounderDictionary(tiny_world["dictionary"], d), RegionSelector(0.5),
                   randomise(CausalIntervention(d, 2, heads=2)), UNetHead(d, (4, 8, 16), classifier=classifier, embed_dim=d),
                   presence_decision=True)
    x = torch.rand(2, 3, 90, 70)
    out = net.train()(x)
    assert out["pred"].shape == (2, 2, 90, 70)
    out["pred"][:, 1].mean().backward()
    for part in (net.head.pixel_encoder, net.head.proj, net.head.decoder):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    net.eval()
    traced = torch.jit.trace(net, torch.rand(1, 3, 64, 64), check_trace=False)
    with torch.no_grad():
        assert (traced(x) - net(x)).abs().max().item() <= 1e-4
        logits, score = net.forward_with_score(x)
        net.presence_threshold.fill_(float(score.max()) + 1e-3)  # every frame rejected: every mask empty
        assert (net(x).argmax(1) == 0).all() and (logits.argmax(1) == 1).any()


def test_weights_of_the_other_head_name_it(tiny_world):
    from mcdrl.networks.weights import weights_mismatch

    shipped = build_full_net(tiny_world).state_dict()
    backbone = CLIPVisualBackbone(TINY, tiny_world["weights"])
    d = backbone.embed_dim
    parts = (backbone, ConfounderDictionary(tiny_world["dictionary"], d), RegionSelector(0.5), CausalIntervention(d, 2, heads=2))
    unet_head = MCDRLNet(*parts, UNetHead(d, (4, 8, 16))).state_dict()
    narrow = MCDRLNet(*parts, UNetHead(d, (4, 8, 8))).state_dict()
    assert weights_mismatch(shipped, unet_head).startswith(
        "the head (network_def#head, configs/unet_head.json) is SegmentationHead in the config, UNetHead in the weights")
    assert weights_mismatch(unet_head, narrow).startswith("unet_channels is [4, 8, 16] in the config, [4, 8, 8] in the weights")
    assert weights_mismatch(unet_head, unet_head) is None
