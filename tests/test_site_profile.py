"""The confounder readout, its metrics, and the site profile workflow through the real bundle CLI (issue 23)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import bundle_cli
from test_io_helpers import build_tiny_net, save_bundle_root, tiny_inference_overrides

INFER = "bundle/configs/inference.json"
PROFILE_CONFIGS = "['bundle/configs/inference.json','bundle/configs/site_profile.json']"


# ---- the readout's metrics, against values worked out by hand -------------------------------------------------------
def test_readout_metrics_compute_what_they_say():
    from mcdrl.evaluation.confounder_readout import per_confounder_auc, precision_at_k, readout_metrics, top1_hit_rate

    names = ["a", "b", "c", "d"]
    labels = np.array([[1, 0, 0, 0],   # top-1 a: hit; top-3 a, b, c: 1 of 3
                       [0, 1, 1, 0],   # top-1 d: miss; top-3 d, c, b: 2 of 3
                       [0, 0, 0, 0],   # no confounder: left out of top-1 and precision@3
                       [1, 1, 1, 1]], bool)  # top-1 b: hit; 3 of 3
    scores = np.array([[0.9, 0.5, 0.4, 0.1],
                       [0.1, 0.3, 0.5, 0.9],
                       [0.9, 0.8, 0.7, 0.6],
                       [0.2, 0.8, 0.4, 0.3]])
    assert top1_hit_rate(scores, labels) == pytest.approx(2 / 3)
    p3, ceiling = precision_at_k(scores, labels, 3)
    assert p3 == pytest.approx((1 / 3 + 2 / 3 + 3 / 3) / 3)
    assert ceiling == pytest.approx((1 / 3 + 2 / 3 + 3 / 3) / 3)  # min(#true, 3) / 3 per frame: 1, 2, 3 true
    # AUC of "a": positives score 0.9, 0.2; negatives 0.1, 0.9 -> pairs (0.9>0.1 1, 0.9=0.9 0.5, 0.2>0.1 1, 0.2<0.9 0) / 4
    assert per_confounder_auc(scores, labels, names, min_frames=2)["a"] == pytest.approx(2.5 / 4)
    assert set(per_confounder_auc(scores, labels, names, min_frames=3)) == set()  # no confounder has 3 frames
    assert set(per_confounder_auc(scores, labels, names, min_frames=2)) == {"a", "b", "c"}  # d has 1 frame
    m = readout_metrics(scores, labels, names, min_frames=2)
    assert m["frames"] == 4 and m["frames_with_confounder"] == 3 and m["auc_min"] == min(m["auc"].values())


def test_profile_measurement_gates_records_as_the_network_does():
    from mcdrl.evaluation.site_profile import best_threshold, gated

    records = [{"lesion": False, "false_alarm": True, "lesion_score": 0.9}, {"lesion": False, "false_alarm": True, "lesion_score": 0.5},
               {"lesion": False, "false_alarm": False, "lesion_score": 0.95}, {"lesion": False, "false_alarm": True, "lesion_score": 0.2},
               {"lesion": True, "detected": True, "lesion_score": 0.7}, {"lesion": True, "detected": False, "lesion_score": 0.99}]
    g = gated(records, 0.6)  # lesion-free above 0.6: 0.9 (false alarm), 0.95 (no mask) -> 1 of 4; lesion 0.7 detected -> 1 of 2
    assert (g["false_alarm_rate"], g["sensitivity"]) == (0.25, 0.5)
    assert gated(records, 0.0)["false_alarm_rate"] == 0.75
    assert best_threshold(records, 0.25)["threshold"] == 0.7  # the lowest threshold at <= 25% false alarms


def test_lesion_free_shift_reads_only_lesion_free_frames_against_the_reference():
    from mcdrl.evaluation.site_profile import lesion_free_shift

    free = lambda *scores: [{"lesion": False, "lesion_score": s} for s in scores]  # noqa: E731
    recs = {"val": free(0.1, 0.2, 0.3) + [{"lesion": True, "lesion_score": 0.99}], "F": free(0.5, 0.6, 0.7, 0.8, 0.9)}
    out = lesion_free_shift(recs, threshold=0.65, reference="val")
    assert out["val"] == {"frames": 3, "median": 0.2, "p90": pytest.approx(0.28), "above_threshold": 0.0, "median_shift": 0.0}
    assert out["F"]["frames"] == 5 and out["F"]["median"] == 0.7 and out["F"]["median_shift"] == 0.5 and out["F"]["above_threshold"] == 0.6


# ---- the readout itself ---------------------------------------------------------------------------------------------
def test_readout_scores_thresholds_and_calibration():
    from mcdrl.errors import ConfigError
    from mcdrl.networks.confounder_readout import ConfounderReadout, thresholds_at_false_positive_rate

    torch.manual_seed(0)
    z, ref, f = torch.randn(3, 8), torch.randn(8), torch.randn(5, 8)
    readout = ConfounderReadout(3, 8)
    plain = F.normalize(f, dim=-1) @ F.normalize(z, dim=-1).t()
    assert torch.allclose(readout(f, z), plain, atol=1e-6)  # uncalibrated: r = 0, plain cosines
    with pytest.raises(ConfigError, match="not calibrated"):
        readout.present(plain)
    scores = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [9.0, 1.0]])
    labels = torch.tensor([[0, 1], [0, 1], [0, 1], [0, 1], [1, 1]], dtype=torch.bool)
    thr = thresholds_at_false_positive_rate(scores, labels, 0.25)  # negatives of column 0: 0, 1, 2, 3 -> 75% quantile 2.25
    assert thr[0].item() == pytest.approx(2.25) and thr[1].item() == float("inf")  # column 1 has no negative
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    record = readout.set_calibration(ref, f, labels, z, 0.5)
    expected = plain - (F.normalize(f, dim=-1) @ F.normalize(ref, dim=0))[:, None]
    assert torch.allclose(readout(f, z), expected, atol=1e-6)
    assert readout.is_calibrated and record["frames"] == 5
    assert torch.equal(readout.source_share, (expected >= readout.thresholds).float().mean(0))


def test_network_reports_the_readout(tiny_world):
    net = build_tiny_net(tiny_world)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, pooled = net.backbone.forward_tokens(net._resize_in(x))
        expected = F.normalize(pooled, dim=-1) @ F.normalize(net.dictionary.confounders, dim=-1).t()
        logits, weights, score = net.predict_with_confounders(x, with_score=True)
        score2, conf = net.read_frames(x)
    assert torch.allclose(weights, expected, atol=1e-5) and torch.allclose(conf, expected, atol=1e-5)
    assert torch.allclose(score, score2, atol=1e-6)
    assert torch.allclose(logits, net(x), atol=1e-5)  # the eval forward is still one logits tensor, and the same
    assert {"readout.reference", "readout.thresholds", "readout.source_share", "readout.calibrated"} <= set(net.state_dict())


# ---- the workflow through the real CLI -------------------------------------------------------------------------------
def _frames(folder: Path, n: int, seed: int = 0, size: int = 64) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        img[..., 0] = np.clip(img[..., 0].astype(int) + 20 * (i % 4), 0, 255)
        Image.fromarray(img).save(folder / f"frame{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def profiled(tiny_world, tmp_path_factory):
    """A tiny bundle_root whose model.pt lacks the readout (as before issue 23), calibrated and profiled by the CLI."""
    tmp = tmp_path_factory.mktemp("profile")
    net = build_tiny_net(tiny_world)
    root = save_bundle_root(net, tmp / "bundle")
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("readout.")}, root / "models" / "model.pt")
    names = list(net.confounder_names)
    src = _frames(tmp / "source", 12, seed=1)
    entries = [{"image": str(p), "label": str(p), "site": "S1" if i % 2 else "S2", "confounders": [names[i % 12], names[(i + 5) % 12]]}
               for i, p in enumerate(sorted(src.glob("*.png")))]
    (tmp / "datalist.json").write_text(json.dumps({"training": entries}))
    base = tiny_inference_overrides(tiny_world, root)
    repo = Path(__file__).resolve().parents[1]
    cal = bundle_cli(["run", "calibrate_readout", "--config_file", PROFILE_CONFIGS], repo,
                     {**base, "calibration_datalist": str(tmp / "datalist.json"), "calibration_per_site": 5, "clip_text_weights": str(tiny_world["weights"]),
                      "readout_false_positive_rate": 0.2})
    assert cal.returncode == 0, cal.stderr[-3000:]
    site = _frames(tmp / "site", 8, seed=2)
    (site / "broken.png").write_bytes(b"not a png at all")
    prof = bundle_cli(["run", "profile", "--config_file", PROFILE_CONFIGS], repo,
                      {**base, "dataset_dir": str(site), "output_dir": str(tmp / "profile_out"), "min_frames": 6, "site_name": "tiny_site"})
    return {"tmp": tmp, "root": root, "base": base, "repo": repo, "site": site, "cal": cal, "prof": prof, "names": names}


def test_calibration_completes_an_old_model_file(profiled):
    state = torch.load(profiled["root"] / "models" / "model.pt", weights_only=True)
    assert state["readout.calibrated"].item() == 1.0 and torch.isfinite(state["readout.thresholds"]).all()
    record = json.loads((profiled["root"] / "docs" / "results" / "readout_calibration.json").read_text())
    assert record["frames_per_site"] == {"S2": 5, "S1": 5} and record["reference_prompt"] == "An endoscopy image"


def test_profile_workflow_writes_a_valid_profile_and_reports_the_unreadable_frame(profiled):
    from mcdrl.io.site_profile import PROFILE_FORMAT, load_site_profile

    assert profiled["prof"].returncode == 0, profiled["prof"].stderr[-3000:]
    out = profiled["tmp"] / "profile_out"
    doc = load_site_profile(out / "site_profile.json")
    assert doc["format"] == PROFILE_FORMAT and doc["site"] == "tiny_site" and doc["frames"] == 8
    assert [u["input"] for u in doc["unreadable"]] == ["broken.png"] and "cannot read" in doc["unreadable"][0]["reason"]
    assert "ERROR broken.png: cannot read" in profiled["prof"].stdout + profiled["prof"].stderr  # as the folder runner reports it
    assert [c["name"] for c in doc["confounders"]] == profiled["names"]
    assert all(0.0 <= c["site_share"] <= 1.0 for c in doc["confounders"])
    state = torch.load(profiled["root"] / "models" / "model.pt", weights_only=True)
    assert [c["training_share"] for c in doc["confounders"]] == pytest.approx(state["readout.source_share"].tolist(), abs=1e-4)
    t = doc["presence_threshold"]
    assert t["method"] == "mixture" and t["inputs"] == {"frames": 8, "target_false_alarm": 0.2} and len(t["mixture"]["means"]) == 2
    shares = np.mean([[n in f["confounders"] for n in profiled["names"]] for f in doc["per_frame"]], axis=0)
    assert [c["site_share"] for c in doc["confounders"]] == pytest.approx(shares.tolist(), abs=1e-4)
    assert (out / "site_profile.md").read_text().startswith("# Site profile: tiny_site")
    assert Image.open(out / "site_profile.png").size[0] > 100


def test_inference_applies_the_profile_and_its_summary_names_it(profiled):
    prof = profiled["tmp"] / "profile_out" / "site_profile.json"
    doc = json.loads(prof.read_text())
    # a threshold inside the frames' scores, so that it empties some masks and keeps others: the test can fail
    scores = sorted(f["lesion_score"] for f in doc["per_frame"])
    doc["presence_threshold"]["value"] = (scores[3] + scores[4]) / 2
    prof.write_text(json.dumps(doc))
    out = profiled["tmp"] / "infer_out"
    r = bundle_cli(["run", "--config_file", INFER], profiled["repo"],
                   {**profiled["base"], "dataset_dir": str(profiled["site"]), "output_dir": str(out), "site_profile": str(prof), "strict": False,
                    "min_lesion_fraction": 0.0})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["site_profile"]["path"] == str(prof) and summary["site_profile"]["presence_threshold"] == pytest.approx(doc["presence_threshold"]["value"])
    assert summary["confounder_readout"] == "calibrated"
    ok = [c for c in summary["cases"] if c["status"] == "ok"]
    assert len(ok) == 8
    rejected = [c for c in ok if c["lesion_score"] < doc["presence_threshold"]["value"]]
    assert len(rejected) == 4 and all(c["lesion_area_px"] == 0 for c in rejected)


def test_profile_of_another_model_is_refused(profiled, tiny_world):
    from mcdrl.errors import ConfigError
    from mcdrl.io.site_profile import apply_site_profile

    other = build_tiny_net(tiny_world)  # not the calibrated weights of the profiled model.pt
    with pytest.raises(ConfigError, match="another model"):
        apply_site_profile(other, profiled["tmp"] / "profile_out" / "site_profile.json")


def test_too_few_frames_is_a_clear_error(profiled):
    r = bundle_cli(["run", "profile", "--config_file", PROFILE_CONFIGS], profiled["repo"],
                   {**profiled["base"], "dataset_dir": str(profiled["site"]), "output_dir": str(profiled["tmp"] / "few"), "min_frames": 50})
    assert r.returncode != 0
    assert "found 8 readable frame(s) (1 unreadable file(s) or series); a site profile needs at least 50 (min_frames)" in r.stderr
    assert not (profiled["tmp"] / "few" / "site_profile.json").exists()


def test_threshold_methods():
    from mcdrl.errors import ConfigError
    from mcdrl.io.site_profile import choose_threshold

    rng = np.random.default_rng(0)
    free, lesion = rng.normal(0.3, 0.05, 400), rng.normal(0.8, 0.05, 400)
    t = choose_threshold(np.concatenate([free, lesion]), "mixture", 0.2)
    assert t["mixture"]["means"] == pytest.approx([0.3, 0.8], abs=0.01)
    assert float((free >= t["value"]).mean()) == pytest.approx(0.2, abs=0.04)  # aims at 20% of the lesion-free frames
    s = choose_threshold(np.array([0.1, 0.2, 0.3, 0.4, 0.9, 1.0]), "lesion_free_share", 0.25, 2 / 3)
    assert s["value"] == pytest.approx(np.quantile([0.1, 0.2, 0.3, 0.4, 0.9, 1.0], 0.5)) and s["inputs"]["lesion_free_share"] == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="lesion_free_share"):
        choose_threshold(np.ones(5), "lesion_free_share", 0.2, None)


def test_monailabel_inferer_applies_the_profile_from_the_config_key(profiled):
    """MONAI Label re-parses inference.json's inferer per request: its site_profile key sets the loaded network's threshold."""
    from monai.bundle import ConfigParser

    from mcdrl.io import load_weights

    prof = profiled["tmp"] / "profile_out" / "site_profile.json"
    value = json.loads(prof.read_text())["presence_threshold"]["value"]
    parser = ConfigParser()
    parser.read_config(str(profiled["repo"] / INFER))
    parser.update({**profiled["base"], "site_profile": str(prof)})
    net = load_weights(parser.get_parsed_content("network_def"), profiled["root"] / "models" / "model.pt").eval()
    before = float(net.presence_threshold)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        parser.get_parsed_content("inferer")(x, net)
    assert float(net.presence_threshold) == pytest.approx(value) and before != pytest.approx(value)
