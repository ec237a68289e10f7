"""The presence probe: a trained lesion score on F_vis, fitted by the ``calibrate_presence`` run (issue 23, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import bundle_cli, make_tiny_dataset
from test_io_helpers import build_tiny_net, save_bundle_root, tiny_inference_overrides

PROBE_CONFIGS = "['bundle/configs/inference.json','bundle/configs/presence_probe.json']"


def test_fit_probe_separates_and_folds_the_standardisation_in():
    from mcdrl.engines.presence_calibration import fit_probe, probe_auc
    from mcdrl.networks.presence import PresenceProbe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    y = x[:, 3] / np.linalg.norm(x, axis=1) > 0.05  # the lesion is one direction of the (normalised) embedding
    w, b = fit_probe(x, y, 1e-3)
    assert probe_auc(x, y, w, b) == 1.0
    probe = PresenceProbe(16)
    assert not probe.is_calibrated
    probe.set_weights(torch.from_numpy(w).float(), b)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = 1.0 / (1.0 + np.exp(-(xn @ w + b)))
    assert probe.is_calibrated and np.allclose(probe(torch.from_numpy(x).float()).numpy(), expected, atol=1e-5)
    with pytest.raises(Exception, match="lesion and lesion-free"):
        fit_probe(x, np.ones(200, bool), 1e-3)


def test_choose_l2_scores_each_site_it_can_leave_out():
    from mcdrl.engines.presence_calibration import choose_l2

    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 8))
    y = x[:, 0] + 0.8 * rng.normal(size=120) > 0
    site = np.array(["S1", "S2", "S3"] * 40)
    original = np.ones(120, bool)
    l2, rec = choose_l2(x, y, site, original, [1e-3, 1.0, 100.0])
    assert rec["sites_left_out"] == ["S1", "S2", "S3"] and l2 == max([1e-3, 1.0, 100.0], key=lambda v: rec[str(v)])
    y_one_site = y & (site == "S1")  # only S1 has lesions: leaving S1 out leaves none to fit on, the others have none
    l2, rec = choose_l2(x, y_one_site, site, original, [1e-3, 1.0, 100.0])
    assert l2 == 1.0 and "no site can be left out" in rec["note"]


def test_doz_copy_is_deterministic_and_changes_the_frame():
    from mcdrl.engines.presence_calibration import doz_copy

    img = (np.random.default_rng(2).random((64, 64, 3)) * 120 + 60).astype(np.uint8)
    a, b, c = doz_copy(img, 5), doz_copy(img, 5), doz_copy(img, 6)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, img) and not np.array_equal(a, c)


def test_network_uses_the_probe_only_once_calibrated(tiny_world):
    from mcdrl.networks.presence import PresenceProbe

    plain = build_tiny_net(tiny_world)
    assert not any(k.startswith("presence_probe.") for k in plain.state_dict())  # the default model.pt has no probe keys
    net = build_tiny_net(tiny_world)
    net.presence_probe = PresenceProbe(net.backbone.embed_dim)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, pooled = net.backbone.forward_tokens(net._resize_in(x))
        zero_shot = plain.lesion_score(pooled)
        assert torch.allclose(net.lesion_score(pooled), zero_shot)  # uncalibrated: the zero-shot score, as before
        net.presence_probe.set_weights(torch.ones(net.backbone.embed_dim), -1.0)
        assert torch.allclose(net.lesion_score(pooled), net.presence_probe(pooled))
        assert not torch.allclose(net.lesion_score(pooled), zero_shot)


@pytest.fixture(scope="module")
def calibrated(tiny_world, tmp_path_factory):
    """A tiny bundle_root whose model.pt has no probe keys, calibrated by the real CLI on two sites with both classes."""
    tmp = tmp_path_factory.mktemp("presence")
    datalist = make_tiny_dataset(tmp / "data", n_train=12, n_val=6)
    doc = json.loads(datalist.read_text())
    for i, e in enumerate(doc["training"]):  # lesion-free frames are 5 and 11 (every 6th): one per site
        e["site"] = "S1" if i < 6 else "S2"
    datalist.write_text(json.dumps(doc))
    root = save_bundle_root(build_tiny_net(tiny_world), tmp / "bundle")
    repo = Path(__file__).resolve().parents[1]
    over = {**tiny_inference_overrides(tiny_world, root), "calibration_datalist": str(datalist), "presence_probe_copies": 1}
    run = bundle_cli(["run", "calibrate_presence", "--config_file", PROBE_CONFIGS], repo, over)
    return {"root": root, "run": run, "repo": repo, "over": over, "datalist": datalist}


def test_calibrate_presence_completes_the_model_file(calibrated):
    assert calibrated["run"].returncode == 0, calibrated["run"].stderr[-3000:]
    state = torch.load(calibrated["root"] / "models" / "model.pt", weights_only=True)
    assert state["presence_probe.calibrated"].item() == 1.0 and torch.isfinite(state["presence_probe.weight"]).all()
    record = json.loads((calibrated["root"] / "docs" / "results" / "presence_calibration.json").read_text())
    assert record["frames"] == 12 and record["lesion_frames"] == 10 and record["copies"] == 1 and record["doz"] == "all"
    assert record["fitting_rows"] == 24 and record["l2_leave_one_site_out_auc"]["sites_left_out"] == ["S1", "S2"]
    assert record["validation_frames"] == 6 and state["presence_threshold"].item() == pytest.approx(record["presence_threshold"], abs=1e-5)
    from mcdrl.deploy.shipped import sha256_file

    assert sha256_file(calibrated["root"] / "models" / "model.pt") in (calibrated["root"] / "large_files.yml").read_text()


def test_calibrated_model_loads_with_the_probe_and_scores_with_it(calibrated, tiny_world):
    from monai.bundle import ConfigParser

    from mcdrl.io import load_weights

    parser = ConfigParser()
    parser.read_config([str(calibrated["repo"] / "bundle/configs/inference.json"), str(calibrated["repo"] / "bundle/configs/presence_probe.json")])
    parser.update(calibrated["over"])
    net = load_weights(parser.get_parsed_content("network_def"), calibrated["root"] / "models" / "model.pt", "cpu").eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, pooled = net.backbone.forward_tokens(net._resize_in(x))
        assert torch.allclose(net.lesion_score(pooled), net.presence_probe(pooled))
    with pytest.raises(Exception, match="presence_probe"):  # the plain config does not fit a model with a probe
        load_weights(build_tiny_net(tiny_world), calibrated["root"] / "models" / "model.pt", "cpu")


def test_calibrate_presence_refuses_a_network_without_a_probe(calibrated, tiny_world):
    over = {**calibrated["over"], "calibrate_presence": ["$mcdrl.engines.presence_calibration.calibrate_presence(@network, @bundle_root + '/models/model.pt', @calibration_datalist)"]}
    run = bundle_cli(["run", "calibrate_presence", "--config_file", "bundle/configs/inference.json"], calibrated["repo"], over)
    assert run.returncode != 0 and "needs a network built with a presence probe" in run.stderr
