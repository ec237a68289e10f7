"""End to end through the real CLI, from a cwd other than the repository root:

    python -m monai.bundle run --config_file bundle/configs/inference.json --dataset_dir IN --output_dir OUT [--strict false]

with a bundle_root whose models/model.pt is the tiny network's state_dict.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BUNDLE, bundle_cli
from mcdrl.io import LoadCase, discover
from mcdrl.transforms import LesionPostprocess
from test_io_helpers import EXPECTED, SECRET_ID, build_tiny_net, make_mixed_folder, rgb_frames, save_bundle_root, tiny_inference_overrides

CONFIG = str(BUNDLE / "configs" / "inference.json")
LOGGING = str(BUNDLE / "configs" / "logging.conf")


@pytest.fixture(scope="module")
def setup(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("io_cli")
    net = build_tiny_net(tiny_world)
    root = save_bundle_root(net, tmp / "bundle_root")
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    return {"net": net, "overrides": tiny_inference_overrides(tiny_world, root), "cwd": cwd, "tmp": tmp}


def test_cli_on_a_mixed_folder_exits_1_and_writes_everything(setup):
    folder, out = make_mixed_folder(setup["tmp"] / "in"), setup["tmp"] / "out"
    proc = bundle_cli(["run", "--config_file", CONFIG, "--logging_file", LOGGING], setup["cwd"],
                      {**setup["overrides"], "dataset_dir": str(folder), "output_dir": str(out)})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "case(s) ok, 6 failed, 2 skipped" in proc.stderr and "--strict false" in proc.stderr
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        rows = {r["input"]: r for r in csv.DictReader(f)}
    assert {k: r["status"] for k, r in rows.items()} == EXPECTED
    log = proc.stdout + proc.stderr
    assert all(f"[{i}/{len(EXPECTED)}]" in log for i in range(1, len(EXPECTED) + 1))  # one log line per case
    assert SECRET_ID not in log and "Doe" not in log
    # the weights came from models/model.pt: the CLI's mask equals the in-process network's, after the same
    # post-processing (inference.json's min_lesion_fraction / keep_largest_lesion)
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    post = LesionPostprocess(config["min_lesion_fraction"], config["keep_largest_lesion"])
    x = LoadCase()(next(c for c in discover(folder / "photo0.png"))).frames
    with torch.inference_mode():
        ref = post(setup["net"](x).argmax(1)[0].numpy())
    assert np.array_equal(np.asarray(Image.open(out / "photo0_mask.png")), ref)
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["batch_size"] == 8


def test_cli_strict_false_exits_0_and_a_single_file_works(setup):
    folder = setup["tmp"] / "small"
    folder.mkdir()
    Image.fromarray(rgb_frames(1)[0]).save(folder / "frame.png")
    (folder / "empty.dcm").write_bytes(b"")
    out = setup["tmp"] / "out_lenient"
    proc = bundle_cli(["run", "--config_file", CONFIG], setup["cwd"],
                      {**setup["overrides"], "dataset_dir": str(folder), "output_dir": str(out), "strict": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "frame_mask.png").is_file() and "1 case(s) ok, 1 failed" in proc.stdout + proc.stderr
    single = setup["tmp"] / "out_single"
    proc = bundle_cli(["run", "--config_file", CONFIG], setup["cwd"],
                      {**setup["overrides"], "dataset_dir": str(folder / "frame.png"), "output_dir": str(single)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in single.iterdir()) == ["frame_mask.png", "summary.csv", "summary.json"]


def test_cli_without_weights_fails_with_one_clear_line(setup, tmp_path):
    Image.fromarray(rgb_frames(1)[0]).save(tmp_path / "frame.png")
    proc = bundle_cli(["run", "--config_file", CONFIG], setup["cwd"],
                      {**setup["overrides"], "bundle_root": str(tmp_path / "no_bundle"), "dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "out")})
    assert proc.returncode != 0 and "model weights not found" in proc.stderr
    assert not (tmp_path / "out" / "frame_mask.png").exists()


def test_inference_config_keeps_its_monai_label_ids(setup, tiny_world):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=CONFIG, workflow_type="inference", **{**setup["overrides"], "dataset_dir": str(tiny_world["data"] / "images")})
    wf.initialize()
    assert wf.check_properties() in (None, [])
    for key in ("network_def", "network", "preprocessing", "inferer", "postprocessing", "dataset", "evaluator", "handlers", "folder_runner", "strict"):
        assert key in wf.parser, key
