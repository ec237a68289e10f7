"""The shipped demo: sha256 check, strict loading of the shipped weights, and the documented demo Dice reproduced."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import BUNDLE, PYTHON

from mcdrl.deploy.shipped import read_manifest, verify_shipped
from mcdrl.errors import InputFileError

RESULTS = BUNDLE / "docs" / "results" / "demo.json"
pytestmark = pytest.mark.skipif(not (BUNDLE / "large_files.yml").is_file(), reason="no shipped weights in this checkout")


def test_every_shipped_file_matches_its_sha256():
    entries = read_manifest(BUNDLE)
    assert {e["path"] for e in entries} >= {"models/model.pt", "models/confounder_dictionary.safetensors"}
    assert len(verify_shipped(BUNDLE)) == len(entries)
    assert sum((BUNDLE / e["path"]).stat().st_size for e in entries) <= 40 * 2**20  # the budget
    assert len(list((BUNDLE / "models").glob("*.pt"))) == 1  # MONAI Label lists every .pt as a model


def test_corrupt_or_missing_shipped_file_names_the_regeneration_command(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "models", root / "models")
    shutil.copy(BUNDLE / "large_files.yml", root / "large_files.yml")
    with open(root / "models" / "model.pt", "r+b") as f:
        f.seek(100)
        f.write(b"corrupt!")
    with pytest.raises(InputFileError, match=r"model.pt is corrupt.*make regenerate"):
        verify_shipped(root)
    (root / "models" / "model.pt").unlink()
    with pytest.raises(InputFileError, match=r"shipped file missing.*make regenerate"):
        verify_shipped(root)


def test_shipped_weights_load_strict_into_inference_network():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    net = parser.get_parsed_content("network_def")
    state = torch.load(BUNDLE / "models" / "model.pt", weights_only=True, map_location="cpu")
    assert set(state) == set(net.state_dict())
    net.load_state_dict(state, strict=True)


@pytest.mark.slow
def test_demo_reproduces_documented_dice(tmp_path):
    """`python -m mcdrl.demo` (the real bundle CLI inside) gives the per-case Dice recorded in docs/results/demo.json."""
    import subprocess

    documented = json.loads(RESULTS.read_text())
    out = tmp_path / "demo"
    proc = subprocess.run([PYTHON, "-m", "mcdrl.demo", "--out", str(out), "--site", documented["site"], "--n", str(documented["n"]), "--seed", str(documented["seed"])],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((out / "summary.json").read_text())
    assert [c["case"] for c in got["cases"]] == [c["case"] for c in documented["cases"]]
    for g, d in zip(got["cases"], documented["cases"]):
        assert g["dice"] == pytest.approx(d["dice"], abs=2e-3), g["case"]
    assert (out / "summary.html").is_file() and len(list((out / "overlays").glob("*.png"))) == documented["n"]
