"""The ONNX Runtime engine: run the exported graph of an MCDRL network, presence decision included, on CPU.

Selected by the ``engine`` key of ``inference.json`` (``torch`` by default, ``onnxruntime``, or ``onnxruntime-int8``
for int8 dynamic quantisation of the MatMul/Gemm weights). Both the folder runner (``run``) and MONAI Label's infer
(through :class:`mcdrl.deploy.monailabel.RuntimeOptionsInferer`) use it::

    python -m monai.bundle run --config_file bundle/configs/inference.json --dataset_dir IN --output_dir OUT --engine onnxruntime

The graph file lives next to the weights (``models/model.onnx``, ``models/model.int8.onnx``). It is exported from
``models/model.pt`` on first use, or ahead of time with ``python -m mcdrl.deploy.export onnx [--int8]``, and written
atomically. Its ``metadata_props`` name the sha256 of the weights it was exported from and what else the graph bakes
in (the network's options, the network code's sha256). Before every call the engine checks the weights file
(``stat``, and sha256 when it changed) and the options: a missing or stale graph is exported again, with a log line
saying why, and never silently used; a graph that cannot be written is refused with a message naming the file.

The graph: ``image`` float32 (B, 3, H, W) in [0, 1] -> ``pred`` (B, 2, H, W) logits after the presence decision
(== the eval ``forward``), ``confounder_weights`` (B, M) and ``lesion_score`` (B,)
(== ``MCDRLNet.predict_with_confounders(x, with_score=True)``).

onnx and onnxruntime are optional (``requirements-dev.txt``); without them this engine raises one line saying what
to install, and the default engine is unaffected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mcdrl.errors import ConfigError, MissingDependencyError
from mcdrl.networks.clip_backbone import weights_sha256
from mcdrl.utils import atomic_path

__all__ = ["ENGINES", "ONNX_OPSET", "OnnxRuntimeNetwork", "build_onnx", "engine_network", "export_onnx", "graph_options", "onnx_path_for",
           "register_onnx_symbolics"]

logger = logging.getLogger(__name__)

#: the values of inference.json's ``engine`` key
ENGINES = ("torch", "onnxruntime", "onnxruntime-int8")
OUTPUTS = ("pred", "confounder_weights", "lesion_score")
#: MatMul and Gemm carry the linear layers' weights; convolutions stay fp32
INT8_OPS = ("MatMul", "Gemm")
_NETWORK_CODE = Path(__file__).resolve().parents[1] / "networks"


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else a ConfigError listing them."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    return engine


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependencyError(f"engine onnxruntime needs the {module} package, which is not installed in {sys.prefix}: "
                                     "pip install onnx onnxruntime (or use engine torch)") from None


def onnx_path_for(model_path: str | os.PathLike, engine: str) -> Path:
    """``models/model.pt`` -> ``models/model.onnx`` (``onnxruntime``) or ``models/model.int8.onnx`` (``onnxruntime-int8``)."""
    model_path = Path(model_path)
    return model_path.with_suffix(".int8.onnx" if check_engine(engine) == "onnxruntime-int8" else ".onnx")


def _code_sha256() -> str:
    """sha256 over the network code (``mcdrl/networks/*.py``): a changed forward makes an old graph stale."""
    digest = hashlib.sha256()
    for path in sorted(_NETWORK_CODE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def graph_options(network: nn.Module) -> dict:
    """What the graph bakes in besides the weights: the network's class, CLIP, MTRS alpha and scoring, whether the
    intervention applies, the de-confounding scope, the presence decision, tau, and sha256 of its module tree and code."""
    return {
        "class": type(network).__name__,
        "clip_model": getattr(network.backbone, "model_name", None),
        "alpha": float(network.selector.alpha),
        "scoring": getattr(network.selector, "scoring", None),
        "intervention": bool(network.applies_intervention),
        "deconfounding": network.deconfounding,
        "presence_decision": bool(network.presence_decision),
        "tau": float(network.tau),
        "modules_sha256": hashlib.sha256(repr(network).encode()).hexdigest(),
        "code_sha256": _code_sha256(),
    }


#: the ONNX opset of every export (>= 18: Resize with antialiasing)
ONNX_OPSET = 18


def register_onnx_symbolics(opset: int = ONNX_OPSET) -> None:
    """Teach the TorchScript-based ONNX exporter ``F.interpolate(..., antialias=True)`` (bilinear).

    ONNX ``Resize`` (opset >= 18) with ``antialias=1`` and ``exclude_outside=1`` computes PyTorch's antialiased
    bilinear filter (measured within 2e-6 of torch on ONNX Runtime); without ``exclude_outside`` it differs by 0.05.
    """
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper as sh

    @sh.parse_args("v", "is", "i", "none", "none")
    def upsample_bilinear2d_aa(g, x, output_size, align_corners, scales_h=None, scales_w=None):
        shape = g.op("Shape", x)
        lead = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])), g.op("Constant", value_t=torch.tensor([2])))
        sizes = g.op("Concat", lead, g.op("Constant", value_t=torch.tensor(list(output_size), dtype=torch.int64)), axis_i=0)
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        return g.op("Resize", x, empty, empty, sizes, mode_s="linear", antialias_i=1, exclude_outside_i=1,
                    coordinate_transformation_mode_s="align_corners" if align_corners else "half_pixel")

    register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", upsample_bilinear2d_aa, opset)


def export_onnx(network: torch.nn.Module, filepath, input_shape=(1, 3, 224, 224), opset: int = ONNX_OPSET, dynamic: bool = True, metadata: dict | None = None,
                output_names=("pred",), device="cpu") -> Path:
    """Export the eval network to ONNX, atomically.

    Args:
        network: eval ``forward(image (B, 3, H, W) in [0, 1]) -> logits (B, 2, H, W)`` (or a tuple, ``pred`` first).
        filepath: the ``.onnx`` file. input_shape: the example input used for tracing (made on ``device``).
        dynamic: batch, height and width as dynamic axes of ``image`` and ``pred``; the batch of other outputs.
        metadata: name -> text stored in the model's ``metadata_props`` (e.g. metadata.json, inference.json).
        output_names: one name per output (``mcdrl.deploy.onnx_engine`` adds ``confounder_weights``, ``lesion_score``).

    Returns:
        The path written. Input ``image`` float32 (B, 3, H, W), output ``pred`` float32 (B, 2, H, W).
    """
    import onnx

    register_onnx_symbolics(opset)
    network = network.eval()
    image_axes = {0: "batch", 2: "height", 3: "width"}
    axes = {"image": image_axes, **{n: image_axes if n == "pred" else {0: "batch"} for n in output_names}} if dynamic else None
    filepath = Path(filepath)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel (taken under no_grad) has no ONNX form
    try:
        with atomic_path(filepath) as tmp:
            torch.onnx.export(network, (torch.rand(*input_shape, device=device),), str(tmp), dynamo=False, input_names=["image"], output_names=list(output_names),
                              dynamic_axes=axes, opset_version=opset)
            model = onnx.load(str(tmp))
            for k, v in (metadata or {}).items():
                model.metadata_props.add(key=k, value=v)
            onnx.checker.check_model(model)
            onnx.save(model, str(tmp))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return filepath


class _PredictGraph(nn.Module):
    """The traced function: ``predict_with_confounders(x, with_score=True)`` as a forward."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor):
        return self.network.predict_with_confounders(x, with_score=True)


def build_onnx(network: nn.Module, model_path: str | os.PathLike, engine: str = "onnxruntime", onnx_path: str | os.PathLike | None = None,
               metadata: dict | None = None, **export_kwargs) -> Path:
    """Load ``model_path`` into ``network`` (strictly) and export the engine graph next to it, atomically.

    Args:
        network: an MCDRLNet built from the bundle config (its current options are baked in).
        model_path: the weights (``models/model.pt``, a bare state_dict); their sha256 goes into the metadata.
        engine: ``onnxruntime`` (fp32) or ``onnxruntime-int8`` (the fp32 graph, then int8 dynamic quantisation of
            the MatMul/Gemm weights with ``onnxruntime.quantization.quantize_dynamic``).
        onnx_path: default :func:`onnx_path_for`. metadata: extra ``metadata_props`` (e.g. the configs).
        export_kwargs: ``input_shape``, ``opset`` of :func:`export_onnx`.

    Returns:
        The path written. Raises ConfigError if the file cannot be written (naming it).
    """
    _require("onnx")
    _require("onnxruntime")
    model_path = Path(model_path)
    engine = check_engine(engine)
    if engine == "torch":
        raise ConfigError("build_onnx: engine torch has no ONNX graph")
    onnx_path = Path(onnx_path) if onnx_path else onnx_path_for(model_path, engine)
    device = next(network.parameters()).device
    network.load_state_dict(torch.load(model_path, map_location=device, weights_only=True), strict=True)
    network.eval()
    props = {**(metadata or {}), "mcdrl_engine": engine, "weights_file": model_path.name, "weights_sha256": weights_sha256(model_path),
             "graph_options": json.dumps(graph_options(network), sort_keys=True)}
    try:
        if engine == "onnxruntime":
            export_onnx(_PredictGraph(network), onnx_path, metadata=props, output_names=OUTPUTS, device=device, **export_kwargs)
        else:
            _quantize(network, onnx_path, props, device, export_kwargs)
    except OSError as e:
        raise ConfigError(f"cannot write the ONNX graph {onnx_path} ({e.strerror or e}); export it where the bundle is writable "
                          "(python -m mcdrl.deploy.export onnx) or use engine torch") from e
    logger.info("exported %s from %s (sha256 %s...)", onnx_path, model_path, props["weights_sha256"][:12])
    return onnx_path


def _quantize(network: nn.Module, onnx_path: Path, props: dict, device, export_kwargs: dict) -> None:
    """fp32 export to a temporary file, int8 dynamic quantisation into ``onnx_path`` (atomic), metadata re-attached."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=onnx_path.parent) as work, atomic_path(onnx_path) as tmp:
        fp32 = Path(work) / "fp32.onnx"  # never kept: the fp32 graph has its own name (model.onnx)
        export_onnx(_PredictGraph(network), fp32, metadata=props, output_names=OUTPUTS, device=device, **export_kwargs)
        quantize_dynamic(str(fp32), str(tmp), op_types_to_quantize=list(INT8_OPS), weight_type=QuantType.QInt8)
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        for k, v in {**props, "quantization": f"int8 dynamic ({', '.join(INT8_OPS)} weights, QInt8)"}.items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(tmp))


class OnnxRuntimeNetwork(nn.Module):
    """An MCDRL network's inference interface served by ONNX Runtime from its exported graph.

    Args:
        network: the MCDRLNet (built from the bundle config); kept to export the graph again when it is stale, and
            for its confounder names. Its options (``selector.alpha``, ``use_intervention``) are read before each call.
        model_path: the weights the graph must come from (``models/model.pt``).
        engine: ``onnxruntime`` or ``onnxruntime-int8``.
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``, as the torch engine).

    Shapes: ``forward(x (B, 3, H, W) in [0, 1]) -> logits (B, 2, H, W)``;
    ``predict_with_confounders(x, with_score) -> (logits, weights (B, M)[, score (B,)])``, as MCDRLNet's.
    Outputs come back on ``x``'s device; the graph runs on the CPU.

    Example:
        >>> net = OnnxRuntimeNetwork(mcdrl.io.load_weights(net, "bundle/models/model.pt"), "bundle/models/model.pt")
        >>> logits = net(torch.rand(1, 3, 256, 256))
    """

    def __init__(self, network: nn.Module, model_path: str | os.PathLike, engine: str = "onnxruntime", threads: int | None = None):
        super().__init__()
        if not hasattr(network, "predict_with_confounders"):
            raise ConfigError(f"engine {engine}: {type(network).__name__} is not an MCDRL network (it has no predict_with_confounders)")
        self.ort = _require("onnxruntime")
        _require("onnx")
        self.network = network
        self.model_path = Path(model_path)
        self.engine = check_engine(engine)
        self.onnx_path = onnx_path_for(self.model_path, self.engine)
        self.threads = int(threads or torch.get_num_threads())
        self._session = None
        self._key: tuple | None = None  # (weights stat, options) the session was checked against
        self._sha: tuple[tuple, str] | None = None

    @property
    def confounder_names(self) -> list[str]:
        return self.network.confounder_names

    @property
    def presence_decision(self) -> bool:
        return self.network.presence_decision

    def _weights_sha(self) -> str:
        if not self.model_path.is_file():
            raise ConfigError(f"engine {self.engine}: the weights {self.model_path} do not exist, so the ONNX graph cannot be checked or built")
        st = self.model_path.stat()
        stat = (st.st_size, st.st_mtime_ns)
        if self._sha is None or self._sha[0] != stat:
            self._sha = (stat, weights_sha256(self.model_path))
        return self._sha[1]

    def session(self):
        """The ONNX Runtime session of a graph that matches the weights and options now; exports it first if needed."""
        key = (self._weights_sha(), json.dumps(graph_options(self.network), sort_keys=True))
        if self._session is not None and key == self._key:
            return self._session
        session, why = self._open(*key)
        if why:
            logger.warning("%s: %s; exporting it from %s", self.onnx_path, why, self.model_path.name)
            build_onnx(self.network, self.model_path, self.engine, self.onnx_path)
            key = (self._weights_sha(), json.dumps(graph_options(self.network), sort_keys=True))  # the network holds model.pt now
            session, why = self._open(*key)
            if why:  # pragma: no cover - the export wrote something else
                raise ConfigError(f"{self.onnx_path}: {why}, right after exporting it")
        self._session, self._key = session, key
        return session

    def _open(self, sha: str, options: str):
        """(session, "") when the file on disk serves these weights and options, else (None, why not)."""
        if not self.onnx_path.is_file():
            return None, "no ONNX graph yet"
        so = self.ort.SessionOptions()
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = self.threads
        try:
            session = self.ort.InferenceSession(str(self.onnx_path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - a corrupt file is stale, never used
            return None, f"unreadable by onnxruntime ({type(e).__name__})"
        meta = session.get_modelmeta().custom_metadata_map
        if meta.get("mcdrl_engine") != self.engine or "weights_sha256" not in meta:
            return None, f"not an {self.engine} engine graph (its metadata names no weights sha256)"
        if meta["weights_sha256"] != sha:
            return None, f"exported from weights sha256 {meta['weights_sha256'][:12]}..., but {self.model_path.name} is {sha[:12]}..."
        if meta.get("graph_options") != options:
            return None, "exported with other network options or code (graph_options differ)"
        return session, ""

    def predict_with_confounders(self, x: torch.Tensor, with_score: bool = False) -> tuple[torch.Tensor, ...]:
        pred, weights, score = (torch.from_numpy(o).to(x.device) for o in self.session().run(list(OUTPUTS), {"image": _numpy(x)}))
        return (pred, weights, score) if with_score else (pred, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session().run(["pred"], {"image": _numpy(x)})[0]).to(x.device)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())


_ENGINES: dict[tuple[str, str], OnnxRuntimeNetwork] = {}


def engine_network(network: nn.Module, model_path: str | os.PathLike, engine: str = "torch") -> nn.Module:
    """``network`` itself for engine ``torch``, else an :class:`OnnxRuntimeNetwork` serving it (one per weights file
    and engine in this process, so MONAI Label's per-request inferers share one session). One line in a config::

        "network": "$mcdrl.deploy.onnx_engine.engine_network(@network, @bundle_root + '/models/model.pt', @engine)"
    """
    if check_engine(engine) == "torch":
        return network
    key = (str(Path(model_path).resolve()), engine)
    served = _ENGINES.get(key)
    if served is None:
        served = _ENGINES[key] = OnnxRuntimeNetwork(network, model_path, engine)
    served.network = network
    return served
