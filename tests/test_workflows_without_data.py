"""A fresh clone has no data folder: every workflow must initialise and pass MONAI's ``check_properties`` (as the
model zoo checks it) without data on disk, and a run must then stop with one clear line naming what is missing.
Startup must not claim random weights when the weights come from models/model.pt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BUNDLE, PYTHON, TINY_OVERRIDES

CHECK = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
from monai.bundle import ConfigWorkflow
configs = sys.argv[1]
out = {}
for kind, files in (("infer", [configs + "/inference.json"]), ("train", [configs + "/train.json"]),
                    ("eval", [configs + "/train.json", configs + "/evaluate.json"])):
    w = ConfigWorkflow(workflow_type=kind, config_file=files, meta_file=configs + "/metadata.json")
    w.initialize()
    missing = w.check_properties()
    try:
        w.run()
        error = None
    except Exception as e:  # the root cause of MONAI's ConfigExpression wrapper
        while e.__cause__ is not None:
            e = e.__cause__
        error = f"{type(e).__name__}: {e}"
    out[kind] = {"missing": missing, "bundle_root": str(w.bundle_root), "run_error": error}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """bundle/ as a fresh clone has it (custom/ beside it), in a folder without data/ next to it."""
    root = tmp_path_factory.mktemp("fresh_clone")
    shutil.copytree(BUNDLE, root / "bundle", ignore=shutil.ignore_patterns("runs", "eval", "__pycache__", "models"))
    (root / "bundle" / "models").symlink_to(BUNDLE / "models", target_is_directory=True)  # the shipped weights
    (root / "custom").symlink_to(BUNDLE.parent / "custom", target_is_directory=True)  # a source checkout: data/ beside bundle/
    assert not (root / "data").exists()
    return root / "bundle"


def test_every_workflow_initialises_and_checks_without_data_then_run_names_the_missing_input(clone, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MCDRL_BUNDLE_ROOT": str(clone)}
    proc = subprocess.run([PYTHON, "-c", CHECK, str(clone / "configs")], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    data = clone.parent / "data"  # mcdrl.paths.default_data_dir in a source checkout: the repository's data/
    for kind in ("infer", "train", "eval"):
        assert out[kind]["missing"] == [], (kind, out[kind])
        assert out[kind]["bundle_root"] == str(clone)
    assert out["infer"]["run_error"] == f"InputFileError: input not found: {data / 'demo' / 'images'}. Pass --dataset_dir pointing at a folder or a file."
    for kind in ("train", "eval"):
        assert out[kind]["run_error"].startswith(f"InputFileError: datalist not found: {data / 'synthetic' / 'datalist.json'}"), out[kind]


def test_inference_cli_without_data_is_one_clear_line_and_no_random_weights_warning(clone, tmp_path):
    """The bundle CLI on a fresh clone: exit 2, the missing path in one line, no traceback (train and evaluate raise
    the same InputFileError, see above); and startup does not log open_clip's "Model initialized randomly" (the
    weights come from models/model.pt)."""
    cmd = [PYTHON, "-m", "monai.bundle", "run", "--config_file", str(clone / "configs" / "inference.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    assert "Traceback" not in log and "ConfigExpression" not in log, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("mcdrl: error:")]
    assert len(errors) == 1 and str(clone.parent / "data") in errors[0], log[-3000:]
    assert "initialized randomly" not in log and "No pretrained weights" not in log


def test_network_without_a_clip_weights_file_logs_no_random_init_warning(tiny_world, caplog):
    from monai.bundle import ConfigParser

    from mcdrl.networks.clip_backbone import create_clip

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({**TINY_OVERRIDES, "dictionary_path": str(tiny_world["dictionary"]), "clip_weights": None})
    with caplog.at_level(logging.INFO):
        parser.get_parsed_content("network_def")
        loaded = create_clip(TINY_OVERRIDES["clip_model"], tiny_world["weights"])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Instantiating model architecture" in text  # open_clip's log lines do reach the root logger here
    assert "initialized randomly" not in text and "No pretrained weights" not in text
    assert loaded is not None
    import open_clip

    with caplog.at_level(logging.INFO):
        caplog.clear()
        open_clip.create_model(TINY_OVERRIDES["clip_model"], pretrained=None)  # open_clip itself still warns
    assert any("initialized randomly" in r.getMessage() for r in caplog.records)
