"""The LOSO benchmark (python -m mcdrl.evaluation.loso): it trains the bundle's own network, selects on the
interventional split, scores the held-out site as sampled and reversed, and the smoke profile runs end to end on the
tiny CLIP.

Mechanics only: the scores of a 2-epoch tiny-CLIP run mean nothing, so no test asserts a score level.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import PYTHON, REPO, TINY, TINY_OVERRIDES, bundle_cli

from mcdrl.errors import ConfigError, InputFileError
from mcdrl.evaluation.loso.methods import CAUSAL_OFF, ERM, METHODS, all_methods
from mcdrl.evaluation.loso.profiles import get_profile
from mcdrl.evaluation.loso.report import GROUPS, shortcut_check, summarise, target_check, worst_group
from mcdrl.evaluation.loso.run import run_data, run_one, run_overrides
from mcdrl.evaluation.loso.runner import prepare, run_id
from mcdrl.evaluation.loso.world import PARTS, ensure_world, oracle_seed, world_name
from mcdrl.synthetic import SITES, derive_seed, draw_case_params

CONFIGS = REPO / "bundle" / "configs"
#: the tiny CLIP's sizes, for every run of these tests
TINY_SETS = {k: v for k, v in TINY_OVERRIDES.items() if k not in ("clip_model", "train_size")}  # LOSO trains at its world's frame size
#: the rows issue 22 names, in table order
ROWS = ["erm", "mcdrl", "erm_cdrl", "mcdrl_cdrl", "erm_text", "erm_counterfactual", "paper", "unet", "unet_doz", "oracle",
        "erm_unconfounded", "mcdrl_unconfounded"]
#: what every row of loso.json carries
ROW_FIELDS = {"dice_mean", "dice_mean_reversed", "dice_std", "dice_std_reversed", "false_alarms", "false_alarms_reversed",
              "worst_group_dice", "worst_group_dice_reversed", "group_dice", "group_dice_reversed", "per_site_dice",
              "per_site_dice_reversed", "per_seed_dice", "per_seed_dice_reversed", "per_site_false_alarms", "per_site_false_alarms_reversed",
              "per_site_worst_group_dice", "validation_dice_interventional", "validation_dice_plain", "runs", "dg_efficiency",
              "dg_efficiency_reversed", "trains_on"}


def test_rows_are_variants_of_the_bundle_configs():
    assert list(all_methods()) == ROWS
    for m in all_methods().values():
        assert all((CONFIGS / f).is_file() for f in m.files), m
    train = json.loads((CONFIGS / "train.json").read_text())
    for key in ERM:
        assert key in train or f"@displayable_configs#{key}" in json.dumps(train), key
    assert METHODS["erm"].overrides == {**CAUSAL_OFF, "confounder_augmentation_prob": 0.0} and METHODS["erm"].files == ()
    assert METHODS["mcdrl"].files == () and METHODS["mcdrl"].overrides == {}
    # the intervention's rows: cdrl.json switches it on, and nothing of theirs switches it off again
    for name in ("erm_cdrl", "mcdrl_cdrl"):
        assert METHODS[name].files == ("cdrl.json",) and not {"use_intervention", "lambda_causal"} & set(METHODS[name].overrides)
    assert json.loads((CONFIGS / "cdrl.json").read_text()).get("displayable_configs#use_intervention") is True
    assert METHODS["erm_cdrl"].overrides["confounder_augmentation_prob"] == 0.0 and METHODS["mcdrl_cdrl"].overrides == {}
    assert METHODS["erm_text"].overrides == {**ERM, "deconfounding": "regions"}
    assert METHODS["erm_counterfactual"].overrides == {**ERM, "lambda_counterfactual": 0.5}
    assert METHODS["paper"].files == ("paper.json",) and METHODS["paper"].overrides == {}
    assert METHODS["unet"].overrides == {"confounder_augmentation_prob": 0.0} and METHODS["unet_doz"].overrides == {}
    assert {n: m.world for n, m in METHODS.items() if m.world != "sampled"} == {
        "oracle": "oracle", "erm_unconfounded": "protocol_off", "mcdrl_unconfounded": "protocol_off"}
    assert METHODS["erm_unconfounded"].overrides == METHODS["erm"].overrides
    assert {n for n, m in METHODS.items() if m.kind == "reference"} == {"oracle", "erm_unconfounded", "mcdrl_unconfounded"}


def test_a_run_is_identified_by_the_configuration_and_the_frames_it_trains_on(tmp_path):
    """Rows that train the same configuration on the same frames share runs, whichever files or overrides set it; a
    config edit changes the ids of exactly the runs whose configuration it changes; the metadata is not part of any run."""
    for name in ("train.json", "paper.json", "unet.json", "cdrl.json", "metadata.json"):
        (tmp_path / name).write_text((CONFIGS / name).read_text())
    train = json.loads((CONFIGS / "train.json").read_text())
    methods = all_methods()

    def ids(configs) -> dict:
        return {n: run_id(m, "C", 1, False, configs) for n, m in methods.items()}

    before = ids(tmp_path)
    assert before == ids(CONFIGS)  # the folder's path is not part of an id
    assert len(set(before.values())) == len(methods)
    # the same configuration on other frames: other runs
    assert before["erm"] != before["erm_unconfounded"] and before["mcdrl"] != before["mcdrl_unconfounded"] != before["oracle"]
    assert run_id(methods["mcdrl"], "C", 2, False, tmp_path) != before["mcdrl"] != run_id(methods["mcdrl"], "D", 1, False, tmp_path)
    assert run_id(methods["mcdrl"], "C", 1, True, tmp_path) != before["mcdrl"]  # validation-only runs are other runs

    (tmp_path / "metadata.json").write_text("{}")
    assert ids(tmp_path) == before
    (tmp_path / "train.json").write_text(json.dumps({**train, "confounder_augmentation_prob": 0.0}))
    after = ids(tmp_path)
    assert after["mcdrl"] == before["erm"] and after["mcdrl_unconfounded"] == before["erm_unconfounded"]  # shipping ERM: ERM's runs
    assert after["erm"] == before["erm"] and after["erm_text"] == before["erm_text"]  # they set it themselves
    assert after["unet_doz"] == before["unet"] and after["paper"] != before["paper"]  # a key of their train.json changed


def test_every_run_reads_the_world_it_should(tmp_path):
    """Training on the source sites (or their protocol-off frames, or the held-out site's own frames for the oracle),
    selection on the interventional split, the held-out site scored as sampled and reversed; the same budget for all."""
    prof = get_profile("full")
    world = {p: f"W/{p}/datalist.json" for p in PARTS}
    sources = ["A", "B", "D", "E", "F"]
    seen = {}
    for m in all_methods().values():
        o = run_overrides(m, prof, "C", 1, {}, world, tmp_path)
        d = run_data(m, prof, "C", world)
        assert o["seed"] == 1 and o["datalist"] == d["train"][0] and o["validation_datalist"] == d["select"][0] and o["train_sites"] == d["train"][1]
        assert d["test"] == (world["sampled"], ["C"]) and d["test_reversed"] == (world["reversed"], ["C"])
        if m.name == "oracle":
            assert d["train"] == (world["oracle"], ["C"]) and d["select"] == (world["oracle_off"], ["C"]) and d["plain"] == (world["oracle"], ["C"])
        else:
            assert d["train"] == (world[m.world], sources) and d["select"] == (world["protocol_off"], sources) and d["plain"] == (world["sampled"], sources)
        seen[m.name] = (o["max_epochs"], o["displayable_configs#causal_start_epoch"])
    assert len(set(seen.values())) == 1, seen


def test_profiles_fit_their_budgets_and_give_the_intervention_ten_epochs():
    costs = {n: m.cost for n, m in METHODS.items()}
    full, quick = get_profile("full"), get_profile("quick")
    assert full.estimate_minutes(costs) <= 150 and quick.estimate_minutes({n: costs[n] for n in quick.methods}) <= 15
    assert full.methods is None  # every row
    assert all(full.seeds_of(n) == (0, 1, 2) for n in ("erm", "mcdrl", "erm_cdrl", "erm_unconfounded", "mcdrl_unconfounded"))
    train_size = json.loads((CONFIGS / "train.json").read_text())["train_size"]
    for prof in (full, quick):
        assert prof.epochs >= 10 and prof.causal_start == round(0.2 * prof.epochs) and prof.image_size == train_size
        assert prof.oracle_frames == (len(prof.sites) - 1) * prof.n_per_site  # the oracle trains on as many frames as a LOSO run
    # quick is full's world and budget, so its runs are full's
    assert {k: v for k, v in vars(quick).items() if k not in ("name", "seeds", "row_seeds", "methods")} == \
        {k: v for k, v in vars(full).items() if k not in ("name", "seeds", "row_seeds", "methods")}


def test_row_seeds_on_the_command_line_narrow_one_row_and_refuse_bad_input():
    from mcdrl.evaluation.loso.cli import parse_row_seeds

    assert parse_row_seeds(["erm_unconfounded=0", "mcdrl=0,2"], METHODS) == {"erm_unconfounded": (0,), "mcdrl": (0, 2)}
    full = get_profile("full")
    narrowed = full.replace(row_seeds=tuple(dict(full.row_seeds, **parse_row_seeds(["erm_unconfounded=0"], METHODS)).items()))
    assert narrowed.seeds_of("erm_unconfounded") == (0,) and narrowed.seeds_of("erm") == (0, 1, 2) and narrowed.seeds_of("paper") == (0,)
    for bad in ("nope=0", "erm=", "erm=a"):
        with pytest.raises(SystemExit, match="--row_seeds"):
            parse_row_seeds([bad], METHODS)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """Site C (all five protocol confounders) and A, 200 frames each at 32 px, and 6 oracle frames."""
    return ensure_world(tmp_path_factory.mktemp("world"), ("A", "C"), 200, 11, 32, 0.25, 6)


def _entries(datalist) -> dict:
    doc = json.loads(Path(datalist).read_text())
    return {e["id"]: e for split in ("training", "validation") for e in doc[split]}


def _protocol_gap(entries, site: str) -> tuple[float, float, float]:
    """(lesion-frame minus lesion-free-frame mean count of the lesion-signalling protocol confounders (NBI, near view,
    blood), the same for the no-lesion ones (motion blur, mucus), and the larger standard error of the two gaps)."""
    up, down = ("narrow-band imaging", "a near view", "blood"), ("motion blur", "mucus")
    es = [e for e in entries.values() if e["site"] == site]
    gaps, ses = [], []
    for group in (up, down):
        counts = {les: [sum(c in e["confounders"] for c in group) for e in es if (e["lesion_class"] != "none") == les] for les in (True, False)}
        gaps.append(np.mean(counts[True]) - np.mean(counts[False]))
        ses.append(np.sqrt(np.var(counts[True]) / len(counts[True]) + np.var(counts[False]) / len(counts[False])))
    return gaps[0], gaps[1], max(ses)


def test_reversed_frames_share_scenes_and_lesions_and_follow_the_reversed_rates(small_world):
    sampled, reversed_ = _entries(small_world["sampled"]), _entries(small_world["reversed"])
    assert sampled.keys() == reversed_.keys() and len(sampled) == 400
    same_mask = 0
    for cid, a in sampled.items():
        b = reversed_[cid]
        assert (a["seed"], a["lesion_class"], a["site"]) == (b["seed"], b["lesion_class"], b["site"])  # the same scene and lesion
        assert b["confounders"] == draw_case_params(SITES[b["site"]].reversed_protocol(), b["seed"])[1]  # drawn with the reversed rates
        assert b["protocol_confounders"] == [c for c in b["confounders"] if c in SITES[b["site"]].protocol_confounders]
        # the same lesion mask where the framing is the same: a near or far view reframes the scene, and the device's
        # jitter is drawn after the confounders (an exclusive pair resolved differently moves it)
        views = ("a near view", "a far view")
        device = draw_case_params(SITES[a["site"]], a["seed"])[2] == draw_case_params(SITES[b["site"]].reversed_protocol(), b["seed"])[2]
        if device and [c for c in a["confounders"] if c in views] == [c for c in b["confounders"] if c in views]:
            la = np.asarray(Image.open(Path(small_world["sampled"]).parent / a["label"]))
            lb = np.asarray(Image.open(Path(small_world["reversed"]).parent / b["label"]))
            assert np.array_equal(la, lb), cid
            same_mask += 1
    assert same_mask > 250
    # as sampled, NBI / near view / blood come with lesions and blur / mucus without; reversed, the other way round
    up, down, se = _protocol_gap(sampled, "C")
    assert up > 4 * se and down < -4 * se
    up, down, se = _protocol_gap(reversed_, "C")
    assert up < -4 * se and down > 4 * se


def test_a_world_under_another_protocol_table_is_drawn_with_it_and_cached_apart(tmp_path):
    """``--protocol strong``: every part is drawn from the strong table's sites (the same scenes), the folder's name
    says so, and the generator's own table keeps the name (and so the cache) it had."""
    from mcdrl.synthetic import sites_with_protocol

    world = ensure_world(tmp_path, ("C",), 16, 11, 32, 0.25, 2, "strong")
    assert world["sampled"].parent.parent.name.endswith("-pstrong")
    assert not world_name(("C",), 16, 11, 32, 0.25, 2, "issue").endswith("-pissue")
    strong = sites_with_protocol("strong")["C"]
    for part, spec in (("sampled", strong), ("reversed", strong.reversed_protocol()), ("protocol_off", strong.protocol_off())):
        for e in _entries(world[part]).values():
            assert e["confounders"] == draw_case_params(spec, e["seed"])[1], (part, e["id"])
    with pytest.raises(ValueError, match="unknown protocol 'mild'"):
        ensure_world(tmp_path, ("C",), 16, 11, 32, 0.25, 2, "mild")


def test_the_interventional_split_has_its_confounders_independent_of_the_label(small_world):
    sampled, off = _entries(small_world["sampled"]), _entries(small_world["protocol_off"])
    val_ids = {e["id"] for e in json.loads(Path(small_world["protocol_off"]).read_text())["validation"]}
    assert val_ids == {e["id"] for e in json.loads(Path(small_world["sampled"]).read_text())["validation"]}  # the same frames
    for cid, e in off.items():
        assert (e["seed"], e["lesion_class"]) == (sampled[cid]["seed"], sampled[cid]["lesion_class"])
        assert e["confounders"] == draw_case_params(SITES[e["site"]].protocol_off(), e["seed"])[1] and e["protocol_confounders"] == []
    up, down, se = _protocol_gap(off, "C")
    assert abs(up) < 3 * se and abs(down) < 3 * se
    # the oracle's frames are other scenes of the same sites
    oracle = _entries(small_world["oracle"])
    assert len(oracle) == 12 and not {e["seed"] for e in oracle.values()} & {e["seed"] for e in sampled.values()}
    assert {e["seed"] for e in oracle.values()} == {derive_seed(derive_seed(oracle_seed(11), "case", i), s) for s in "AC" for i in range(6)}


def _row(lesion: bool, conf: bool, dice: float, fa: bool | None = None) -> dict:
    r = {"id": "x", "dice": dice, "iou": dice, "lesion": lesion, "protocol_confounder": conf, "lesion_class": "polyp" if lesion else "none"}
    if lesion:
        r["detected"] = dice > 0
    else:
        r["false_alarm"] = bool(fa)
    return r


def test_worst_group_and_false_alarm_arithmetic():
    """Two sites, two seeds, by hand."""
    site_a = [_row(True, True, 0.9), _row(True, False, 0.5), _row(False, True, 0.0, True), _row(False, False, 1.0, False)]
    site_b = [_row(True, True, 0.7), _row(True, False, 0.3), _row(False, False, 1.0, False), _row(False, False, 0.0, True)]
    wg, groups, counts = worst_group(site_a + site_b)
    assert groups == pytest.approx({"lesion, confounder": 0.8, "lesion, no confounder": 0.4, "no lesion, confounder": 0.0,
                                    "no lesion, no confounder": 2 / 3}) and wg == 0.0
    assert counts == {"lesion, confounder": 2, "lesion, no confounder": 2, "no lesion, confounder": 1, "no lesion, no confounder": 3}
    assert worst_group(site_b)[0] == pytest.approx(0.3) and set(worst_group(site_b)[1]) == set(GROUPS) - {"no lesion, confounder"}

    flip = [dict(r, dice=1.0 - r["dice"] if not r["lesion"] else r["dice"], false_alarm=not r["false_alarm"]) if not r["lesion"] else r
            for r in site_a]  # seed 1: site A's lesion-free frames the other way round
    records = [{"held_out": "A", "seed": 0, "rows": site_a, "rows_reversed": site_b, "validation_dice_interventional": 0.4,
                "validation_dice_plain": 0.6, "train_seconds": 60, "wall_s": 90, "selected_epoch": 2},
               {"held_out": "B", "seed": 0, "rows": site_b, "rows_reversed": site_a, "validation_dice_interventional": 0.5,
                "validation_dice_plain": 0.7, "train_seconds": 60, "wall_s": 90, "selected_epoch": 1},
               {"held_out": "A", "seed": 1, "rows": flip, "rows_reversed": site_b, "validation_dice_interventional": 0.6,
                "validation_dice_plain": 0.8, "train_seconds": 60, "wall_s": 90, "selected_epoch": 2},
               {"held_out": "B", "seed": 1, "rows": site_b, "rows_reversed": site_a, "validation_dice_interventional": 0.3,
                "validation_dice_plain": 0.9, "train_seconds": 60, "wall_s": 90, "selected_epoch": 2}]
    s = summarise(records, ["A", "B"])
    # Dice: site means (A 0.6, B 0.5; seed 1: A 0.6 (0.9 + 0.5 + 1 + 0) / 4, B 0.5), then over sites, then seeds
    assert s["per_seed_dice"] == pytest.approx([0.55, 0.55]) and s["dice_mean"] == pytest.approx(0.55)
    assert s["per_site_dice"] == pytest.approx({"A": 0.6, "B": 0.5})
    # false alarms: 1 of 2 lesion-free frames at each site and seed
    assert s["false_alarms"] == pytest.approx(0.5) and s["per_site_false_alarms"] == pytest.approx({"A": 0.5, "B": 0.5})
    # worst group, pooled over sites per seed: seed 0 "no lesion, confounder" 0.0; seed 1 it scores 1 and "no lesion, no
    # confounder" (A 0, B 1, B 0) scores 1/3, below "lesion, no confounder" 0.4
    assert s["per_seed_worst_group_dice"] == pytest.approx([0.0, 1 / 3]) and s["worst_group_dice"] == pytest.approx(1 / 6)
    assert s["group_dice"]["no lesion, confounder"] == pytest.approx(0.5)
    assert s["per_site_worst_group_dice"] == pytest.approx({"A": 0.0, "B": 0.3})  # A: seed 0 0.0, seed 1 min(0.9, 0.5, 1, 0) = 0
    # reversed: the other site's frames
    assert s["dice_mean_reversed"] == pytest.approx(0.55) and s["per_site_dice_reversed"] == pytest.approx({"A": 0.5, "B": 0.6})
    assert s["false_alarms_reversed"] == pytest.approx(0.5) and s["worst_group_dice_reversed"] == pytest.approx(0.0)
    assert s["validation_dice_interventional"] == pytest.approx(0.45) and s["validation_dice_plain"] == pytest.approx(0.75)
    assert [(r["held_out"], r["seed"]) for r in s["runs"]] == [("A", 0), ("A", 1), ("B", 0), ("B", 1)]


def test_the_shortcut_and_target_checks():
    def row(d, dr, std_r=0.01, fa_r=0.2, seeds=(0, 1, 2)):
        return {"dice_mean": d, "dice_mean_reversed": dr, "dice_std_reversed": std_r, "false_alarms": 0.1, "false_alarms_reversed": fa_r,
                "seeds": list(seeds), "per_seed_dice_reversed": [dr - std_r, dr, dr + std_r][: len(seeds)]}

    erm, unconf = row(0.60, 0.40), row(0.58, 0.50)
    sc = shortcut_check(erm, unconf)
    assert sc["learnt"] and sc["drop_points"] == pytest.approx(20) and sc["confounding_cost_points"] == pytest.approx(10)
    assert not shortcut_check(erm, row(0.58, 0.41))["learnt"]  # no worse than unconfounded ERM by more than twice the std
    assert not shortcut_check(row(0.60, 0.59), None)["learnt"]
    # a cost under 3 Dice points is no shortcut worth the name, however small the seed std (one seed: none at all)
    assert not shortcut_check(row(0.60, 0.40, std_r=0.0, seeds=(0,)), row(0.58, 0.42, std_r=0.0, seeds=(0,)))["learnt"]
    assert shortcut_check(row(0.60, 0.40, std_r=0.0, seeds=(0,)), row(0.58, 0.44, std_r=0.0, seeds=(0,)))["seeds"] == 1
    s = {"erm": erm, "erm_unconfounded": unconf, "mcdrl": row(0.61, 0.46, fa_r=0.3), "mcdrl_unconfounded": row(0.6, 0.465),
         "erm_cdrl": row(0.6, 0.43), "unet_doz": row(0.5, 0.40)}
    got = {t["target"]: (round(t["value_points"], 3), t["met"]) for t in target_check(s)}
    assert got == {"reversed LOSO: mcdrl >= erm + 5": (6.0, True), "as sampled: mcdrl >= erm": (1.0, True),
                   "false alarms of mcdrl on reversed lesion-free frames <= 25%": (30.0, False),
                   "reversed: mcdrl within 1 point of mcdrl_unconfounded": (0.5, True),
                   "reversed: the confounding costs erm >= 3 (erm_unconfounded - erm)": (10.0, True),
                   "the paper's claim, reversed: erm_cdrl >= erm + 2, above twice the seed std": (3.0, True),
                   "reversed: mcdrl >= unet_doz + 3": (6.0, True)}
    one_seed = {"erm": erm, "erm_cdrl": row(0.6, 0.43, std_r=0.0, seeds=(0,))}
    assert [t["met"] for t in target_check(one_seed)] == [False]  # one seed cannot show "above twice the seed std"


def _tiny_protocol_datalist(tiny_world, folder: Path) -> Path:
    """The tiny world's datalist with absolute paths and a protocol confounder in every third frame."""
    doc = json.loads(Path(tiny_world["datalist"]).read_text())
    for split in ("training", "validation"):
        for i, e in enumerate(doc[split]):
            e.update(image=str(tiny_world["data"] / e["image"]), label=str(tiny_world["data"] / e["label"]),
                     protocol_confounders=["mucus"] if i % 3 == 0 else [], id=f"{split}{i}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datalist.json").write_text(json.dumps(doc))
    return folder / "datalist.json"


def test_a_benchmark_run_is_the_bundles_own_training(tiny_world, tmp_path):
    """A LOSO run trains exactly what `python -m monai.bundle run training` trains with the same keys (the
    interventional split through `validation_datalist`): the same weights; it scores both validation splits and the
    held-out site twice."""
    prof = get_profile("smoke").replace(overrides=tuple(TINY_SETS.items()) + (("batch_size", 2), ("train_size", 64)), sites=("S1", "S2"))
    common = {"bundle_root": str(REPO / "bundle"), "clip_model": TINY, "clip_weights": str(tiny_world["weights"]),
              "dictionary_path": str(tiny_world["dictionary"])}
    datalist = str(_tiny_protocol_datalist(tiny_world, tmp_path / "data"))
    world = {p: datalist for p in PARTS}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the CLI below (OMP_NUM_THREADS=1)
    try:
        record = run_one(METHODS["mcdrl"], prof, "S2", 0, CONFIGS, common, world, tmp_path / "loso_run", keep_weights=True)
    finally:
        torch.set_num_threads(threads)
    assert record["selected_epoch"] >= 1 and len(record["rows"]) == len(record["rows_reversed"]) == 4  # every S2 frame, both splits
    assert {r["protocol_confounder"] for r in record["rows"]} == {True, False}
    assert 0 <= record["validation_dice_interventional"] <= 1 and 0 <= record["validation_dice_plain"] <= 1
    keys = run_overrides(METHODS["mcdrl"], prof, "S2", 0, common, world, tmp_path / "cli_run")
    proc = bundle_cli(["run", "training", "--config_file", str(CONFIGS / "train.json")], tmp_path, keys, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "loso_run" / "models" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cli_run" / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prepare_checks_before_it_generates(tiny_world, tmp_path):
    with pytest.raises(InputFileError, match="nope.safetensors"):
        prepare(get_profile("smoke"), REPO / "bundle", TINY, tiny_world["weights"], tmp_path / "nope.safetensors", tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"96 px but .*train\.json trains at train_size 224"):
        prepare(get_profile("smoke").replace(overrides=(("batch_size", 4),)), REPO / "bundle", TINY, tiny_world["weights"],
                tiny_world["dictionary"], tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # checked before any world is generated


def test_scoring_refuses_a_world_without_protocol_labels(tiny_world, tmp_path):
    from mcdrl.evaluation.loso.run import load_frames

    with pytest.raises(InputFileError, match="datalist.json: entry .* has no 'protocol_confounders'"):
        load_frames(str(tiny_world["datalist"]), ["S1"])


def _run_cli(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([PYTHON, "-m", "mcdrl.evaluation.loso", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


SMOKE_METHODS = ["erm", "mcdrl", "oracle", "erm_unconfounded"]


def test_smoke_profile_end_to_end(tiny_world, tmp_path):
    """The smoke profile: four rows x 3 held-out sites in 2 worker processes, each the bundle's own training; every
    row carries the issue's fields; the report's numbers recompute from its per-frame CSVs; a second invocation
    reuses every run."""
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
        assert ROW_FIELDS <= set(m), ROW_FIELDS - set(m)
        for suffix in ("", "_reversed"):
            assert 0.0 <= m[f"dice_mean{suffix}"] <= 1.0 and set(m[f"per_site_dice{suffix}"]) == set(prof.sites)
            assert m[f"dice_mean{suffix}"] == pytest.approx(np.mean(list(m[f"per_site_dice{suffix}"].values())))
            assert m[f"worst_group_dice{suffix}"] <= min(v for v in m[f"group_dice{suffix}"].values() if v is not None) + 1e-9
        assert 0.0 <= m["validation_dice_interventional"] <= 1.0 and 0.0 <= m["validation_dice_plain"] <= 1.0
        assert len(m["runs"]) == len(prof.sites) and m["dg_efficiency"] == pytest.approx(m["dice_mean"] / doc["methods"]["oracle"]["dice_mean"])
    assert doc["methods"]["oracle"]["trains_on"] == "oracle" and doc["methods"]["erm_unconfounded"]["trains_on"] == "protocol_off"
    assert "learnt" in doc["shortcut"] and any(t["target"].startswith("reversed LOSO: mcdrl >= erm") for t in doc["targets"])
    with open(out / "loso_raw" / "mcdrl.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(prof.sites) * prof.n_per_site and {r["protocol"] for r in rows} == {"sampled", "reversed"}
    for protocol, key in (("sampled", "dice_mean"), ("reversed", "dice_mean_reversed")):
        site_dice = {}
        for r in rows:
            if r["protocol"] == protocol:
                site_dice.setdefault(r["held_out"], []).append(float(r["dice"]))
        assert np.mean([np.mean(v) for v in site_dice.values()]) == pytest.approx(doc["methods"]["mcdrl"][key], abs=1e-4)
    # the same scenes, scored twice: the same ids and lesion flags
    sampled = [(r["held_out"], r["id"], r["lesion"]) for r in rows if r["protocol"] == "sampled"]
    assert sampled == [(r["held_out"], r["id"], r["lesion"]) for r in rows if r["protocol"] == "reversed"]
    md = (out / "loso.md").read_text()
    assert all(f"| {n} |" in md for n in SMOKE_METHODS) and "Did ERM learn the shortcut?" in md and "do not edit by hand" in md
    assert str(tmp_path) not in (out / "loso.json").read_text() + md  # paths outside the repository: names only
    assert (out / "loso.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    distinct = len(prof.sites) * len(SMOKE_METHODS)
    assert doc["meta"]["runs"]["distinct"] == doc["meta"]["runs"]["computed"] == distinct and doc["meta"]["runs"]["reused"] == 0
    again = _run_cli(args[:args.index("--out")] + ["--out", str(tmp_path / "again")] + args[args.index("--out") + 2:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "runs reused" in again.stdout
    doc2 = json.loads((tmp_path / "again" / "loso.json").read_text())
    assert {k: v["dice_mean_reversed"] for k, v in doc2["methods"].items()} == {k: v["dice_mean_reversed"] for k, v in doc["methods"].items()}
    assert doc2["meta"]["runs"]["reused"] == distinct and doc2["meta"]["runs"]["computed"] == 0  # the report says so
    assert f"of the {distinct} distinct runs, 0 were computed by this invocation" in (tmp_path / "again" / "loso.md").read_text()


def test_the_report_names_rows_whose_results_equal_another_rows():
    """Two configurations that train the same network give the same results; the report says so rather than
    presenting the row as a measurement of the part."""
    from mcdrl.evaluation.loso.cli import _run_counts
    from mcdrl.evaluation.loso.report import _identical_results

    def rec(method, site, seed, dice, reversed_dice=0.2, reused=False, same=None):
        return {"method": method, "held_out": site, "seed": seed, "validation_dice_interventional": 0.5, "validation_dice_plain": 0.6,
                "rows": [{"id": "x", "dice": dice}], "rows_reversed": [{"id": "x", "dice": reversed_dice}], "same_runs_as": same,
                "reused": reused, "wall_s": 60.0}

    by = {"erm": [rec("erm", "A", 0, 0.3), rec("erm", "B", 0, 0.4)],
          "mcdrl": [rec("mcdrl", "A", 0, 0.3, same="erm"), rec("mcdrl", "B", 0, 0.4, same="erm")],
          "erm_text": [rec("erm_text", "B", 0, 0.4, reused=True), rec("erm_text", "A", 0, 0.3, reused=True)],
          "erm_cdrl": [rec("erm_cdrl", "A", 0, 0.3), rec("erm_cdrl", "B", 0, 0.4, reversed_dice=0.25)]}
    assert _identical_results(by) == {"erm_text": "erm"}  # mcdrl shares the runs (said elsewhere); erm_cdrl differs reversed at B
    counts = _run_counts([r for recs in by.values() for r in recs])
    assert counts == {"distinct": 6, "computed": 4, "reused": 2, "computed_run_minutes": 4.0, "reused_run_minutes": 2.0}


def test_validation_only_scores_no_heldout_frame(tiny_world, tmp_path):
    out = tmp_path / "val"
    args = ["--profile", "smoke", "--clip_model", TINY, "--clip_weights", str(tiny_world["weights"]), "--dictionary_path",
            str(tiny_world["dictionary"]), "--out", str(out), "--cache_dir", str(tmp_path / "cache"), "--methods", "mcdrl",
            "--held_out", "A", "--validation_only", *[f"--set={k}={json.dumps(v)}" for k, v in TINY_SETS.items()]]
    proc = _run_cli(args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads((out / "loso.json").read_text())
    m = doc["methods"]["mcdrl"]
    assert doc["validation_only"] and m["n_test_images"] == 0 and "targets" not in doc and "dice_mean" not in m
    assert 0 <= m["validation_dice_interventional"] <= 1 and 0 <= m["validation_dice_plain"] <= 1
    assert not (out / "loso_raw").exists() and "Choose by the interventional split" in (out / "loso.md").read_text()
    assert "held-out Dice" not in proc.stdout
