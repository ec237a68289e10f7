"""Crash and resume, determinism: real `monai.bundle run training` subprocesses on tiny data.

Concurrently: an uninterrupted 3-epoch reference run; a run SIGKILLed in the middle of epoch 2 (after the epoch-1
checkpoint), then restarted at once (resume="auto"); two identical 1-epoch runs. After the reference: a copy of it
with its newest checkpoint truncated (as a kill during the write would leave it, were writes not atomic), resumed. Then, in this process, the reference's checkpoint offered to networks of other configurations.
Each process start costs ~10 s of imports on the shared CPUs, so the runs are few and concurrent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import INTERVENTION_ON, PYTHON, REPO, make_tiny_dataset, tiny_train_overrides

TRAIN = str(REPO / "bundle" / "configs" / "train.json")
EPOCHS = 3
ITERS = 6  # 12 training images, batch 2


def _cmd(overrides: dict) -> list[str]:
    cmd = [PYTHON, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN]
    for k, v in overrides.items():
        cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    return cmd


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _start(overrides: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(_cmd(overrides), stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env=_env())


def _finish(proc: subprocess.Popen, log: Path, timeout: int = 400) -> str:
    proc.wait(timeout=timeout)
    return log.read_text()


def _records(root: Path) -> list[dict]:
    f = root / "runs" / "train" / "loss_terms.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def _ckpt(root: Path, epoch: int) -> dict:
    return torch.load(root / "runs" / "train" / "checkpoints" / f"checkpoint_epoch{epoch:04d}.pt", map_location="cpu", weights_only=True)


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def runs(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    data = make_tiny_dataset(tmp / "data12", n_train=12, n_val=2).parent
    roots = {name: tmp / name for name in ("ref", "killed", "det_a", "det_b")}
    for r in roots.values():
        r.mkdir()
    base = dict(dataset_dir=str(data), max_epochs=EPOCHS, causal_start_epoch=1, **INTERVENTION_ON)  # intervention switches on at epoch 2
    t0 = time.time()
    procs = {
        "ref": _start(tiny_train_overrides(tiny_world, roots["ref"], **base), tmp / "ref.log"),
        "det_a": _start(tiny_train_overrides(tiny_world, roots["det_a"], **{**base, "max_epochs": 1}), tmp / "det_a.log"),
        "det_b": _start(tiny_train_overrides(tiny_world, roots["det_b"], **{**base, "max_epochs": 1}), tmp / "det_b.log"),
    }
    # the run to kill: read its log live and SIGKILL it in the middle of epoch 2
    killed = subprocess.Popen(_cmd(tiny_train_overrides(tiny_world, roots["killed"], **base)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tmp, env=_env(), start_new_session=True)
    kill_log, kill_state = [], {}
    for line in killed.stdout:
        kill_log.append(line)
        if f"Epoch: 2/{EPOCHS}, Iter: 2/{ITERS}" in line:
            ckdir = roots["killed"] / "runs" / "train" / "checkpoints"
            kill_state["checkpoints_at_kill"] = sorted(p.name for p in ckdir.glob("*.pt"))
            kill_state["records_at_kill"] = _records(roots["killed"])
            os.killpg(killed.pid, signal.SIGKILL)
            break
    killed.stdout.close()
    killed.wait(timeout=60)
    assert "checkpoints_at_kill" in kill_state, "the run to kill ended before epoch 2:\n" + "".join(kill_log)[-3000:]
    kill_state["returncode"] = killed.returncode
    kill_state["log"] = "".join(kill_log)
    epoch1 = _ckpt(roots["killed"], 1)["model"]
    resumed = _start(tiny_train_overrides(tiny_world, roots["killed"], **base), tmp / "resumed.log")  # restart at once
    logs = {k: _finish(p, tmp / f"{k}.log") for k, p in procs.items()}
    for k, p in procs.items():
        assert p.returncode == 0, f"{k} failed:\n{logs[k][-3000:]}"

    # phase 2: resume a copy of the reference whose newest checkpoint is truncated
    trunc = tmp / "truncated"
    shutil.copytree(roots["ref"], trunc)
    newest = trunc / "runs" / "train" / "checkpoints" / f"checkpoint_epoch{EPOCHS:04d}.pt"
    with open(newest, "r+b") as f:
        f.truncate(newest.stat().st_size // 2)
    (newest.parent / f".checkpoint_epoch{EPOCHS + 1:04d}.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    procs = {"resumed": resumed, "truncated": _start(tiny_train_overrides(tiny_world, trunc, **base), tmp / "truncated.log")}
    logs.update({k: _finish(p, tmp / f"{k}.log") for k, p in procs.items()})
    print(f"resume test runs: {time.time() - t0:.1f} s")
    return {"roots": {**roots, "truncated": trunc}, "logs": logs, "world": tiny_world, "data": data, "rc": {k: p.returncode for k, p in procs.items()},
            "kill": kill_state, "epoch1_of_killed": epoch1}


def test_kill_mid_epoch_then_resume_matches_uninterrupted_run(runs):
    kill, roots, logs = runs["kill"], runs["roots"], runs["logs"]
    assert kill["returncode"] == -signal.SIGKILL
    assert kill["checkpoints_at_kill"] == ["checkpoint_epoch0001.pt"], kill["checkpoints_at_kill"]
    assert [r["epoch"] for r in kill["records_at_kill"]] == [1]  # killed during epoch 2
    assert runs["rc"]["resumed"] == 0, logs["resumed"][-3000:]
    assert "resumed from" in logs["resumed"] and "checkpoint_epoch0001.pt: epoch 1 (iteration 6) done" in logs["resumed"]
    assert "Epoch: 1/" not in logs["resumed"]  # epoch 1 is not trained again
    # every epoch exactly once in the appended metrics file, with the same numbers as without the crash
    ref, res = _records(roots["ref"]), _records(roots["killed"])
    assert [r["epoch"] for r in res] == [1, 2, 3]
    assert [r["intervention"] for r in res] == [False, True, True]
    assert res == ref
    # bit-identical final weights, optimizer moments and best-metric model
    a, b = _ckpt(roots["ref"], EPOCHS), _ckpt(roots["killed"], EPOCHS)
    _assert_same_tensors(a["model"], b["model"])
    assert a["iteration"] == b["iteration"] == EPOCHS * ITERS
    assert a["intervention"] == b["intervention"] == {"active": True, "use_intervention": True}
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    _assert_same_tensors(torch.load(roots["ref"] / "models" / "model.pt", weights_only=True), torch.load(roots["killed"] / "models" / "model.pt", weights_only=True))
    # the last two checkpoints are kept
    names = sorted(p.name for p in (roots["killed"] / "runs" / "train" / "checkpoints").glob("*.pt"))
    assert names == ["checkpoint_epoch0002.pt", "checkpoint_epoch0003.pt"]


def test_truncated_checkpoint_falls_back_to_previous(runs):
    roots, log = runs["roots"], runs["logs"]["truncated"]
    assert runs["rc"]["truncated"] == 0, log[-3000:]
    assert "WARNING" in log and "checkpoint_epoch0003.pt is unreadable" in log and "falling back to checkpoint_epoch0002.pt" in log
    assert "interrupted" in log  # the stray temporary file of a killed write is removed, never loaded
    assert not list((roots["truncated"] / "runs" / "train" / "checkpoints").glob(".*.tmp"))
    assert "checkpoint_epoch0002.pt: epoch 2 (iteration 12) done" in log
    assert [r["epoch"] for r in _records(roots["truncated"])] == [1, 2, 3]
    assert _records(roots["truncated"]) == _records(roots["ref"])
    _assert_same_tensors(_ckpt(roots["truncated"], EPOCHS)["model"], _ckpt(roots["ref"], EPOCHS)["model"])


@pytest.mark.parametrize("change, expected", [
    ({"decoder_channels": [16, 4]}, r"head\.stages\.1\.conv\.weight: checkpoint shape/dtype \[\[8, 20, 3, 3\], 'float32'\], this network \[\[4, 20, 3, 3\]"),  # 16 + the 4 skip channels
    ({"intervention_heads": 4}, r"intervention\.layers\.0\.heads: checkpoint 2, this network 4"),  # same shapes, other config
])
def test_checkpoint_of_another_network_is_refused(runs, tmp_path, change, expected):
    from ignite.engine import Engine
    from monai.bundle import ConfigParser

    from mcdrl.engines.checkpointing import ResumableCheckpointer

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update(tiny_train_overrides(runs["world"], tmp_path, dataset_dir=str(runs["data"]), **change))
    net, opt = parser.get_parsed_content("network"), parser.get_parsed_content("optimizer")
    ckdir = tmp_path / "checkpoints"
    shutil.copytree(runs["roots"]["ref"] / "runs" / "train" / "checkpoints", ckdir)
    handler = ResumableCheckpointer(ckdir, net, opt)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    with pytest.raises(ValueError, match="was saved by a different network configuration") as err:
        engine.run([0], max_epochs=EPOCHS + 1)
    assert re.search(expected, str(err.value)), str(err.value)
    assert "checkpoint_epoch0003.pt" in str(err.value) and "--resume false" in str(err.value)
    assert handler.resumed_from is None


def test_same_seed_gives_identical_weights(runs):
    roots = runs["roots"]
    a = torch.load(roots["det_a"] / "models" / "model.pt", weights_only=True)
    b = torch.load(roots["det_b"] / "models" / "model.pt", weights_only=True)
    _assert_same_tensors(a, b)
    # and the same as the first epoch of the 3-epoch run that was later killed (the LR only changes after epoch 1)
    _assert_same_tensors(a, runs["epoch1_of_killed"])
    assert _records(roots["det_a"]) == _records(roots["det_b"])


# ---- in-process unit checks of the handler's decisions (real ignite engine, a small network) ---------------------------
def _engine_and_handler(tmp_path: Path, resume="auto", hidden: int = 4, metrics: Path | None = None, key_metric: list | None = None):
    from ignite.engine import Engine, Events
    from monai.handlers import CheckpointSaver

    from mcdrl.engines.checkpointing import ResumableCheckpointer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)

    def step(engine, batch):
        opt.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        opt.step()
        return float(loss.detach())

    engine = Engine(step)
    savers = []
    if key_metric is not None:  # the bundle's best-model saver: model.pt replaced only by a better metric
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(m=key_metric[e.state.epoch - 1]))
        savers.append(CheckpointSaver(save_dir=str(tmp_path / "models"), save_dict={"model": net}, save_key_metric=True,
                                      key_metric_name="m", key_metric_filename="model.pt"))
        savers[0].attach(engine)
    handler = ResumableCheckpointer(tmp_path / "checkpoints", net, opt, resume=resume, metrics_files=[metrics] if metrics else [], key_metric_savers=savers)
    handler.attach(engine)
    return engine, handler, net


def test_resume_true_without_checkpoint_is_an_error(tmp_path):
    engine, _, _ = _engine_and_handler(tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="holds no readable checkpoint"):
        engine.run([torch.rand(2, 3)] * 2, max_epochs=1)


def test_bare_state_dict_is_not_a_resume_checkpoint(tmp_path):
    from mcdrl.engines.checkpointing import load_checkpoint

    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not an MCDRL resume checkpoint"):
        load_checkpoint(tmp_path / "model.pt")


def test_fresh_start_moves_old_run_aside_and_resume_trims_metrics(tmp_path):
    metrics = tmp_path / "loss_terms.jsonl"
    engine, handler, _ = _engine_and_handler(tmp_path, metrics=metrics)
    engine.run([torch.rand(2, 3)] * 2, max_epochs=3)
    assert len(list(handler.dir.glob("*.pt"))) == 2
    # records of epochs 1-3 plus a torn line: resuming from a copy of the epoch-2 checkpoint keeps epochs 1-2 only
    metrics.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2, 3)) + '{"epoch": 4, "lo')
    (handler.dir / "checkpoint_epoch0003.pt").unlink()
    engine2, handler2, _ = _engine_and_handler(tmp_path, metrics=metrics)
    engine2.run([torch.rand(2, 3)] * 2, max_epochs=2)
    assert handler2.resumed_from.name == "checkpoint_epoch0002.pt" and engine2.state.epoch == 2
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [1, 2]
    # resume=False: a new run; old checkpoints and metrics are moved aside, not mixed in
    engine3, handler3, _ = _engine_and_handler(tmp_path, resume=False, metrics=metrics)
    engine3.run([torch.rand(2, 3)] * 2, max_epochs=1)
    assert handler3.resumed_from is None
    assert [p.name for p in handler3.dir.glob("*.pt")] == ["checkpoint_epoch0001.pt"]
    assert [p.name for p in handler3.dir.glob("superseded-*/*.pt")] == ["checkpoint_epoch0002.pt"]
    assert len(list(tmp_path.glob("loss_terms.superseded-*.jsonl"))) == 1
    # a different hidden size: refused, naming the weights
    engine4, _, _ = _engine_and_handler(tmp_path, hidden=5)
    with pytest.raises(ValueError, match=r"0\.weight: checkpoint shape/dtype \[\[4, 3\], 'float32'\], this network \[\[5, 3\], 'float32'\]"):
        engine4.run([torch.rand(2, 3)] * 2, max_epochs=2)


def test_best_model_tracking_survives_resume(tmp_path, caplog):
    metric = [0.5, 0.9, 0.7]  # the best model is epoch 2's; epoch 3 must not replace it after a resume
    engine, _, net = _engine_and_handler(tmp_path, key_metric=metric)
    engine.run([torch.rand(2, 3)] * 2, max_epochs=2)
    best = {k: v.clone() for k, v in net.state_dict().items()}
    engine2, handler2, net2 = _engine_and_handler(tmp_path, key_metric=metric)
    engine2.run([torch.rand(2, 3)] * 2, max_epochs=3)
    assert handler2.resumed_from.name == "checkpoint_epoch0002.pt"
    _assert_same_tensors(torch.load(tmp_path / "models" / "model.pt", weights_only=True), best)
    # model.pt lost (a kill while MONAI rewrote it): forgotten with a warning, the next validation writes it again
    (tmp_path / "models" / "model.pt").unlink()
    (tmp_path / "checkpoints" / "checkpoint_epoch0003.pt").unlink()
    engine3, _, net3 = _engine_and_handler(tmp_path, key_metric=metric)
    with caplog.at_level("WARNING", logger="mcdrl.engines.checkpointing"):
        engine3.run([torch.rand(2, 3)] * 2, max_epochs=3)
    assert "best-metric model file(s)" in caplog.text and "model.pt" in caplog.text
    _assert_same_tensors(torch.load(tmp_path / "models" / "model.pt", weights_only=True), net3.state_dict())
