"""The training engine's new parts: presence threshold selection, frozen trunk, paired batches, time budget, datalists,
post-processing, and the generator's extra training scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY

from mcdrl.engines.presence import PresenceThresholdDice, best_threshold
from mcdrl.engines.training import PrepareBatchWithClass, load_datalist, param_groups
from mcdrl.transforms import LesionPostprocess


def test_best_threshold_maximises_the_gated_dice():
    scores = np.array([0.1, 0.2, 0.6, 0.9])
    dice_kept = np.array([0.0, 0.0, 0.5, 0.8])  # the two low scorers are lesion-free frames with false alarms
    label_empty = np.array([True, True, False, False])
    t, best = best_threshold(scores, dice_kept, label_empty)
    assert 0.2 < t < 0.6 and best == pytest.approx((1 + 1 + 0.5 + 0.8) / 4)
    # emptying a lesion image costs its Dice: a threshold above 0.6 is worse
    assert np.where(scores < 0.7, label_empty, dice_kept).mean() < best
    # nothing to gain: threshold 0 (the lowest candidate on ties)
    t0, b0 = best_threshold(np.array([0.3, 0.5]), np.array([1.0, 0.9]), np.array([True, False]))
    assert t0 == 0.0 and b0 == pytest.approx(0.95)


def test_presence_metric_stores_the_threshold_in_the_network():
    net = torch.nn.Module()
    net.presence_decision = True
    net.register_buffer("presence_threshold", torch.zeros(()))
    metric = PresenceThresholdDice(net)
    metric.reset()
    one_hot = lambda m: torch.stack([1 - m, m])  # noqa: E731
    empty, lesion = torch.zeros(8, 8), torch.zeros(8, 8)
    lesion[2:5, 2:5] = 1
    false_alarm = torch.zeros(8, 8)
    false_alarm[6, 6] = 1
    metric.update(([one_hot(false_alarm), one_hot(lesion)], [one_hot(empty), one_hot(lesion)], [torch.tensor(0.2), torch.tensor(0.9)]))
    assert metric.compute() == pytest.approx(1.0)
    assert 0.2 < float(net.presence_threshold) < 0.9
    net.presence_decision = False  # without the decision: the plain mean Dice, the buffer untouched
    net.presence_threshold.fill_(0.0)
    assert metric.compute() == pytest.approx(0.5) and float(net.presence_threshold) == 0.0


def test_only_the_last_blocks_of_the_clip_encoder_train(tiny_world):
    from conftest import TINY_OVERRIDES  # noqa: F401
    from mcdrl.networks import CausalIntervention, CLIPVisualBackbone, ConfounderDictionary, MCDRLNet, RegionSelector, SegmentationHead

    bb = CLIPVisualBackbone(TINY, tiny_world["weights"])
    net = MCDRLNet(bb, ConfounderDictionary(tiny_world["dictionary"], 32), RegionSelector(0.5), CausalIntervention(32, 1, heads=2),
                   SegmentationHead(32, (16, 8), skip_channels=(4, 8)))
    groups = param_groups(net, 1e-3, 0.01, 1e-4, backbone_trainable_blocks=1)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-5)]
    trained = {n for n, p in net.backbone.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("visual.transformer.resblocks.1.", "visual.ln_post.", "visual.proj")) for n in trained)
    assert not any(p.requires_grad for p in net.backbone.visual.transformer.resblocks[0].parameters())
    assert all(p.requires_grad for p in net.head.parameters()) and all(p.requires_grad for p in net.intervention.parameters())
    param_groups(net, 1e-3, 0.01, 1e-4, backbone_trainable_blocks=None)
    assert all(p.requires_grad for p in net.backbone.parameters())
    assert len(param_groups(net, 1e-3, 0.0)) == 1 and not any(p.requires_grad for p in net.backbone.parameters())
    unet = torch.nn.Conv2d(3, 2, 3)
    assert len(param_groups(unet, 1e-3)) == 1  # a network without a CLIP backbone


def test_the_intervention_gets_its_own_group_and_a_warm_up_after_the_switch_on(tiny_world):
    """Issue 22: with intervention_lr_scale the intervention trains in a group of its own at lr x scale, and
    InterventionSchedule ramps that group's lr over warmup_epochs after the switch-on, for each optimizer step only
    (the epoch-level scheduler never sees the factor)."""
    from ignite.engine import Engine

    from mcdrl.engines.handlers import InterventionSchedule
    from mcdrl.networks import CausalIntervention, CLIPVisualBackbone, ConfounderDictionary, MCDRLNet, RegionSelector, SegmentationHead

    bb = CLIPVisualBackbone(TINY, tiny_world["weights"])
    net = MCDRLNet(bb, ConfounderDictionary(tiny_world["dictionary"], 32), RegionSelector(0.5), CausalIntervention(32, 1, heads=2),
                   SegmentationHead(32, (16, 8)))
    groups = param_groups(net, 1e-3, 0.01, 1e-4, backbone_trainable_blocks=1, intervention_lr_scale=0.1)
    named = {g.get("name"): g for g in groups}
    assert named["intervention"]["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in named["intervention"]["params"]} == {id(p) for p in net.intervention.parameters()}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # no parameter in two groups
    assert "intervention" not in {g.get("name") for g in param_groups(net, 1e-3, 0.01, 1e-4, 1)}  # off by default
    opt = torch.optim.AdamW(groups)
    seen = []
    engine = Engine(lambda e, b: seen.append((e.state.epoch, net.intervention_active, named["intervention"]["lr"], groups[0]["lr"])))
    InterventionSchedule(net, start_epoch=1, optimizer=opt, warmup_epochs=1.5).attach(engine)
    engine.run([0] * 4, max_epochs=3)  # 4 iterations an epoch: the ramp takes 6 steps after epoch 1
    ramp = [round(lr / 1e-4, 6) for epoch, on, lr, _ in seen if epoch > 1]
    assert [on for _, on, _, _ in seen] == [False] * 4 + [True] * 8
    assert ramp == [round(k / 6, 6) for k in range(1, 7)] + [1.0, 1.0]
    assert named["intervention"]["lr"] == pytest.approx(1e-4) and all(other == 1e-3 for *_, other in seen)  # restored


def test_counterfactual_pairs_make_one_batch():
    batch = {"image": torch.rand(2, 3, 8, 8), "image_cf": torch.rand(2, 3, 8, 8), "label": torch.zeros(2, 1, 8, 8), "lesion_class": torch.tensor([1, -1])}
    image, target = PrepareBatchWithClass()(batch)
    assert image.shape == (4, 3, 8, 8) and torch.equal(image[2:], batch["image_cf"]) and target["paired"] is True
    assert target["lesion_class"].tolist() == [1, -1, 1, -1] and target["label"].shape == (4, 1, 8, 8)
    image, target = PrepareBatchWithClass()({k: v for k, v in batch.items() if k != "image_cf"})
    assert image.shape == (2, 3, 8, 8) and target["paired"] is False


def test_time_budget_stops_at_an_epoch_boundary_and_records_the_time(tmp_path):
    """The budget logic on a clock the test sets: epochs of 1 s, a 5 s budget. After epoch 4 the mean says epoch 5
    ends at 5 s, within the budget; after epoch 5 the next would end at 6 s, so training stops there, at 5 s."""
    from ignite.engine import Engine

    from mcdrl.engines.handlers import TimeBudget

    now = [100.0]

    def step(engine, batch):
        now[0] += 0.5  # two iterations an epoch: 1 s an epoch

    engine = Engine(step)
    TimeBudget(5, tmp_path / "t.json", clock=lambda: now[0]).attach(engine)
    engine.run([0] * 2, max_epochs=100)
    rec = json.loads((tmp_path / "t.json").read_text())
    assert engine.state.epoch == 5 and rec == {"seconds": 5.0, "epochs": 5, "last_epoch": 5, "budget_s": 5.0,
                                                "stopped_by_budget": True}
    # a budget shorter than one epoch: the first epoch runs (there is no mean before it), then training stops
    short = Engine(step)
    TimeBudget(0.4, None, clock=lambda: now[0]).attach(short)
    short.run([0] * 2, max_epochs=100)
    assert short.state.epoch == 1
    free = Engine(lambda e, b: None)
    TimeBudget(None, tmp_path / "u.json").attach(free)
    free.run([0], max_epochs=3)
    assert free.state.epoch == 3 and json.loads((tmp_path / "u.json").read_text())["stopped_by_budget"] is False


def test_datalists_concatenate_and_a_pool_without_validation_adds_none(tmp_path):
    from PIL import Image

    for name, splits in (("a", ("training", "validation")), ("b", ("training",))):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "x.png")
        (tmp_path / name / "datalist.json").write_text(json.dumps({s: [{"image": "x.png", "label": "x.png", "site": name}] for s in splits}))
    both = [tmp_path / "a" / "datalist.json", tmp_path / "b" / "datalist.json"]
    assert [d["site"] for d in load_datalist(both, "training")] == ["a", "b"]
    assert [d["site"] for d in load_datalist(both, "validation")] == ["a"]
    with pytest.raises(Exception, match="validation"):
        load_datalist(both[1], "validation")  # one file without the split is still an error


def test_lesion_postprocess_removes_small_components_and_keeps_the_largest():
    m = torch.zeros(1, 40, 40, dtype=torch.uint8)
    m[0, 2:4, 2:4] = 1  # 4 px = 0.25% of the image
    m[0, 10:30, 10:30] = 1  # 400 px
    m[0, 35:39, 35:39] = 1  # 16 px = 1%
    assert int(LesionPostprocess(0.005)(m).sum()) == 416
    assert int(LesionPostprocess(0.0, keep_largest=True)(m).sum()) == 400
    assert int(LesionPostprocess()(m).sum()) == 420  # off by default
    np_out = LesionPostprocess(0.005)(m[0].numpy())
    assert isinstance(np_out, np.ndarray) and np_out.shape == (40, 40) and int(np_out.sum()) == 416


def test_extra_training_scenes_leave_the_first_cases_and_their_split_unchanged(tmp_path):
    from mcdrl.synthetic import generate_dataset

    small = json.loads(generate_dataset(tmp_path / "s", ["A", "D"], 5, seed=3, size=48).read_text())
    big = json.loads(generate_dataset(tmp_path / "b", ["A", "D"], 5, seed=3, size=48, extra_training=3).read_text())
    assert [e["id"] for e in big["validation"]] == [e["id"] for e in small["validation"]]
    assert [e["id"] for e in big["training"] if int(e["id"][2:]) < 5] == [e["id"] for e in small["training"]]
    assert len(big["training"]) == len(small["training"]) + 2 * 3 and big["extra_training_per_site"] == 3
    for e in small["training"]:
        assert (tmp_path / "s" / e["image"]).read_bytes() == (tmp_path / "b" / e["image"]).read_bytes()


class _Unpicklable(torch.nn.Module):
    """A real object torch.save cannot write (a lambda in its state): the save fails part-way."""

    def state_dict(self, *args, **kwargs):
        return {"weight": torch.ones(1000), "hook": lambda: 0}


def _run_saver(save_dir, save_dict, scores):
    from ignite.engine import Engine, Events

    from mcdrl.engines.handlers import AtomicCheckpointSaver

    engine = Engine(lambda e, b: None)
    values = iter(scores)

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(e):
        e.state.key_metric_name = "dice"
        e.state.metrics["dice"] = next(values)
        for p in save_dict["model"].parameters():
            p.data.fill_(e.state.epoch)  # each epoch's weights are recognisable

    AtomicCheckpointSaver(save_dir=str(save_dir), save_dict=save_dict, save_key_metric=True, key_metric_filename="model.pt").attach(engine)
    engine.run([0], max_epochs=len(scores))


def test_the_model_saver_writes_model_pt_atomically_and_a_failed_save_keeps_the_old_one(tmp_path):
    import monai

    from mcdrl.engines.handlers import AtomicCheckpointSaver

    assert issubclass(AtomicCheckpointSaver, monai.handlers.CheckpointSaver)  # the configs' isinstance checks still see it
    net = torch.nn.Linear(2, 1)
    _run_saver(tmp_path, {"model": net}, [0.1, 0.5, 0.3])  # the best is epoch 2
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.equal(saved["weight"], torch.full((1, 2), 2.0))
    before = (tmp_path / "model.pt").read_bytes()

    with pytest.raises(Exception):
        _run_saver(tmp_path, {"model": _Unpicklable()}, [0.9])
    assert (tmp_path / "model.pt").read_bytes() == before  # not truncated, not removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left behind
