"""The side-by-side command (shipped model vs a UNet trained for the same wall time), the robustness report, and the
portability of everything under bundle/docs/results/."""

from __future__ import annotations

import json
import os
import re
import subprocess

import numpy as np
import pytest
from conftest import PYTHON, REPO, TINY_OVERRIDES, bundle_cli, tiny_train_overrides

from mcdrl.evaluation.compare import BUDGET_TOLERANCE

CONFIGS = REPO / "bundle" / "configs"
SETS = [f"--set={k}={json.dumps(v)}" for k, v in TINY_OVERRIDES.items()]


@pytest.fixture(scope="module")
def tiny_bundle(tiny_world, tmp_path_factory):
    """A bundle root with a tiny MCDRL model trained by the bundle CLI (its models/model.pt)."""
    root = tmp_path_factory.mktemp("bundle")
    proc = bundle_cli(["run", "training", "--config_file", str(CONFIGS / "train.json")], root, tiny_train_overrides(tiny_world, root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    sets = SETS + [f"--set=clip_weights={json.dumps(str(tiny_world['weights']))}", f"--set=dictionary_path={json.dumps(str(tiny_world['dictionary']))}"]
    return {"root": root, "sets": sets, "world": tiny_world}


def _run(module: str, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", module, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_compare_trains_a_unet_for_the_budget_and_scores_both(tiny_bundle, tmp_path):
    """The budget reaches the UNet's training: a budget shorter than any epoch stops it after its first, on any machine
    (the budget logic itself is tested on a clock the test sets: test_engines.py)."""
    data = tiny_bundle["world"]["datalist"]
    args = ["--bundle_root", str(tiny_bundle["root"]), "--budget_s", "0.001", "--datalist", str(data), "--heldout", str(data),
            "--heldout_split", "training", "--work_dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *tiny_bundle["sets"],
            "--unet_epochs", "50", "--batch_size", "2", "--new_site_frames", "4"]
    proc = _run("mcdrl.evaluation.compare", args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "compare.json").read_text())
    unet = doc["unet_training"]
    assert unet["stopped_by_budget"] and unet["epochs"] == unet["last_epoch"] == 1
    assert unet["budget_s"] == pytest.approx(0.001 * BUDGET_TOLERANCE)  # stopped only past the budget x the tolerance
    for model in ("shipped MCDRL", "MONAI UNet (same wall time)"):
        val, held = doc["results"][model]["validation (source sites)"], doc["results"][model]["held-out site"]
        assert val["n"] == 2 and held["n"] == 6 and 0 <= val["dice"] <= 1 and 0 <= held["dice"] <= 1
        assert held["lesion_images"] + held["lesion_free_images"] == 6
        new_site = doc["results"][model]["new site G"]  # the robustness report's site, at the held-out frames' size
        assert new_site["n"] == 4 and held["small_lesion_images"] <= held["lesion_images"]
    assert doc["budget_source"] == "--budget_s"
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| shipped MCDRL | held-out site | 6 |" in md and str(tmp_path) not in md + json.dumps(doc)
    # stopped after 1 of its 50 epochs: its cosine never annealed, and the report says the row is not a fair one
    assert "after 1 of its 50 epochs" in doc["unet_not_fair"] and f"**Not a fair row:** {doc['unet_not_fair']}" in md
    assert "WARNING: the time budget stopped the UNet" in proc.stderr


def test_the_published_unet_row_ran_its_whole_schedule():
    """The shipped compare report's UNet was not stopped by its budget before its schedule's end (an unannealed UNet
    is a weaker baseline than the equal wall time gives); unet_cut_short says why a record would not be fair."""
    from mcdrl.evaluation.compare import unet_cut_short

    assert unet_cut_short({"epochs": 10, "max_epochs": 11, "stopped_by_budget": True}).startswith("the time budget stopped")
    assert unet_cut_short({"epochs": 11, "max_epochs": 11, "stopped_by_budget": False}) is None
    doc = json.loads((REPO / "bundle" / "docs" / "results" / "compare.json").read_text())
    assert doc["unet_training"] and unet_cut_short(doc["unet_training"]) is None and not doc.get("unet_not_fair")


def test_compare_oracle_rows_train_on_the_held_out_site_and_give_the_dg_efficiency(tiny_bundle, tmp_path):
    """Issue 23: --oracle trains the shipped configuration and the UNet on the held-out site's own frames (here: the
    tiny world's training split, scoring its validation split) and reports Dice(held-out) / Dice(oracle); an oracle
    datalist that shares images with the scored split is refused before anything trains."""
    from mcdrl.evaluation.compare import dg_efficiency

    assert dg_efficiency(0.4, 0.5) == 0.8 and dg_efficiency(0.3, 0.0) is None
    data = tiny_bundle["world"]["datalist"]
    args = ["--bundle_root", str(tiny_bundle["root"]), "--budget_s", "0.001", "--datalist", str(data), "--heldout", str(data),
            "--work_dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *tiny_bundle["sets"], "--unet_epochs", "1",
            "--batch_size", "2", "--new_site_frames", "0"]
    bad = _run("mcdrl.evaluation.compare", [*args, "--heldout_split", "training", "--oracle", str(data)])
    assert bad.returncode != 0 and "shares images with the scored held-out split" in bad.stderr + bad.stdout
    assert not (tmp_path / "work").exists()  # refused before training
    proc = _run("mcdrl.evaluation.compare", [*args, "--heldout_split", "validation", "--oracle", str(data)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "compare.json").read_text())
    for model in ("shipped MCDRL", "MONAI UNet (same wall time)"):
        oracle = doc["results"][f"oracle {'MCDRL' if 'MCDRL' in model else 'UNet'} (trained on the held-out site)"]["held-out site"]
        assert oracle["n"] == 2 and (tmp_path / "work" / ("oracle_mcdrl" if "MCDRL" in model else "oracle_unet") / "models" / "model.pt").is_file()
        assert doc["dg_efficiency"][model] == dg_efficiency(doc["results"][model]["held-out site"]["dice"], oracle["dice"])
    # each oracle takes as many steps as the model it bounds: here as many training frames, so the same epochs
    assert doc["oracle_training"]["MONAI UNet (same wall time)"]["steps_matched_epochs"] == 1
    assert "DG efficiency" in (tmp_path / "out" / "compare.md").read_text()
    # re-scoring (--skip_training) reuses both oracles and still reports how long each trained
    again = _run("mcdrl.evaluation.compare", [*args, "--heldout_split", "validation", "--oracle", str(data), "--skip_training"])
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    reused = json.loads((tmp_path / "out" / "compare.json").read_text())["oracle_training"]
    for model, rec in doc["oracle_training"].items():
        assert reused[model]["reused"] == "--skip_training"
        assert (reused[model]["epochs"], reused[model]["seconds"], reused[model]["steps_matched_epochs"]) == \
            (rec["epochs"], rec["seconds"], rec["steps_matched_epochs"])
    epochs = [doc["oracle_training"][m]["epochs"] for m in ("shipped MCDRL", "MONAI UNet (same wall time)")]
    report = (tmp_path / "out" / "compare.md").read_text()
    assert f"oracle MCDRL {epochs[0]} epochs; oracle UNet {epochs[1]} epochs." in report
    assert "Not a steps-matched ceiling" not in report and not any("not_steps_matched" in rec for rec in reused.values())


def test_a_reused_oracle_whose_epochs_no_longer_match_the_steps_is_flagged():
    """A reused oracle that trained other epochs than the model it bounds now needs is not its ceiling: the report
    says so and names the fix, as it does for a UNet that its budget no longer fits."""
    from mcdrl.evaluation.compare import oracle_not_steps_matched

    assert oracle_not_steps_matched("oracle UNet", {"epochs": 65, "steps_matched_epochs": 65}) is None
    assert oracle_not_steps_matched("oracle UNet", {"epochs": 65}) is None  # nothing to compare against
    why = oracle_not_steps_matched("oracle MCDRL", {"epochs": 30, "steps_matched_epochs": 25, "reused": "--skip_training"})
    assert why.startswith("the oracle MCDRL trained 30 epoch(s)") and "25 epoch(s)" in why and "retrain it" in why


def test_compare_gives_the_unet_as_many_epochs_as_fit_the_budget(tiny_bundle, tmp_path):
    """Without --unet_epochs a timed 1-epoch run sets the UNet's schedule length, so its cosine ends within the budget."""
    from mcdrl.evaluation.compare import unet_epochs_for

    assert unet_epochs_for(100, 30) == 3 and unet_epochs_for(10, 30) == 1
    data = tiny_bundle["world"]["datalist"]
    args = ["--bundle_root", str(tiny_bundle["root"]), "--budget_s", "20", "--datalist", str(data), "--heldout", str(data),
            "--work_dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *tiny_bundle["sets"], "--batch_size", "2",
            "--new_site_frames", "0"]
    proc = _run("mcdrl.evaluation.compare", args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    unet = json.loads((tmp_path / "out" / "compare.json").read_text())["unet_training"]
    assert (tmp_path / "work" / "timing" / "run" / "training_time.json").is_file()
    assert unet["max_epochs"] == unet_epochs_for(20, unet["timed_epoch_s"]) and unet["epochs"] <= unet["max_epochs"]
    assert "epoch(s) fit the 20 s budget" in proc.stdout
    bad = _run("mcdrl.evaluation.compare", [*args, "--max_epochs", "3"])
    assert bad.returncode != 0 and "--unet_epochs" in bad.stderr
    # --skip_training re-scores that UNet run; the report says it was reused and whether its epochs fit the new budget
    for budget, verdict in (("20", "is the run this budget gives"), ("100000", "retrain it")):
        again = _run("mcdrl.evaluation.compare", [*args, "--budget_s", budget, "--skip_training"])  # the later --budget_s wins
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
        reused = json.loads((tmp_path / "out" / "compare.json").read_text())["unet_training"]
        assert reused["seconds"] == unet["seconds"] and reused["max_epochs"] == unet["max_epochs"]
        assert "reused (--skip_training)" in reused["reused"] and verdict in (tmp_path / "out" / "compare.md").read_text()


def test_small_lesion_sensitivity_counts_only_lesions_under_one_percent_of_the_frame():
    from mcdrl.evaluation.scoring import SMALL_LESION_FRACTION, summarise

    def rec(fraction, detected):
        return {"dice": 0.5, "iou": 0.4, "lesion": True, "lesion_class": "polyp", "detected": detected, "lesion_fraction": fraction}

    recs = [rec(0.004, True), rec(0.009, False), rec(0.009, False), rec(SMALL_LESION_FRACTION, False), rec(0.2, True),
            {"dice": 1.0, "iou": 1.0, "lesion": False, "false_alarm": False}]
    s = summarise(recs)
    assert (s["small_lesion_images"], s["sensitivity_small"], s["sensitivity"]) == (3, round(1 / 3, 4), 0.4)
    assert summarise([rec(0.2, True)])["sensitivity_small"] is None


def test_compare_can_time_the_shipped_recipe_here_for_the_budget(tiny_bundle, tmp_path):
    """--time_shipped_epoch: the UNet's budget is one epoch of train.json timed on this machine x the shipped run's
    epochs (from its record), and the report says so; a record without epochs is refused before anything trains."""
    data = tiny_bundle["world"]["datalist"]
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "models" / "model.pt").symlink_to(tiny_bundle["root"] / "models" / "model.pt")
    record = bundle / "docs" / "results" / "demo_model.json"
    record.parent.mkdir(parents=True)
    args = ["--bundle_root", str(bundle), "--time_shipped_epoch", "--datalist", str(data), "--heldout", str(data),
            "--work_dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *tiny_bundle["sets"], "--unet_epochs", "1",
            "--batch_size", "2", "--new_site_frames", "0"]
    record.write_text(json.dumps({"training": {"seconds": 99999.0}}))
    bad = _run("mcdrl.evaluation.compare", args)
    assert bad.returncode != 0 and "has no training.epochs" in bad.stderr + bad.stdout and not (tmp_path / "work").exists()
    record.write_text(json.dumps({"training": {"seconds": 99999.0, "epochs": 3}}))
    proc = _run("mcdrl.evaluation.compare", args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "compare.json").read_text())
    timed = json.loads((tmp_path / "work" / "shipped_timing" / "run" / "training_time.json").read_text())
    assert timed["epochs"] == 1 and doc["budget_s"] == round(timed["seconds"] * 3, 1)
    assert doc["unet_training"]["budget_s"] == pytest.approx(doc["budget_s"] * BUDGET_TOLERANCE)
    assert "timed now on this machine" in doc["budget_source"] and "the logged time was 99999 s" in doc["budget_source"]
    assert doc["budget_source"] in (tmp_path / "out" / "compare.md").read_text()


def test_robustness_report_scores_every_shift_and_a_new_site(tiny_bundle, tmp_path):
    from mcdrl.evaluation.robustness import NEW_SITE, SHIFTS, new_site_images
    from mcdrl.synthetic import SITES

    assert NEW_SITE.name not in SITES  # a site no file of the world defines
    img = new_site_images(1, size=64)[0]["image"]
    for name, (_, fn) in SHIFTS.items():
        out = fn(img)
        assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img), name
    args = ["--bundle_root", str(tiny_bundle["root"]), "--datalist", str(tiny_bundle["world"]["datalist"]), "--n_site", "4",
            "--out", str(tmp_path), *tiny_bundle["sets"]]
    proc = _run("mcdrl.evaluation.robustness", args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "robustness.json").read_text())
    assert set(doc["shifts"]) == set(SHIFTS) and doc["new_site"]["n"] == 4 and doc["clean_in_domain"]["n"] == 2
    for r in doc["shifts"].values():
        assert r["ratio_to_clean"] == pytest.approx(r["dice"] / doc["clean_in_domain"]["dice"], abs=1e-3)
    assert "Worst shift" in (tmp_path / "robustness.md").read_text()


ABSOLUTE = re.compile(r"(?<![\w.])(/(?:work|home|tmp|root|Users|mnt|opt|var)/[^\s\"'`),]+|[A-Za-z]:\\\\[^\s\"']+)")


def test_results_name_files_relative_to_the_repository():
    """Reports under bundle/docs/results/ are portable: no absolute path of the machine they ran on."""
    offenders = []
    for path in sorted((REPO / "bundle" / "docs" / "results").rglob("*")):
        if path.suffix in (".json", ".md", ".csv", ".txt") and path.is_file():
            for m in ABSOLUTE.finditer(path.read_text(errors="replace")):
                offenders.append(f"{path.relative_to(REPO)}: {m.group(0)[:80]}")
    assert not offenders, "\n".join(offenders[:20])
    assert ABSOLUTE.search('"clip_weights": "/work/main/bundle/models/x"') and not ABSOLUTE.search("bundle/models/x and 1/2 of it")
