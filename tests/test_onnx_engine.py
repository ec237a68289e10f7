"""The onnxruntime engine (mcdrl.deploy.onnx_engine): the folder runner and MONAI Label's inferer on the exported graph.

The shipped model (a trained network, so that masks mean something) segments a few synthetic frames of held-out
site F and of training sites with both engines: per-image Dice >= 0.999 against eager, the same presence decision
on every frame, lesion scores within 1e-3. Then the graph's life cycle: exported on first use next to model.pt with
the weights' sha256, exported again when the weights, the options or the file go bad, refused with a message when it
cannot be written, and one line when onnxruntime is missing. No test here times anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE, bundle_cli

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from mcdrl.deploy.onnx_engine import OnnxRuntimeNetwork, engine_network, onnx_path_for  # noqa: E402
from mcdrl.errors import ConfigError, MissingDependencyError  # noqa: E402

#: a few frames of held-out site F and of training sites (mcdrl.synthetic), at the demo frames' size
FRAMES = [("F", s) for s in range(4)] + [("A", 1), ("C", 2), ("E", 3)]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A copy of the bundle with the shipped model, and a folder of synthetic frames."""
    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("no shipped bundle/models/model.pt")
    from PIL import Image

    from mcdrl.synthetic import SITES, sample_case

    root = tmp_path_factory.mktemp("engine")
    bundle = root / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("runs", "eval", "previous", "*.onnx", "model.ts", "__pycache__"))
    frames = root / "frames"
    frames.mkdir()
    for site, seed in FRAMES:
        Image.fromarray(sample_case(SITES[site], seed).image).save(frames / f"{site}{seed}.png")
    return bundle, frames


def _parser(bundle: Path, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')", **overrides})
    return parser


def _run_folder(bundle: Path, frames: Path, out: Path, engine: str):
    runner = _parser(bundle, engine=engine, output_dir=str(out), strict=False).get_parsed_content("folder_runner")
    results = {r.case: r for r in runner.run(frames)}
    assert all(r.status == "ok" for r in results.values()), [r.reason for r in results.values()]
    masks = {c: np.asarray(__import__("PIL.Image").Image.open(out / f"{c}_mask.png")) for c in results}
    return runner, results, masks


def test_folder_runner_onnxruntime_masks_match_eager(shipped, tmp_path):
    bundle, frames = shipped
    _, eager, eager_masks = _run_folder(bundle, frames, tmp_path / "torch", "torch")
    runner, ort, ort_masks = _run_folder(bundle, frames, tmp_path / "ort", "onnxruntime")
    assert isinstance(runner.network, OnnxRuntimeNetwork)
    threshold = float(runner.network.network.presence_threshold)
    assert any(m.any() for m in eager_masks.values())  # the comparison is not between empty masks only
    for case in eager:
        assert _dice(eager_masks[case], ort_masks[case]) >= 0.999, case
        assert abs(eager[case].lesion_score - ort[case].lesion_score) <= 1e-3, case
        assert (eager[case].lesion_score >= threshold) == (ort[case].lesion_score >= threshold), case  # the presence decision
        assert eager[case].top_confounders[0][0] == ort[case].top_confounders[0][0]
    # the graph was exported on first use, next to model.pt, naming the weights' sha256
    graph = bundle / "models" / "model.onnx"
    meta = {p.key: p.value for p in onnx.load(str(graph), load_external_data=False).metadata_props}
    assert meta["weights_sha256"] == hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert [o.name for o in onnx.load(str(graph)).graph.output] == ["pred", "confounder_weights", "lesion_score"]
    assert json.loads(meta["graph_options"])["presence_decision"] is True


def test_int8_engine_is_quantised_and_segments(shipped, tmp_path):
    """int8 is an option: its graph really is quantised and it segments every frame; its Dice cost is measured on
    validation and held-out F by ``make engine-dice`` (not asserted here)."""
    bundle, frames = shipped
    _, eager, eager_masks = _run_folder(bundle, frames, tmp_path / "torch", "torch")
    _, int8, int8_masks = _run_folder(bundle, frames, tmp_path / "int8", "onnxruntime-int8")
    graph = onnx.load(str(bundle / "models" / "model.int8.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, sorted(ops)
    assert "int8" in {p.key: p.value for p in graph.metadata_props}["quantization"]
    assert set(int8) == set(eager) and all(int8_masks[c].shape == eager_masks[c].shape for c in eager)
    assert any(abs(int8[c].lesion_score - eager[c].lesion_score) > 0 for c in eager)  # it is not the fp32 graph


def _state_with_threshold(bundle: Path, value: float) -> None:
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    state["presence_threshold"] = torch.tensor(value)
    torch.save(state, bundle / "models" / "model.pt")


def test_stale_or_bad_graph_is_rebuilt_never_used(shipped, tmp_path, caplog):
    bundle = tmp_path / "bundle"
    shutil.copytree(shipped[0], bundle, ignore=shutil.ignore_patterns("*.onnx"))
    parser = _parser(bundle)
    net = parser.get_parsed_content("network_def").eval()
    model = bundle / "models" / "model.pt"
    net.load_state_dict(torch.load(model, weights_only=True))
    served = OnnxRuntimeNetwork(net, model, "onnxruntime")
    x = torch.rand(2, 3, 200, 240, generator=torch.Generator().manual_seed(0))

    def agrees():
        with torch.no_grad():
            ref = net.predict_with_confounders(x, with_score=True)
        got = served.predict_with_confounders(x, with_score=True)
        return all((a - b).abs().max().item() <= 2e-3 for a, b in zip(ref, got))

    caplog.set_level(logging.WARNING, "mcdrl.deploy.onnx_engine")
    assert agrees() and "no ONNX graph yet; exporting it from model.pt" in caplog.text
    # new weights (a threshold above every score empties every mask): the graph is exported again
    _state_with_threshold(bundle, 1.5)
    caplog.clear()
    assert (served(x).argmax(1) == 0).all()  # every mask emptied by the presence decision
    assert "exported from weights sha256" in caplog.text
    net.load_state_dict(torch.load(model, weights_only=True))
    assert agrees()
    # another option (MTRS alpha, as MONAI Label sets per request): exported again, still equal to eager
    net.selector.alpha = 0.3
    caplog.clear()
    assert agrees() and "other network options" in caplog.text
    # a corrupt file, and a foreign graph without the weights' sha256: both are rebuilt, not used
    served._session = None
    (bundle / "models" / "model.onnx").write_bytes(b"not an onnx file")
    caplog.clear()
    assert agrees() and "unreadable" in caplog.text
    from mcdrl.deploy.onnx_engine import export_onnx

    export_onnx(net, bundle / "models" / "model.onnx")
    served._session = None
    caplog.clear()
    assert agrees() and "no weights sha256" in caplog.text
    # a graph that cannot be written is refused, naming the file
    (bundle / "models" / "model.onnx").unlink()
    (bundle / "models" / "model.onnx").mkdir()
    served._session = None
    with pytest.raises(ConfigError, match=r"cannot write the ONNX graph .*model\.onnx"):
        served(x)
    # and missing weights are named
    gone = OnnxRuntimeNetwork(net, tmp_path / "nowhere" / "model.pt")
    with pytest.raises(ConfigError, match=r"nowhere/model\.pt do not exist"):
        gone(x)


def test_monailabel_inferer_runs_the_graph(shipped, tmp_path):
    """What MONAI Label does per request: inference.json's inferer on the network it built; with engine onnxruntime
    the inferer runs the graph (the options it applies included)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(shipped[0], bundle, ignore=shutil.ignore_patterns("*.onnx"))
    parser = _parser(bundle, engine="onnxruntime")
    parser["displayable_configs"]["alpha"] = "0.4"
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 3, 180, 220, generator=torch.Generator().manual_seed(3))
    served = parser.get_parsed_content("inferer")(x, net)
    assert net.selector.alpha == 0.4
    assert (bundle / "models" / "model.onnx").is_file()
    with torch.no_grad():
        assert (served - net(x)).abs().max().item() <= 2e-3
    assert engine_network(net, bundle / "models" / "model.pt", "torch") is net
    from mcdrl.deploy.monailabel import RuntimeOptionsInferer

    with pytest.raises(ConfigError, match="engine must be one of"):
        RuntimeOptionsInferer(engine="tensorrt")
    with pytest.raises(ConfigError, match="pass model_path"):
        RuntimeOptionsInferer(engine="onnxruntime")


def test_missing_onnxruntime_is_one_line(shipped, tmp_path, monkeypatch):
    bundle, frames = shipped
    net = _parser(bundle).get_parsed_content("network_def")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install onnx onnxruntime"):
        engine_network(net, tmp_path / "model.pt", "onnxruntime")
    # the bundle's command line prints that one line and exits 2
    blocker = tmp_path / "blocked"
    (blocker / "onnxruntime").mkdir(parents=True)
    (blocker / "onnxruntime" / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = {"PYTHONPATH": f"{blocker}:{__import__('os').environ.get('PYTHONPATH', '')}"}
    proc = bundle_cli(["run", "--config_file", str(bundle / "configs" / "inference.json")], tmp_path,
                      {"dataset_dir": str(frames), "output_dir": str(tmp_path / "out"), "engine": "onnxruntime"}, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mcdrl: error:")]
    assert len(errors) == 1 and "needs the onnxruntime package" in errors[0] and "pip install onnx onnxruntime" in errors[0]
    assert onnx_path_for(bundle / "models" / "model.pt", "onnxruntime-int8").name == "model.int8.onnx"
