"""multi_gpu_train.json under a real `torchrun --nproc_per_node=2` on the CPU (gloo), against a single-process run.

Which process writes which file is recorded by an audit hook (``sys.addaudithook`` for Python-level opens, renames and
removals, plus a wrapper of torch.save's C++ file writer) installed through a ``sitecustomize.py`` on PYTHONPATH: a
test-only observer, the training code is unchanged.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import INTERVENTION_ON, PYTHON, REPO, make_tiny_dataset, tiny_train_overrides

CONFIGS = "['{}','{}']".format(REPO / "bundle" / "configs" / "train.json", REPO / "bundle" / "configs" / "multi_gpu_train.json")
TORCHRUN = [PYTHON, "-m", "torch.distributed.run"]
EPOCHS = 2

AUDIT = textwrap.dedent('''
    import os, sys
    _root = os.environ.get("MCDRL_AUDIT_ROOT")
    if _root:
        _root = os.path.realpath(_root)
        _out = open(os.path.join(os.environ["MCDRL_AUDIT_DIR"], "writes-rank%s-%d.log" % (os.environ.get("RANK", "launcher"), os.getpid())), "a", buffering=1)
        _state = {"patched": False, "busy": False}

        def _note(kind, path):
            if isinstance(path, int):
                return
            p = os.path.realpath(os.fsdecode(path))
            if p.startswith(_root) and "__pycache__" not in p:
                _out.write(kind + " " + p + "\\n")

        def _patch_torch():
            ser = sys.modules.get("torch.serialization")
            cls = getattr(ser, "_open_zipfile_writer_file", None)
            if cls is None:
                return
            _state["patched"] = True
            orig = cls.__init__
            def init(self, name, *a, **k):
                _note("torch.save", name)
                orig(self, name, *a, **k)
            cls.__init__ = init

        def _hook(event, args):
            if _state["busy"]:
                return
            _state["busy"] = True
            try:
                if not _state["patched"]:
                    _patch_torch()
                if event == "open":
                    path, mode, flags = args
                    if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                        _note("open", path)
                elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate"):
                    _note(event, args[0])
                    if event == "os.rename":
                        _note(event, args[1])
            finally:
                _state["busy"] = False

        sys.addaudithook(_hook)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    return out


def _env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def _start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env=env)


def _records(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "runs" / "train" / "loss_terms.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp(tiny_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data8 = make_tiny_dataset(tmp / "data8", n_train=8, n_val=3).parent  # 3 validation images: uneven shards over 2 ranks
    data7 = make_tiny_dataset(tmp / "data7", n_train=7, n_val=2).parent
    audit_dir, site = tmp / "audit", tmp / "site"
    audit_dir.mkdir()
    site.mkdir()
    (site / "sitecustomize.py").write_text(AUDIT)
    roots = {k: tmp / k for k in ("ddp", "single", "norank", "rdzv", "uneven")}
    for r in roots.values():
        r.mkdir()
    common = dict(max_epochs=EPOCHS, causal_start_epoch=1, **INTERVENTION_ON)
    torchrun2 = [*TORCHRUN, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run", "training", "--config_file", CONFIGS]
    same_batches = {  # the single-process run draws the same global batches: one DistributedSampler permutation, batch 2 x 2
        "train#dataloader#sampler": "$mcdrl.engines.distributed.train_sampler(@train#dataset, seed=@seed)",
        "train#dataloader#shuffle": "$False",
    }
    procs = {
        "ddp": _start([*torchrun2, *_args(tiny_train_overrides(tiny_world, roots["ddp"], dataset_dir=str(data8), batch_size=2, **common))], tmp / "ddp.log",
                      _env(PYTHONPATH=str(site), MCDRL_AUDIT_ROOT=str(roots["ddp"]), MCDRL_AUDIT_DIR=str(audit_dir))),
        "single": _start([PYTHON, "-m", "monai.bundle", "run", "training", "--config_file", str(REPO / "bundle" / "configs" / "train.json"),
                          *_args(tiny_train_overrides(tiny_world, roots["single"], dataset_dir=str(data8), batch_size=4, **common, **same_batches))], tmp / "single.log", _env()),
        # bad input: the DDP config without torchrun; a rendezvous that never completes; 7 images over 2 processes
        "norank": _start([PYTHON, "-m", "monai.bundle", "run", "training", "--config_file", CONFIGS,
                          *_args(tiny_train_overrides(tiny_world, roots["norank"], dataset_dir=str(data8)))], tmp / "norank.log", _env()),
        "rdzv": _start([*TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{_free_port()}", "--rdzv_conf=join_timeout=5",
                        "-m", "monai.bundle", "run", "training", "--config_file", CONFIGS, *_args(tiny_train_overrides(tiny_world, roots["rdzv"], dataset_dir=str(data8)))],
                       tmp / "rdzv.log", _env()),
        "uneven": _start([*torchrun2, *_args(tiny_train_overrides(tiny_world, roots["uneven"], dataset_dir=str(data7), **common))], tmp / "uneven.log", _env()),
    }
    procs["ddp"].wait(timeout=500)
    # resume the finished 2-process run for one more epoch, under torchrun again (all ranks load; rank 0 trims and writes)
    procs["ddp_resumed"] = _start([*torchrun2, *_args(tiny_train_overrides(tiny_world, roots["ddp"], dataset_dir=str(data8), batch_size=2,
                                                                        **{**common, "max_epochs": EPOCHS + 1}))], tmp / "ddp_resumed.log",
                                  _env(PYTHONPATH=str(site), MCDRL_AUDIT_ROOT=str(roots["ddp"]), MCDRL_AUDIT_DIR=str(audit_dir)))
    for p in procs.values():
        p.wait(timeout=500)
    logs = {k: (tmp / f"{k}.log").read_text() for k in procs}
    writes: dict[str, list[str]] = {}
    for f in audit_dir.glob("writes-*.log"):
        who = f.name.split("-")[1]
        writes.setdefault(who, []).extend(f.read_text().splitlines())
    return {"rc": {k: p.returncode for k, p in procs.items()}, "logs": logs, "roots": roots, "writes": writes}


def test_two_process_run_finishes_with_identical_replicas(ddp):
    log = ddp["logs"]["ddp"]
    assert ddp["rc"]["ddp"] == 0, log[-4000:]
    assert "DDP: 2 processes, backend gloo" in log
    m = re.search(r"all 2 ranks hold identical weights: sha256 per rank \['([0-9a-f]{64})', '([0-9a-f]{64})'\]", log)
    assert m and m.group(1) == m.group(2), log[-3000:]
    # the digest both ranks reported is that of the weights rank 0 saved after the last epoch
    from mcdrl.engines.run_state import state_dict_digest

    final = torch.load(ddp["roots"]["ddp"] / "runs" / "train" / "checkpoints" / f"checkpoint_epoch{EPOCHS:04d}.pt", weights_only=True)
    assert final["world_size"] == 2 and len(final["rng"]) == 2
    assert state_dict_digest(final["model"]) == m.group(1)
    # model.pt is a bare state_dict without DDP's "module." prefix
    model = torch.load(ddp["roots"]["ddp"] / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in model) and model.keys() == final["model"].keys()
    assert "destroy_process_group() was not called" not in log  # finalize tore the process group down


def test_two_process_run_resumes(ddp):
    log = ddp["logs"]["ddp_resumed"]
    assert ddp["rc"]["ddp_resumed"] == 0, log[-4000:]
    assert f"checkpoint_epoch{EPOCHS:04d}.pt: epoch {EPOCHS} (iteration 4) done, continuing with epoch {EPOCHS + 1}" in log, log[-4000:]
    assert re.search(r"all 2 ranks hold identical weights: sha256 per rank \['([0-9a-f]{64})', '\1'\]", log), log[-4000:]
    records = _records(ddp["roots"]["ddp"])
    assert [r["epoch"] for r in records] == [1, 2, 3], (records, log[-3000:])
    final = torch.load(ddp["roots"]["ddp"] / "runs" / "train" / "checkpoints" / f"checkpoint_epoch{EPOCHS + 1:04d}.pt", weights_only=True)
    assert final["iteration"] == 6 and final["world_size"] == 2, ({k: final[k] for k in ("iteration", "world_size", "epoch") if k in final}, log[-3000:])


def test_only_rank_zero_writes(ddp):
    writes = ddp["writes"]
    root = str(ddp["roots"]["ddp"].resolve())
    assert set(writes) >= {"rank0", "rank1"}, f"audit hook did not run in both workers: {sorted(writes)}"
    assert writes["rank1"] == [], writes["rank1"][:10]
    assert not writes.get("ranklauncher"), writes.get("ranklauncher")
    rank0 = "\n".join(writes["rank0"])
    for expected in ("models/model.pt", "runs/train/loss_terms.jsonl", "checkpoint_epoch0001.pt", "checkpoint_epoch0002.pt", "checkpoint_epoch0003.pt"):
        assert f"{root}/{expected}" in rank0 or expected in rank0, f"rank 0 did not write {expected}"
    # model.pt is written to a temporary file beside it, then renamed over it (AtomicCheckpointSaver)
    assert f"open {root}/models/.model.pt." in rank0 and f"os.rename {root}/models/model.pt" in rank0


def test_loss_curve_matches_single_process_with_same_global_batch(ddp):
    assert ddp["rc"]["single"] == 0, ddp["logs"]["single"][-3000:]
    d, s = _records(ddp["roots"]["ddp"])[:EPOCHS], _records(ddp["roots"]["single"])  # [:EPOCHS]: before the resumed epoch
    assert [r["epoch"] for r in d] == [r["epoch"] for r in s] == [1, 2]
    assert [r["iteration"] for r in d] == [r["iteration"] for r in s] == [2, 4]  # same number of optimizer steps
    assert [r["intervention"] for r in d] == [False, True]
    for rd, rs in zip(d, s):
        # DDP logs rank 0's half of each global batch and draws its own augmentations, so the curves agree closely,
        # not exactly (measured: within 2 %)
        for key in ("loss_seg", "loss_total"):
            assert abs(rd[key] - rs[key]) <= 0.05 * abs(rs[key]), (key, rd, rs)
    print("ddp vs single loss_total:", [(r["loss_total"], q["loss_total"]) for r, q in zip(d, s)])


def test_without_torchrun_is_a_clear_error(ddp):
    log = ddp["logs"]["norank"]
    assert ddp["rc"]["norank"] != 0
    assert "must be launched by torchrun" in log and "RANK" in log and "--nproc_per_node" in log
    assert not (ddp["roots"]["norank"] / "runs").exists()


def test_missing_rendezvous_times_out_with_an_error(ddp):
    log = ddp["logs"]["rdzv"]
    assert ddp["rc"]["rdzv"] != 0
    assert "RendezvousTimeoutError" in log
    assert not (ddp["roots"]["rdzv"] / "runs").exists()


def test_world_size_that_does_not_divide_the_data_is_a_clear_error(ddp):
    log = ddp["logs"]["uneven"]
    assert ddp["rc"]["uneven"] != 0
    assert "the training data has 7 samples, which world size 2 does not divide" in log
    assert "--ddp_uneven_data" in log
    assert not (ddp["roots"]["uneven"] / "runs").exists()


def test_train_sampler_shards_form_the_global_batches():
    from mcdrl.engines.distributed import train_sampler

    data = list(range(8))
    single = list(train_sampler(data, seed=3, num_replicas=1, rank_=0))
    r0, r1 = list(train_sampler(data, seed=3, num_replicas=2, rank_=0)), list(train_sampler(data, seed=3, num_replicas=2, rank_=1))
    for k in range(2):  # global batch k of 4 == rank 0's batch k of 2 + rank 1's batch k of 2
        assert sorted(single[4 * k: 4 * k + 4]) == sorted(r0[2 * k: 2 * k + 2] + r1[2 * k: 2 * k + 2])
    with pytest.raises(ValueError, match="7 samples, which world size 2 does not divide"):
        train_sampler(list(range(7)), num_replicas=2, rank_=0)
    assert len(list(train_sampler(list(range(7)), num_replicas=2, rank_=1, uneven="drop"))) == 3


FINALIZE = textwrap.dedent('''
    import logging, os, sys, torch
    import torch.distributed as dist
    from mcdrl.engines import distributed
    logging.basicConfig(level=logging.INFO)
    distributed.init_distributed("gloo", 60)
    torch.manual_seed(0 if sys.argv[1] == "same" else distributed.rank())
    net = torch.nn.Linear(3, 2)
    dist.all_gather_object([None] * distributed.world_size(), "x")  # a gloo collective with Python tensors, as the metric gather
    digest = distributed.check_replicas_in_sync(net, 60)
    distributed.teardown(60)
    with open(f"rank{os.environ['RANK']}.txt", "w") as f:
        f.write(f"{digest} {dist.is_initialized()}")
''')


@pytest.mark.parametrize("weights", ["same", "diverged"])
def test_finalize_compares_replicas_and_destroys_the_group(weights, tmp_path):
    """check_replicas_in_sync and teardown through the rendezvous store: identical replicas pass on every rank and the
    group is gone after teardown; diverged replicas fail the run with each rank's digest."""
    script = tmp_path / "finalize.py"
    script.write_text(FINALIZE)
    proc = subprocess.run([*TORCHRUN, "--standalone", "--nnodes=1", "--nproc_per_node=2", str(script), weights],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env())
    out = proc.stdout + proc.stderr
    if weights == "same":
        assert proc.returncode == 0, out[-3000:]
        ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
        assert ranks[0] == ranks[1] and re.fullmatch(r"[0-9a-f]{64}", ranks[0][0]), ranks
        assert ranks[0][1] == "False"  # teardown destroyed the process group
        assert f"all 2 ranks hold identical weights: sha256 per rank ['{ranks[0][0]}', '{ranks[0][0]}']" in out, out[-3000:]
    else:
        assert proc.returncode != 0, out[-3000:]
        assert re.search(r"DDP replicas diverged: weight sha256 per rank \['[0-9a-f]{12}', '[0-9a-f]{12}'\]", out), out[-3000:]
