"""The bundle through MONAI's own tools: ConfigWorkflow properties, the CLI from a foreign cwd, verify_* commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import BUNDLE, INTERVENTION_ON, TINY_OVERRIDES, bundle_cli, tiny_train_overrides

CONFIGS = BUNDLE / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")


@pytest.fixture(scope="module")
def trained_bundle(tiny_world, tmp_path_factory):
    """A bundle_root with models/model.pt from a real 3-epoch CLI training run, started from a foreign cwd."""
    root = tmp_path_factory.mktemp("bundle_root")
    cwd = tmp_path_factory.mktemp("elsewhere")
    overrides = tiny_train_overrides(tiny_world, root, max_epochs=3, causal_start_epoch=2, **INTERVENTION_ON)
    proc = bundle_cli(["run", "training", "--config_file", str(CONFIGS / "train.json"), "--meta_file", META, "--logging_file", LOGGING], cwd, overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "log": proc.stdout + proc.stderr, "cwd": cwd}


def test_training_cli_from_foreign_cwd_saves_bare_state_dict(trained_bundle, tiny_world):
    model_pt = trained_bundle["root"] / "models" / "model.pt"
    state = torch.load(model_pt, weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert any(k.startswith("intervention.layers.0.") for k in state) and "dictionary.confounders" in state


def test_intervention_switches_on_at_configured_epoch_and_terms_are_logged(trained_bundle):
    log = trained_bundle["log"]
    assert "epoch 1: causal intervention OFF" in log
    assert "epoch 3: causal intervention ON" in log and "epoch 2: causal intervention" not in log
    records = [json.loads(line) for line in (trained_bundle["root"] / "runs" / "train" / "loss_terms.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["intervention"] for r in records] == [False, False, True]
    assert "loss_causal" not in records[1] and records[2]["loss_causal"] > 0
    assert all(r["loss_seg"] > 0 and "loss_contrast" in r for r in records)



def test_model_selection_restarts_when_the_intervention_comes_on(trained_bundle):
    """select_after_causal_start: model.pt is an epoch with the intervention on (epoch 3 of 3 here), even when an
    earlier epoch validated better. The zero-initialised intervention output stays exactly zero until the blocks
    train, so non-zero out_proj weights in model.pt prove it comes from epoch 3."""
    assert "model selection restarts now that the intervention is on" in trained_bundle["log"]
    state = torch.load(trained_bundle["root"] / "models" / "model.pt", weights_only=True)
    assert state["intervention.layers.0.out_proj.weight"].abs().sum() > 0

def test_evaluate_cli_writes_per_image_metrics_csv(trained_bundle, tiny_world):
    out = trained_bundle["root"] / "eval"
    overrides = tiny_train_overrides(tiny_world, trained_bundle["root"])
    cfg = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']"
    proc = bundle_cli(["run", "--config_file", cfg, "--meta_file", META, "--logging_file", LOGGING], trained_bundle["cwd"], overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("val_mean_dice", "val_mean_iou", "val_pixel_accuracy"):
        rows = (out / f"{name}_raw.csv").read_text().strip().splitlines()
        assert rows[0].startswith("filename") and len(rows) == 1 + 2  # one row per validation image
        values = [float(r.split(",")[-1]) for r in rows[1:]]
        assert all(0.0 <= v <= 1.0 for v in values)
    summary = dict(line.split(",") for line in (out / "metrics.csv").read_text().splitlines())
    assert set(summary) == {"val_mean_dice", "val_mean_iou", "val_pixel_accuracy"}


def test_evaluate_applies_the_stored_presence_decision(trained_bundle, tiny_world, tmp_path):
    """evaluate.json scores what inference returns: the forward with the presence decision and the threshold stored in
    model.pt (not the training validator's ungated logits, from which it chooses that threshold). On lesion-free
    frames, a threshold above every lesion score empties every mask (Dice 1); threshold 0 leaves the model's own masks."""
    import numpy as np
    from PIL import Image

    world = json.loads(Path(tiny_world["datalist"]).read_text())
    data = tmp_path / "data"
    (data / "empty").mkdir(parents=True)
    entries = []
    for i, e in enumerate(world["training"] + world["validation"]):
        image = Path(tiny_world["data"]) / e["image"]
        h, w = np.asarray(Image.open(image)).shape[:2]
        Image.fromarray(np.zeros((h, w), np.uint8)).save(data / "empty" / f"{i}.png")
        entries.append({**e, "image": str(image), "label": f"empty/{i}.png", "lesion_class": "none"})
    (data / "datalist.json").write_text(json.dumps({"training": entries, "validation": entries}))
    state = torch.load(trained_bundle["root"] / "models" / "model.pt", weights_only=True)
    cfg = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']"

    def dice_with_threshold(t: float) -> list[float]:
        root = tmp_path / f"t{t}"
        (root / "models").mkdir(parents=True)
        torch.save({**state, "presence_threshold": torch.tensor(t)}, root / "models" / "model.pt")
        overrides = {**tiny_train_overrides(tiny_world, root), "dataset_dir": str(data), "min_lesion_fraction": 0.0}
        proc = bundle_cli(["run", "--config_file", cfg, "--meta_file", META, "--logging_file", LOGGING], trained_bundle["cwd"], overrides)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = (root / "eval" / "val_mean_dice_raw.csv").read_text().strip().splitlines()[1:]
        return [float(r.split(",")[-1]) for r in rows]

    ungated = dice_with_threshold(0.0)
    assert len(ungated) == len(entries) and min(ungated) < 1.0, "the control must predict a lesion somewhere"
    assert dice_with_threshold(2.0) == [1.0] * len(entries)


def test_inference_cli_writes_masks_matching_evaluator(trained_bundle, tiny_world, tmp_path):
    import numpy as np
    from PIL import Image

    overrides = {**TINY_OVERRIDES, "bundle_root": str(trained_bundle["root"]), "dictionary_path": str(tiny_world["dictionary"]),
                 "dataset_dir": str(tiny_world["data"] / "images"), "output_dir": str(tmp_path / "out")}
    proc = bundle_cli(["run", "--config_file", str(CONFIGS / "inference.json"), "--meta_file", META, "--logging_file", LOGGING], trained_bundle["cwd"], overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = sorted((tmp_path / "out").rglob("*.png"))
    assert len(masks) == 8
    # orientation and values: the mask of a validation case gives the Dice that the evaluator reported
    raw = (trained_bundle["root"] / "eval" / "val_mean_dice_raw.csv")
    if raw.exists():
        dice_eval = {Path(r.split(",")[0]).stem: float(r.split(",")[-1]) for r in raw.read_text().splitlines()[1:]}
        for stem, d_eval in dice_eval.items():
            pred = np.array(Image.open(next(m for m in masks if m.name.startswith(stem)))) > 0
            gt = np.array(Image.open(tiny_world["data"] / "labels" / f"{stem}.png")) > 0
            dice = 2 * (pred & gt).sum() / max(pred.sum() + gt.sum(), 1) if gt.any() or pred.any() else 1.0
            assert dice == pytest.approx(d_eval, abs=1e-4)


def _workflow(files, overrides, workflow_type):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=[str(CONFIGS / f) for f in files], meta_file=META, logging_file=LOGGING, workflow_type=workflow_type, **overrides)
    wf.initialize()
    return wf


@pytest.mark.parametrize("files,wtype", [(["train.json"], "train"), (["train.json", "evaluate.json"], "infer"), (["inference.json"], "infer")])
def test_config_workflow_properties_are_complete(files, wtype, tiny_world, tmp_path):
    overrides = {**TINY_OVERRIDES, "bundle_root": str(tmp_path), "dataset_dir": str(tiny_world["data"]), "clip_weights": str(tiny_world["weights"]), "dictionary_path": str(tiny_world["dictionary"])}
    if files == ["inference.json"]:
        overrides.update(dataset_dir=str(tiny_world["data"] / "images"), clip_weights=None)
    wf = _workflow(files, overrides, wtype)
    assert wf.check_properties() == []


def test_network_def_and_knobs_agree_between_train_and_inference():
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    assert train["network_def"] == infer["network_def"]
    for key in ("clip_model", "readout", "lesion_classes", "num_confounders", "alpha", "mtrs_scoring", "use_intervention",
                "intervention_layers", "intervention_heads", "decoder_channels", "decoder_skip_channels", "deconfounding",
                "presence_decision", "tau", "image_size", "embed_dim", "dictionary_path", "intervention_residual", "head_input",
                "head_resolution", "decoder_skip_block", "decoder_classifier", "decoder_query_hidden", "decoder_query_stride"):
        assert train[key] == infer[key], key
    assert infer["clip_weights"] is None  # inference takes every weight from model.pt, never from CLIP files
    shared = lambda pre: [t for t in pre["transforms"] if t["_target_"] in ("mcdrl.transforms.ToModelInputd", "EnsureChannelFirstd")]
    assert [t["_target_"] for t in shared(infer["preprocessing"])] == [t["_target_"] for t in shared(train["validate"]["preprocessing"])]


def test_verify_net_in_out(tiny_world, tmp_path):
    overrides = {**TINY_OVERRIDES, "bundle_root": str(tmp_path), "dictionary_path": str(tiny_world["dictionary"])}
    meta = json.loads(Path(META).read_text())
    for k in ("inputs", "outputs"):
        for spec in meta["network_data_format"][k].values():
            spec["spatial_shape"] = [64, 64]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    proc = bundle_cli(["verify_net_in_out", "network_def", "--meta_file", str(tmp_path / "metadata.json"), "--config_file", str(CONFIGS / "inference.json")], tmp_path, overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_verify_metadata_against_shipped_schema(tmp_path):
    proc = bundle_cli(["verify_metadata", "--meta_file", META, "--filepath", str(CONFIGS / "metadata_schema.json")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    meta = json.loads(Path(META).read_text())
    del meta["authors"]
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    proc = bundle_cli(["verify_metadata", "--meta_file", str(tmp_path / "bad.json"), "--filepath", str(CONFIGS / "metadata_schema.json")], tmp_path)
    assert proc.returncode != 0
    assert "'authors' is a required property" in proc.stdout + proc.stderr


def test_metadata_versions_match_this_environment():
    import monai
    import numpy

    meta = json.loads(Path(META).read_text())
    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == numpy.__version__
    assert meta["version"] in meta["changelog"] and list(meta["changelog"])[0] == meta["version"]
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "lesion"}


def test_metadata_package_versions_are_the_requirements_pins():
    """required_packages_version names what requirements.txt pins, at the pinned and installed version."""
    import re
    from importlib import metadata

    import mcdrl

    meta = json.loads(Path(META).read_text())
    repo = Path(META).resolve().parents[2]
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", (repo / "requirements.txt").read_text(), re.M))
    for name, version in meta["required_packages_version"].items():
        assert pins.get(name) == version, f"metadata.json says {name} {version}, requirements.txt pins {pins.get(name)}"
        assert metadata.version(name) == version, f"{name}: installed {metadata.version(name)}, metadata.json {version}"
    assert mcdrl.__version__ == meta["version"]


def test_metadata_eval_metrics_are_the_shipped_models_measured_dice():
    """eval_metrics restates results/demo_model.json (what make demo-results measured), to 4 decimals."""
    meta = json.loads(Path(META).read_text())
    record = json.loads((BUNDLE / "docs" / "results" / "demo_model.json").read_text())
    assert meta["eval_metrics"] == {"mean_dice": round(float(record["train_sites"]["val_mean_dice"]), 4),
                                    "heldout_site_F_mean_dice": round(float(record["heldout_F"]["val_mean_dice"]), 4)}


# ---- bad input: one clear line naming the thing and the fix ----------------------------------------------------
@pytest.mark.parametrize(
    "extra,expected",
    [
        ({"clip_weights": "/no/such/weights.bin"}, "CLIP weights file not found: /no/such/weights.bin"),
        ({"clip_model": "ViT-Q-99"}, "Unknown CLIP model name 'ViT-Q-99'"),
        ({"num_confounders": 15}, "has 12 confounders, but the network expects num_confounders=15"),
    ],
)
def test_bad_config_is_one_clear_error(tiny_world, tmp_path, extra, expected):
    overrides = tiny_train_overrides(tiny_world, tmp_path, **extra)
    proc = bundle_cli(["run", "training", "--config_file", str(CONFIGS / "train.json")], tmp_path, overrides)
    assert proc.returncode == 2
    assert "mcdrl: error: " in proc.stderr and expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "models" / "model.pt").exists()


def test_datalist_entry_with_missing_image_is_one_clear_error(tiny_world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_world["data"], data)
    (data / "images" / "case03.png").unlink()
    overrides = tiny_train_overrides(tiny_world, tmp_path, dataset_dir=str(data))
    proc = bundle_cli(["run", "training", "--config_file", str(CONFIGS / "train.json")], tmp_path, overrides)
    assert proc.returncode == 2
    assert "training[3]: image file not found:" in proc.stderr and "case03.png" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_weights_that_do_not_fit_the_config_are_one_line(tmp_path):
    """--intervention_layers 2 against the shipped model.pt (3 layers) at inference: one line naming the key, both values
    and the file, no traceback (load_state_dict alone printed 69 lines)."""
    (tmp_path / "in").mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (150, 60, 50)).save(tmp_path / "in" / "frame.png")
    proc = bundle_cli(["run", "--config_file", str(CONFIGS / "inference.json"), "--dataset_dir", str(tmp_path / "in"),
                       "--output_dir", str(tmp_path / "out")], tmp_path, {"intervention_layers": 2})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mcdrl: error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert f"{BUNDLE / 'models' / 'model.pt'}: the weights do not fit the config: intervention_layers is 2 in the config, 3 in the weights" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out" / "frame_mask.png").exists()


def test_a_none_override_is_reported_and_dollar_none_sets_it(tmp_path):
    """MONAI's bundle CLI drops --key None (the config's value stays, silently); importing mcdrl there says so, and
    --key '$None' (the README's way) does set None."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"imports": ["$import mcdrl"], "clip_weights": "demo.safetensors", "run": ["$print('clip_weights =', @clip_weights)"]}))
    dropped = bundle_cli(["run", "--config_file", str(config)], tmp_path, {"clip_weights": "None"})
    assert dropped.returncode == 0 and "clip_weights = demo.safetensors" in dropped.stdout, dropped.stderr[-2000:]
    assert "mcdrl: warning: --clip_weights None is dropped by MONAI's bundle CLI" in dropped.stderr
    assert "pass --clip_weights '$None'" in dropped.stderr
    given = bundle_cli(["run", "--config_file", str(config)], tmp_path, {"clip_weights": "$None"})
    assert given.returncode == 0 and "clip_weights = None" in given.stdout and "dropped" not in given.stderr, given.stderr[-2000:]


def test_unet_head_variant_trains_and_infers_through_the_cli(tiny_world, tmp_path):
    """configs/unet_head.json (issue 23's candidate head): one override file on train.json trains through the bundle
    CLI, and the same file on inference.json segments a folder with its model.pt; the shipped head's config against
    those weights is the one-line error that names the head."""
    import numpy as np
    from PIL import Image

    small = {"unet_channels": [4, 8, 8]}
    overrides = tiny_train_overrides(tiny_world, tmp_path / "root", max_epochs=1, **small)
    proc = bundle_cli(["run", "training", "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'unet_head.json'}']",
                       "--meta_file", META, "--logging_file", LOGGING], tmp_path, overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(tmp_path / "root" / "models" / "model.pt", weights_only=True)
    assert "head.bottleneck.conv.unit0.conv.weight" in state and not any(k.startswith("head.stages.") for k in state)
    infer = {**TINY_OVERRIDES, **small, "bundle_root": str(tmp_path / "root"), "dictionary_path": str(tiny_world["dictionary"]),
             "dataset_dir": str(tiny_world["data"] / "images"), "output_dir": str(tmp_path / "out")}
    proc = bundle_cli(["run", "--config_file", f"['{CONFIGS / 'inference.json'}','{CONFIGS / 'unet_head.json'}']", "--meta_file", META,
                       "--logging_file", LOGGING], tmp_path, infer)
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = sorted((tmp_path / "out").rglob("*.png"))
    images = sorted((tiny_world["data"] / "images").glob("*.png"))
    assert len(masks) == len(images) == 8
    for image in images:  # each mask is the frame's own size
        mask = next(m for m in masks if m.name.startswith(image.stem))
        assert np.array(Image.open(mask)).shape[:2] == np.array(Image.open(image)).shape[:2]
    proc = bundle_cli(["run", "--config_file", str(CONFIGS / "inference.json"), "--dataset_dir", str(tiny_world["data"] / "images"),
                       "--output_dir", str(tmp_path / "out2")], tmp_path, {k: v for k, v in infer.items() if k not in ("output_dir", "dataset_dir")})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mcdrl: error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "the head (network_def#head, configs/unet_head.json) is SegmentationHead in the config, UNetHead in the weights" in errors[0]
