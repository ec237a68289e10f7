"""The packaged bundle (``python -m mcdrl.deploy.package``, ``make bundle``) stands on its own.

It is run the way a user who received only the folder runs it: ``python -m monai.bundle`` from the bundle folder, in
an interpreter where the repository's ``mcdrl`` is NOT importable (``ISOLATED`` below removes every ``sys.path`` entry
that holds an ``mcdrl`` package, such as the venv's editable install, and proves ``import mcdrl`` then fails), and
MONAI Label's ``BundleInferTask`` on the folder unpacked from the zip, in the MONAI Label venv, isolated the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE, PYTHON, REPO, TINY_OVERRIDES

from mcdrl.deploy.package import BUNDLE_NAME, check_self_contained, format_json, json_format_errors, package_bundle
from mcdrl.errors import ConfigError

#: Run as ``python -I ISOLATED <module> <args...>``: -I drops PYTHONPATH, the user site and the script's folder; then
#: every remaining sys.path entry holding an ``mcdrl`` package (the editable install's .pth adds the repository's
#: custom/) is removed, ``import mcdrl`` is shown to fail, and the cwd is put first, as ``python -m`` does.
ISOLATED = r"""
import importlib.util, os, runpy, sys
removed = [p for p in sys.path if os.path.isfile(os.path.join(p or ".", "mcdrl", "__init__.py"))]
sys.path[:] = [p for p in sys.path if p not in removed]
assert importlib.util.find_spec("mcdrl") is None, "mcdrl is still importable"
print("ISOLATED: mcdrl not importable; removed from sys.path:", removed, flush=True)
sys.path.insert(0, os.getcwd())
module, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    loaded = sys.modules.get("mcdrl")
    print("ISOLATED: mcdrl loaded from", getattr(loaded, "__file__", None), flush=True)
"""

#: the documented TorchScript export (the model card's command): tracing, see the card's export section
EXPORT = ["ckpt_export", "network_def", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt", "--meta_file",
          "configs/metadata.json", "--config_file", "configs/inference.json", "--use_trace", "True", "--converter_kwargs",
          "{'check_trace': False}"]


def run_isolated(python: Path | str, module: str, args: list[str], cwd: Path, tmp: Path, overrides: dict | None = None,
                 timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m module args --key value ...`` in ``cwd`` with the repository's mcdrl unimportable."""
    launcher = tmp / "isolated.py"
    launcher.write_text(ISOLATED)
    cmd = [str(python), "-I", str(launcher), module, *args]
    for k, v in (overrides or {}).items():
        cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_ran_from_the_bundle(proc: subprocess.CompletedProcess, bundle: Path) -> str:
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "ISOLATED: mcdrl not importable" in log
    assert f"ISOLATED: mcdrl loaded from {bundle / 'scripts' / 'mcdrl' / '__init__.py'}" in log, log[-3000:]
    return log


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    return package_bundle(tmp_path_factory.mktemp("dist"))


# ----------------------------------------------------------------------------------------------------- the folder
def test_package_holds_the_bundle_and_a_byte_identical_copy_of_the_package(packaged):
    for rel in ("LICENSE", "large_files.yml", "configs/metadata.json", "configs/inference.json", "configs/train.json",
                "configs/evaluate.json", "configs/multi_gpu_train.json", "configs/logging.conf", "models/model.pt",
                "docs/README.md", "docs/CHANGELOG.md", "docs/data_license.txt", "scripts/__init__.py", "scripts/mcdrl/__init__.py"):
        assert (packaged / rel).is_file(), rel
    assert sorted(p.name for p in (packaged / "models").glob("*.pt")) == ["model.pt"]
    assert not [p for p in packaged.rglob("*") if p.name in ("runs", "eval", "__pycache__", "previous") or p.suffix in (".pyc", ".ts", ".onnx")]
    source = REPO / "custom" / "mcdrl"
    copied = sorted(p.relative_to(packaged / "scripts" / "mcdrl") for p in (packaged / "scripts" / "mcdrl").rglob("*.py"))
    assert copied == sorted(p.relative_to(source) for p in source.rglob("*.py") if "__pycache__" not in p.parts)
    assert all((packaged / "scripts" / "mcdrl" / rel).read_bytes() == (source / rel).read_bytes() for rel in copied)
    import yaml

    for entry in yaml.safe_load((packaged / "large_files.yml").read_text())["large_files"]:
        assert sha256(packaged / entry["path"]) == entry["hash_val"], entry["path"]


def test_zip_is_the_folder_and_reproducible(packaged, tmp_path):
    zip_path = packaged.parent / f"{BUNDLE_NAME}.zip"
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(zf.namelist())
        assert zf.read(f"{BUNDLE_NAME}/configs/train.json") == (packaged / "configs" / "train.json").read_bytes()
    assert names == sorted(f"{BUNDLE_NAME}/{p.relative_to(packaged).as_posix()}" for p in packaged.rglob("*") if p.is_file())
    assert zip_path.stat().st_mode & 0o777 == 0o644 and packaged.stat().st_mode & 0o777 == 0o755
    again = package_bundle(tmp_path)
    assert (again.parent / f"{BUNDLE_NAME}.zip").read_bytes() == zip_path.read_bytes()


def test_json_is_formatted_as_the_zoo_pre_commit_writes_it(packaged):
    # pretty-format-json --autofix --no-sort-keys --indent=4: order kept, 4 spaces, ASCII escapes, one final newline
    assert format_json('{"b":1,"a":{"c":[1,2.5e-4,"\u03b1"],"e":{}},"d":[]}') == (
        '{\n    "b": 1,\n    "a": {\n        "c": [\n            1,\n            0.00025,\n            "\\u03b1"\n'
        '        ],\n        "e": {}\n    },\n    "d": []\n}\n')
    assert json_format_errors(packaged) == []
    assert json_format_errors(BUNDLE / "configs") == []  # hand-edited: kept formatted in git too
    (packaged.parent / "bad").mkdir(exist_ok=True)
    (packaged.parent / "bad" / "x.json").write_text('{"a": 1}')  # no final newline, 0 indent issues
    assert json_format_errors(packaged.parent / "bad") == ["x.json"]


def test_packaged_configs_refer_to_nothing_outside_the_bundle(packaged, tmp_path):
    check_self_contained(packaged)
    train = json.loads((packaged / "configs" / "train.json").read_text())
    assert train["imports"].index("$import scripts") < train["imports"].index("$import mcdrl")
    copy = tmp_path / "copy"
    shutil.copytree(packaged / "configs", copy / "configs")
    shutil.copytree(packaged / "models", copy / "models")
    (copy / "scripts" / "mcdrl").mkdir(parents=True)
    (copy / "scripts" / "mcdrl" / "__init__.py").write_text("")
    (copy / "configs" / "train.json").write_text(json.dumps({**train, "dataset_dir": "$@bundle_root + '/../data'"}))
    with pytest.raises(ConfigError, match="train.json: refers outside the bundle"):
        check_self_contained(copy)


def test_metadata_is_what_a_zoo_reviewer_accepts(packaged):
    meta = json.loads((packaged / "configs" / "metadata.json").read_text())
    assert meta["authors"] and "team" not in meta["authors"].lower()
    assert "monailabel" in meta["supported_apps"]
    assert meta["network_data_format"]["outputs"]["pred"]["value_range"] == [0, 1]
    assert all("\n" not in v and len(v) <= 120 for v in meta["changelog"].values()), "one line each; history in docs/CHANGELOG.md"
    history = (packaged / "docs" / "CHANGELOG.md").read_text()
    assert all(f"## {version}" in history for version in meta["changelog"])


#: the model zoo's readme template (docs/readme_template.md and the zoo's bundles), in order
CARD_SECTIONS = ["## **Model Overview**", "## **Data**", "#### **Preprocessing**", "## **Training configuration**", "### **Input**",
                 "### **Output**", "## **Performance**", "## **MONAI Bundle Commands**", "## **Limitations**", "## **Citation Info**",
                 "## **References**", "## **License**"]


def test_model_card_follows_the_zoo_template_and_is_short():
    """The card: the zoo's sections in order, readable in five minutes, nothing about this repository; every missed
    target stated; the evidence it summarises is linked and holds the tables."""
    card = (BUNDLE / "docs" / "README.md").read_text()
    positions = [card.find(section) for section in CARD_SECTIONS]
    assert -1 not in positions and positions == sorted(positions), dict(zip(CARD_SECTIONS, positions))
    assert len(card.encode()) <= 12_000
    for repo_only in ("custom/", "`make", "make test", "tests/", "bundle/", ".venv"):
        assert repo_only not in card, repo_only
    performance = card[card.index("## **Performance**"):card.index("## **MONAI Bundle Commands**")]
    rows = [r for r in performance.splitlines() if r.startswith("| ") and not r.startswith("| measurement")]
    assert len(rows) >= 8 and all(r.rstrip(" |").split("|")[-1].strip().split(":")[-1].strip(" *") in ("met", "missed", "open", "-")
                                  or "**missed**" in r.split("|")[-2] for r in rows), rows  # every target with its verdict
    assert performance.count("**missed**") >= 5 and "TensorRT is not supported" in card
    assert "(results/README.md)" in card
    evidence = (BUNDLE / "docs" / "results" / "README.md").read_text()
    assert "| held-out site F (never trained on, read once) | 160 | **0.363**" in evidence
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert f"{meta['eval_metrics']['mean_dice']:.3f}" in card and f"{meta['eval_metrics']['heldout_site_F_mean_dice']:.3f}" in card


# ------------------------------------------------------------------------------- running without the repository
@pytest.fixture(scope="module")
def trained(packaged, tiny_world, tmp_path_factory):
    """A copy of the packaged folder trained for 1 epoch on the tiny world's images, placed where the packaged
    train.json looks by default (``<bundle>/data/synthetic``), by ``monai.bundle run training`` alone."""
    tmp = tmp_path_factory.mktemp("packaged_run")
    bundle = tmp / BUNDLE_NAME
    shutil.copytree(packaged, bundle)
    shutil.copytree(tiny_world["data"], bundle / "data" / "synthetic")
    shipped = sha256(bundle / "models" / "model.pt")
    overrides = {**TINY_OVERRIDES, "clip_weights": str(tiny_world["weights"]), "dictionary_path": str(tiny_world["dictionary"]),
                 "max_epochs": 1, "batch_size": 2}
    proc = run_isolated(PYTHON, "monai.bundle", ["run", "training", "--config_file", "configs/train.json", "--meta_file",
                                                  "configs/metadata.json", "--logging_file", "configs/logging.conf"], bundle, tmp, overrides)
    log = assert_ran_from_the_bundle(proc, bundle)
    return {"bundle": bundle, "tmp": tmp, "overrides": overrides, "log": log, "shipped_sha": shipped}


def test_packaged_bundle_trains_one_epoch_without_the_repository(trained):
    bundle = trained["bundle"]
    assert sha256(bundle / "models" / "model.pt") != trained["shipped_sha"]
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert isinstance(state, dict) and "dictionary.confounders" in state
    assert (bundle / "runs" / "train").is_dir()


def test_packaged_bundle_evaluates_without_the_repository(trained):
    bundle, out = trained["bundle"], trained["tmp"] / "eval"
    proc = run_isolated(PYTHON, "monai.bundle", ["run", "--config_file", "['configs/train.json','configs/evaluate.json']",
                                                  "--logging_file", "configs/logging.conf", "--output_dir", str(out)],
                        bundle, trained["tmp"], trained["overrides"])
    assert_ran_from_the_bundle(proc, bundle)
    metrics = dict(line.split(",") for line in (out / "metrics.csv").read_text().splitlines())
    assert 0.0 <= float(metrics["val_mean_dice"]) <= 1.0


def test_packaged_bundle_infers_a_folder_without_the_repository(trained):
    bundle, out = trained["bundle"], trained["tmp"] / "masks"
    overrides = {k: v for k, v in trained["overrides"].items() if k not in ("max_epochs", "batch_size")}
    proc = run_isolated(PYTHON, "monai.bundle", ["run", "--config_file", "configs/inference.json", "--logging_file", "configs/logging.conf",
                                                  "--dataset_dir", "data/synthetic/images", "--output_dir", str(out)],
                        bundle, trained["tmp"], overrides)
    assert_ran_from_the_bundle(proc, bundle)
    summary = json.loads((out / "summary.json").read_text())
    cases = summary["cases"] if isinstance(summary, dict) else summary
    assert len(cases) == len(list((bundle / "data" / "synthetic" / "images").glob("*.png")))
    assert all(c["status"] == "ok" for c in cases), cases


def test_packaged_bundle_exports_torchscript_by_the_documented_command(trained):
    """The model card's export command (tracing; open_clip's blocks do not script) works on the packaged folder, and the
    TorchScript module computes what the eager network does."""
    bundle = trained["bundle"]
    card = (bundle / "docs" / "README.md").read_text()
    assert "python -m monai.bundle " + " ".join(EXPORT[:-1]) + ' "' + EXPORT[-1] + '"' in card
    overrides = {k: v for k, v in trained["overrides"].items() if k not in ("max_epochs", "batch_size", "num_workers")}
    proc = run_isolated(PYTHON, "monai.bundle", [*EXPORT, "--input_shape", "[1,3,64,64]"], bundle, trained["tmp"], overrides)
    assert_ran_from_the_bundle(proc, bundle)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({**overrides, "bundle_root": str(bundle)})
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True), strict=True)
    ts = torch.jit.load(str(bundle / "models" / "model.ts"))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ts(x), net(x), atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------------------------------------------- MONAI Label
ML_INFER = r"""
import json, sys
from monailabel.tasks.infer.bundle import BundleInferTask
bundle, image, out = sys.argv[1:4]
task = BundleInferTask(bundle, {"preload": "false"})
assert task.is_valid(), "BundleInferTask found the bundle invalid"
label, meta = task({"image": image, "device": "cpu", "result_extension": ".png"})
import shutil; shutil.copy(label, out)
print("ML_INFER", json.dumps({"labels": task.labels, "dimension": task.dimension, "type": str(task.type)}))
"""


@pytest.mark.slow
def test_monailabel_bundle_infer_task_runs_the_unpacked_zip_without_the_repository(packaged, tiny_world, tmp_path):
    """MONAI Label's BundleInferTask on the folder unpacked from the zip, as shipped (demo CLIP, model.pt), in the MONAI
    Label venv with the repository's mcdrl unimportable; the mask equals the packaged bundle's own inference."""
    from PIL import Image

    from test_monailabel import ml_setup

    venv = Path(os.environ.get("MONAILABEL_VENV", ml_setup.DEFAULT_VENV))
    if not ml_setup.env_ready(venv):
        pytest.skip(f"MONAI Label venv not built at {venv} (tests/test_monailabel.py builds it)")
    with zipfile.ZipFile(packaged.parent / f"{BUNDLE_NAME}.zip") as zf:
        zf.extractall(tmp_path / "unzipped")
    bundle = tmp_path / "unzipped" / BUNDLE_NAME
    image = tmp_path / "frame.png"
    h, w = 72, 96  # non-square: a transposed mask cannot pass
    rgb = np.asarray(Image.open(tiny_world["data"] / "images" / "case00.png").convert("RGB").resize((w, h)))
    Image.fromarray(rgb).save(image)
    script = tmp_path / "ml_infer.py"
    script.write_text(ML_INFER)
    proc = run_isolated(ml_setup.venv_python(venv), "ml_infer", [str(bundle), str(image), str(tmp_path / "ml_mask.png")], tmp_path,
                        tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "ISOLATED: mcdrl not importable" in log
    assert f"ISOLATED: mcdrl loaded from {bundle / 'scripts' / 'mcdrl' / '__init__.py'}" in log, log[-3000:]
    info = json.loads(log.split("ML_INFER ", 1)[1].splitlines()[0])
    assert info["labels"] == {"lesion": 1} and info["dimension"] == 2
    ml_mask = np.asarray(Image.open(tmp_path / "ml_mask.png"))
    proc = run_isolated(PYTHON, "monai.bundle", ["run", "--config_file", "configs/inference.json", "--dataset_dir", str(image),
                                                  "--output_dir", str(tmp_path / "bundle_out")], bundle, tmp_path)
    assert_ran_from_the_bundle(proc, bundle)
    bundle_mask = np.asarray(Image.open(next((tmp_path / "bundle_out").glob("*mask*.png"))))
    assert ml_mask.shape == bundle_mask.shape == (h, w)
    np.testing.assert_array_equal(ml_mask > 0, bundle_mask > 0)
