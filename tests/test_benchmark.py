"""The LOSO benchmark (python -m mcdrl.evaluation.loso): it trains the bundle's own network, and the smoke profile runs
end to end on the tiny CLIP.

Mechanics only: the scores of a 2-epoch tiny-CLIP run mean nothing, so no test asserts a score level.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PYTHON, REPO, TINY, TINY_OVERRIDES, bundle_cli

from mcdrl.errors import InputFileError
from mcdrl.evaluation.loso.methods import ABLATIONS, ADDITIONS, CAUSAL_OFF, METHODS, ablation_rows, all_methods
from mcdrl.evaluation.loso.profiles import get_profile
from mcdrl.evaluation.loso.run import run_one, run_overrides
from mcdrl.evaluation.loso.runner import prepare, run_id

CONFIGS = REPO / "bundle" / "configs"
#: the tiny CLIP's sizes, for every run of these tests
TINY_SETS = {k: v for k, v in TINY_OVERRIDES.items() if k != "clip_model"}


def test_methods_are_variants_of_the_bundle_configs():
    for m in all_methods().values():
        assert all((CONFIGS / f).is_file() for f in m.files), m
    train = json.loads((CONFIGS / "train.json").read_text())
    for key in CAUSAL_OFF:
        assert key in train or f"@displayable_configs#{key}" in json.dumps(train), key
    assert METHODS["baseline"].files == () and METHODS["baseline"].overrides == CAUSAL_OFF
    assert METHODS["mcdrl"].files == () and METHODS["mcdrl"].overrides == {}
    assert METHODS["paper_mcdrl"].files == ("paper.json",) and METHODS["paper_mcdrl"].overrides == {}
    assert METHODS["paper_baseline"].overrides == {**CAUSAL_OFF, "lambda_contrast": 0.0}
    assert METHODS["unet"].files == ("unet.json",)
    assert all(m.kind == "ablation" and len(m.overrides) <= 2 and not m.files for m in ABLATIONS.values())


def test_a_part_the_shipped_recipe_leaves_off_is_measured_as_an_addition(tmp_path):
    """wo_X where train.json uses part X; with_X (the part switched on) where it does not, so no row duplicates mcdrl."""
    for name in ("train.json", "paper.json", "unet.json"):
        (tmp_path / name).write_text((CONFIGS / name).read_text())
    train = json.loads((CONFIGS / "train.json").read_text())

    def rows_with(**keys):
        (tmp_path / "train.json").write_text(json.dumps({**train, **keys}))
        return ablation_rows(tmp_path)

    def intervention(on: bool) -> dict:
        return {"displayable_configs": {**train["displayable_configs"], "use_intervention": on}, "lambda_causal": 0.5 if on else 0.0}

    assert rows_with(**intervention(True), lambda_counterfactual=0.0, deconfounding="none") == ["wo_mtrs", "wo_cdrl", "with_counterfactual", "with_text"]
    assert rows_with(**intervention(False), lambda_counterfactual=0.5, deconfounding="regions") == ["wo_mtrs", "with_cdrl", "wo_counterfactual", "wo_text"]
    assert rows_with(**intervention(True), lambda_counterfactual=0.5, deconfounding="regions") == ["wo_mtrs", "wo_cdrl", "wo_counterfactual", "wo_text"]
    assert set(ADDITIONS) == {"with_cdrl", "with_counterfactual", "with_text"} and all(m.overrides for m in ADDITIONS.values())
    # the shipped configuration uses no causal part: each is measured as an addition
    assert ablation_rows(CONFIGS) == ["wo_mtrs", "with_cdrl", "with_counterfactual", "with_text"]


def test_a_run_is_identified_by_the_configuration_it_trains(tmp_path):
    """Rows that train the same configuration share runs, whichever files or overrides set it; a config edit changes
    the ids of exactly the runs whose configuration it changes; the metadata is not part of any run."""
    for name in ("train.json", "paper.json", "unet.json", "metadata.json"):
        (tmp_path / name).write_text((CONFIGS / name).read_text())
    train = json.loads((CONFIGS / "train.json").read_text())
    methods = all_methods()

    def ids(configs) -> dict:
        return {n: run_id(m, "C", 1, False, configs) for n, m in methods.items()}

    before = ids(tmp_path)
    assert before == ids(CONFIGS)  # the folder's path is not part of an id
    assert len({before[n] for n in ("baseline", "mcdrl", "wo_cdrl", "wo_counterfactual", "wo_text")}) == 1  # train.json has the causal parts off
    assert len(set(before.values())) == len(methods) - 4
    assert run_id(methods["mcdrl"], "C", 2, False, tmp_path) != before["mcdrl"] != run_id(methods["mcdrl"], "D", 1, False, tmp_path)
    assert run_id(methods["mcdrl"], "C", 1, True, tmp_path) != before["mcdrl"]  # validation-only runs are other runs

    (tmp_path / "metadata.json").write_text("{}")
    assert ids(tmp_path) == before
    (tmp_path / "train.json").write_text(json.dumps({**train, "deconfounding": "regions"}))
    after = ids(tmp_path)
    assert after["mcdrl"] == before["with_text"]  # shipping the projection: its runs are the with_text row's
    assert after["baseline"] == before["baseline"] and after["paper_mcdrl"] == before["paper_mcdrl"]  # they set deconfounding none themselves
    assert after["paper_baseline"] == before["paper_baseline"]
    assert after["unet"] != before["unet"] and after["wo_mtrs"] != before["wo_mtrs"]  # a key of their train.json changed


def test_every_run_of_a_profile_gets_the_same_budget(tmp_path):
    prof = get_profile("full")
    seen = {}
    for m in all_methods().values():
        o = run_overrides(m, prof, "C", 1, {"dataset_dir": "W"}, tmp_path)
        assert o["train_sites"] == ["A", "B", "D", "E", "F"] and o["seed"] == 1
        seen[m.name] = (o["max_epochs"], o["displayable_configs#causal_start_epoch"], o["dataset_dir"])
    assert len(set(seen.values())) == 1, seen


def test_a_benchmark_run_is_the_bundles_own_training(tiny_world, tmp_path):
    """A LOSO run trains exactly what `python -m monai.bundle run training` trains with the same keys: the same weights."""
    prof = get_profile("smoke").replace(overrides=tuple(TINY_SETS.items()) + (("batch_size", 2),))
    common = {"bundle_root": str(REPO / "bundle"), "clip_model": TINY, "clip_weights": str(tiny_world["weights"]),
              "dictionary_path": str(tiny_world["dictionary"]), "dataset_dir": str(tiny_world["data"])}
    prof = prof.replace(sites=("S1", "S2"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the CLI below (OMP_NUM_THREADS=1)
    try:
        record = run_one(METHODS["mcdrl"], prof, "S2", 0, CONFIGS, common, tmp_path / "loso_run", keep_weights=True)
    finally:
        torch.set_num_threads(threads)
    assert record["selected_epoch"] >= 1 and len(record["rows"]) == 4  # every S2 image, both splits, is scored
    keys = run_overrides(METHODS["mcdrl"], prof, "S2", 0, common, tmp_path / "cli_run")
    proc = bundle_cli(["run", "training", "--config_file", str(CONFIGS / "train.json")], tmp_path, keys, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "loso_run" / "models" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cli_run" / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prepare_rejects_a_missing_dictionary(tiny_world, tmp_path):
    with pytest.raises(InputFileError, match="nope.safetensors"):
        prepare(get_profile("smoke"), REPO / "bundle", TINY, tiny_world["weights"], tmp_path / "nope.safetensors", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # checked before any world is generated


def _run_cli(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([PYTHON, "-m", "mcdrl.evaluation.loso", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


SMOKE_METHODS = ["baseline", "unet", "paper_mcdrl", "mcdrl", "wo_mtrs"]


def test_smoke_profile_end_to_end(tiny_world, tmp_path):
    """The smoke profile: five rows x 3 held-out sites, in 2 worker processes; the report's numbers recompute from
    its per-image CSVs; a second invocation reuses every run."""
    out, cache = tmp_path / "results", tmp_path / "cache"
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY_SETS.items()]
    args = ["--profile", "smoke", "--clip_model", TINY, "--clip_weights", str(tiny_world["weights"]), "--dictionary_path",
            str(tiny_world["dictionary"]), "--out", str(out), "--cache_dir", str(cache), "--methods", *SMOKE_METHODS, *sets]
    proc = _run_cli(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Epoch:" not in proc.stdout  # each run's log goes to its own file, not the terminal
    prof = get_profile("smoke")
    doc = json.loads((out / "loso.json").read_text())
    assert list(doc["methods"]) == SMOKE_METHODS
    for name, m in doc["methods"].items():
        assert 0.0 <= m["dice_mean"] <= 1.0 and set(m["per_site_dice"]) == set(prof.sites)
        assert m["dice_mean"] == pytest.approx(np.mean(list(m["per_site_dice"].values())))
        assert 0.0 <= m["source_validation_dice"] <= 1.0
    t = doc["target"]
    assert t["gain_over_baseline_points"] == pytest.approx(100 * (doc["methods"]["mcdrl"]["dice_mean"] - doc["methods"]["baseline"]["dice_mean"]))
    assert t["sites_better_count"] == sum(doc["methods"]["mcdrl"]["per_site_dice"][s] > doc["methods"]["baseline"]["per_site_dice"][s] for s in prof.sites)
    lines = (out / "loso_raw" / "mcdrl.csv").read_text().splitlines()
    assert lines[0].startswith("method,held_out,seed,id,site,lesion_class,dice")
    assert len(lines) == 1 + len(prof.sites) * prof.n_per_site
    site_dice = {}
    for r in lines[1:]:
        f = r.split(",")
        site_dice.setdefault(f[1], []).append(float(f[6]))
    assert np.mean([np.mean(v) for v in site_dice.values()]) == pytest.approx(doc["methods"]["mcdrl"]["dice_mean"], abs=1e-4)
    md = (out / "loso.md").read_text()
    assert all(f"| {n} |" in md for n in SMOKE_METHODS) and "Target check" in md and "do not edit by hand" in md
    assert str(tmp_path) not in (out / "loso.json").read_text() + md  # paths outside the repository: names only
    assert (out / "loso.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    distinct = len(prof.sites) * len({m for m in SMOKE_METHODS if not doc["methods"][m]["same_runs_as"]})
    assert doc["meta"]["runs"]["distinct"] == doc["meta"]["runs"]["computed"] == distinct and doc["meta"]["runs"]["reused"] == 0
    again = _run_cli(args[:args.index("--out")] + ["--out", str(tmp_path / "again")] + args[args.index("--out") + 2:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "runs reused" in again.stdout
    doc2 = json.loads((tmp_path / "again" / "loso.json").read_text())
    assert {k: v["dice_mean"] for k, v in doc2["methods"].items()} == {k: v["dice_mean"] for k, v in doc["methods"].items()}
    assert doc2["meta"]["runs"]["reused"] == distinct and doc2["meta"]["runs"]["computed"] == 0  # the report says so
    assert f"of the {distinct} distinct runs, 0 were computed by this invocation" in (tmp_path / "again" / "loso.md").read_text()


def test_the_report_names_rows_whose_results_equal_another_rows():
    """Two configurations that train the same network (e.g. alpha where nothing reads the regions) give the same
    results; the report says so rather than presenting the row as a measurement of the part."""
    from mcdrl.evaluation.loso.cli import _run_counts
    from mcdrl.evaluation.loso.report import _identical_results

    def rec(method, site, seed, dice, reused=False, same=None):
        return {"method": method, "held_out": site, "seed": seed, "source_validation_dice": 0.5, "rows": [{"id": "x", "dice": dice}],
                "same_runs_as": same, "reused": reused, "wall_s": 60.0}

    by = {"baseline": [rec("baseline", "A", 0, 0.3), rec("baseline", "B", 0, 0.4)],
          "mcdrl": [rec("mcdrl", "A", 0, 0.3, same="baseline"), rec("mcdrl", "B", 0, 0.4, same="baseline")],
          "wo_mtrs": [rec("wo_mtrs", "B", 0, 0.4, reused=True), rec("wo_mtrs", "A", 0, 0.3, reused=True)],
          "with_text": [rec("with_text", "A", 0, 0.3), rec("with_text", "B", 0, 0.41)]}
    assert _identical_results(by) == {"wo_mtrs": "baseline"}  # mcdrl shares the runs (said elsewhere); with_text differs at B
    counts = _run_counts([r for recs in by.values() for r in recs])
    assert counts == {"distinct": 6, "computed": 4, "reused": 2, "computed_run_minutes": 4.0, "reused_run_minutes": 2.0}


def test_validation_only_scores_no_heldout_image(tiny_world, tmp_path):
    out = tmp_path / "val"
    args = ["--profile", "smoke", "--clip_model", TINY, "--clip_weights", str(tiny_world["weights"]), "--dictionary_path",
            str(tiny_world["dictionary"]), "--out", str(out), "--cache_dir", str(tmp_path / "cache"), "--methods", "mcdrl",
            "--validation_only", *[f"--set={k}={json.dumps(v)}" for k, v in TINY_SETS.items()]]
    proc = _run_cli(args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads((out / "loso.json").read_text())
    assert doc["validation_only"] and doc["methods"]["mcdrl"]["n_test_images"] == 0 and "target" not in doc
    assert not (out / "loso_raw").exists() and "Source-site validation only" in (out / "loso.md").read_text()
    assert "held-out Dice" not in proc.stdout
