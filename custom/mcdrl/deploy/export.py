"""Deployment exports of the inference network: TorchScript (MONAI's ``ckpt_export``), ONNX, and a deploy smoke test.

TorchScript, with metadata.json and inference.json embedded (trace, not script: open_clip's internals do not
script; ``check_trace=False`` because the tracer's self-check reports spurious "Graphs differed" on this network,
whose traced graph is nevertheless exact on any input size, see ``tests/test_export.py``)::

    python -m monai.bundle ckpt_export network_def --filepath bundle/models/model.ts \\
        --ckpt_file bundle/models/model.pt --meta_file bundle/configs/metadata.json \\
        --config_file bundle/configs/inference.json --use_trace True --input_shape "[1,3,224,224]" \\
        --converter_kwargs "{'check_trace': False}"

ONNX (opset 18; dynamic batch, height and width; metadata.json, inference.json and the weights' sha256 stored as
metadata_props; the graph of the onnxruntime engine, :mod:`mcdrl.deploy.onnx_engine`: outputs ``pred``, then
``confounder_weights`` and ``lesion_score``; ``--int8`` writes the int8 graph, ``model.int8.onnx``)::

    python -m mcdrl.deploy.export onnx --config_file bundle/configs/inference.json --ckpt_file bundle/models/model.pt \\
        --meta_file bundle/configs/metadata.json --filepath bundle/models/model.onnx

Compare eager, TorchScript and ONNX Runtime outputs on several input sizes (``--frames``: synthetic endoscopy frames,
where the differences are about 100 times larger than on uniform noise; the bounds are the model card's)::

    python -m mcdrl.deploy.export verify --config_file bundle/configs/inference.json --ckpt_file bundle/models/model.pt \\
        --ts bundle/models/model.ts --onnx bundle/models/model.onnx --frames

Deploy smoke (what MONAI Deploy / Triton does: only model.ts and its embedded configs, no ``mcdrl`` package)::

    python custom/mcdrl/deploy/export.py smoke --model bundle/models/model.ts --image frame.png --output mask.png

Extra ``--key value`` pairs override config entries, as on the MONAI bundle CLI (``--clip_model ...``).

This file imports only the standard library, numpy and torch at module level, so that the smoke test runs it as a
plain script in an interpreter where ``import mcdrl`` fails. Keep it that way.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: keep sibling modules (transforms.py, ...) off sys.path
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import ast  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["DEFAULT_VERIFY_SHAPES", "build_network", "compare_outputs", "deploy_smoke", "onnx_runner", "synthetic_frames"]

#: input shapes for the equivalence checks: the CLIP size, a non-square size and a batch of 2
DEFAULT_VERIFY_SHAPES = ((1, 3, 224, 224), (2, 3, 256, 320), (1, 3, 97, 131))
#: the bounds of the model card (TorchScript and ONNX Runtime against eager PyTorch, shipped model): max |logit
#: difference| on synthetic endoscopy frames and on uniform noise, and the share of mask pixels that may differ (ties
#: at the lesion boundary). Release 0.9.2's text-query head made them larger (0.9.1: 2e-1, 2e-4, 5e-4): float32 rounding,
#: not the export; the eager network in float32 against float64 differs by 0.09 and in 136 mask pixels at 480 x 640
VERIFY_TOLERANCE = 5e-1
VERIFY_NOISE_TOLERANCE = 2e-3
VERIFY_MASK_TOLERANCE = 2e-3


# ---- building the network from a bundle config ---------------------------------------------------------------------
def build_network(config_file, ckpt_file, overrides: dict | None = None, net_id: str = "network_def") -> torch.nn.Module:
    """Instantiate ``net_id`` from the bundle config(s), load ``ckpt_file`` (a bare state_dict) strictly, eval mode.

    Raises:
        FileNotFoundError: the checkpoint does not exist. ConfigError: it does not fit the network (one line naming the
        config key, both values and the file).
    """
    from monai.bundle import ConfigParser

    ckpt_file = Path(ckpt_file)
    if not ckpt_file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_file}")
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(dict(overrides or {}))
    net = parser.get_parsed_content(net_id)
    from mcdrl.networks.weights import load_fitting_weights

    load_fitting_weights(net, torch.load(ckpt_file, map_location="cpu", weights_only=True), ckpt_file)
    return net.eval()


# ---- ONNX -------------------------------------------------------------------------------------------------------------
def onnx_runner(path):
    """A callable ``x (B, 3, H, W) tensor -> logits tensor`` running the ONNX model on ONNX Runtime (CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["pred"], {"image": x.detach().cpu().numpy().astype(np.float32)})[0])


def synthetic_frames(shape, seed: int = 0) -> torch.Tensor:
    """Endoscopy frames of the synthetic world (:mod:`mcdrl.synthetic`, site A) as network input.

    Args:
        shape: (B, 3, H, W); any H, W (rendered square at max(H, W), centre-cropped).
        seed: the first case's seed (case ``i`` of the batch uses ``seed + i``).

    Returns:
        (B, 3, H, W) float32 in [0, 1], as ``ToModelInput`` makes an 8-bit frame.
    """
    from mcdrl.synthetic import SITES, sample_case

    b, _, h, w = shape
    side = max(h, w)
    frames = []
    for i in range(b):
        img = sample_case(SITES["A"], seed + i, size=side).image
        top, left = (side - h) // 2, (side - w) // 2
        frames.append(torch.from_numpy(np.ascontiguousarray(img[top:top + h, left:left + w])).permute(2, 0, 1).float() / 255.0)
    return torch.stack(frames)


def compare_outputs(reference, candidates: dict, shapes=DEFAULT_VERIFY_SHAPES, seed: int = 0, frames: bool = False, masks: dict | None = None) -> dict:
    """Max |reference(x) - candidate(x)| of the logits per candidate and input shape.

    Args:
        reference: the eager network, (B, 3, H, W) -> logits (B, 2, H, W). candidates: name -> the same kind of callable.
        shapes: input shapes (B, 3, H, W).
        frames: synthetic endoscopy frames (:func:`synthetic_frames`, what the model card's bounds are measured on)
            instead of uniform noise in [0, 1] (where the differences are about 100 times smaller).
        masks: if a dict, filled with ``{name: {shape: pixels whose argmax (the mask) differs}}``.

    Returns:
        ``{name: {"1x3x224x224": max_abs_diff, ...}}``. A shape mismatch is reported as ``inf``.
    """
    g = torch.Generator().manual_seed(seed)
    out: dict = {name: {} for name in candidates}
    with torch.no_grad():
        for shape in shapes:
            x = synthetic_frames(shape, seed) if frames else torch.rand(*shape, generator=g)
            ref = reference(x)
            for name, fn in candidates.items():
                y = fn(x)
                key = "x".join(map(str, shape))
                same = y.shape == ref.shape
                out[name][key] = float((ref - y).abs().max()) if same else float("inf")
                if masks is not None:
                    masks.setdefault(name, {})[key] = int((ref.argmax(1) != y.argmax(1)).sum()) if same else -1
    return out


# ---- deploy smoke (standalone: numpy, PIL, torch only) ----------------------------------------------------------------
_KNOWN_PREPROCESSING = ("LoadImaged", "EnsureChannelFirstd", "ToModelInputd", "EnsureTyped")


def _to_model_input(arr: np.ndarray) -> np.ndarray:
    """numpy twin of ``mcdrl.transforms.ToModelInput``: (C, H, W) any -> float32 RGB (3, H, W) in [0, 1].

    Identical for 8-bit images. For other intensities on images over 10^6 values, ToModelInput estimates its
    percentiles from a random subsample, this twin from all values, so the scaling can differ slightly.
    """
    integer_source = arr.dtype == np.uint8
    c = arr.shape[0]
    if c == 4:
        arr = arr[:3]
    elif c == 2:
        arr = arr[:1]
    elif c not in (1, 3):
        raise ValueError(f"expected 1, 3 or 4 channels, got {c} (shape {arr.shape})")
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    x = arr.astype(np.float32)
    finite = np.isfinite(x)
    if not finite.any():
        raise ValueError("image has no finite values")
    x = np.where(finite, x, 0.0).astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0 and hi <= 255 and (integer_source or bool((x == np.round(x)).all())) and hi > 1:
        x = x / np.float32(255.0)
    elif not (lo >= 0 and hi <= 1):
        q0, q1 = np.quantile(x[finite], [0.005, 0.995])
        x = np.where(finite, (x - q0) / max(q1 - q0, 1e-6), 0.0)
    return np.clip(x, 0, 1).astype(np.float32)


def deploy_smoke(model_path, image_path, output_path=None, config_name: str = "inference.json") -> dict:
    """Run a TorchScript bundle model on one image the way a deployment runtime does.

    Loads ``model_path`` with its embedded ``metadata.json`` and ``config_name``, replicates the embedded
    preprocessing with PIL and numpy (no MONAI, no mcdrl), runs the model, and takes softmax + argmax as the
    embedded postprocessing does; the bundle's lesion post-processing after that (dropping lesions under
    ``min_lesion_fraction``, :class:`mcdrl.transforms.LesionPostprocess`) is not replicated. Writes the mask (uint8 0/1,
    (H, W)) as PNG if ``output_path`` is given.

    Raises:
        ValueError: the embedded configs are missing, or the preprocessing has a step this smoke does not replicate.

    Returns:
        A summary dict: input shape, output shape, foreground fraction, the channel names, and the ``mcdrl``
        modules that ended up imported (must be none).
    """
    from PIL import Image

    extra = {"metadata.json": "", config_name: ""}
    model = torch.jit.load(str(model_path), map_location="cpu", _extra_files=extra)
    model.eval()
    if not extra["metadata.json"] or not extra[config_name]:
        raise ValueError(f"{model_path}: metadata.json or {config_name} is not embedded; export with ckpt_export --meta_file and --config_file")
    meta = json.loads(extra["metadata.json"])
    config = json.loads(extra[config_name])
    steps = config.get("preprocessing", {}).get("transforms", [])
    names = [str(t.get("_target_", "?")).rsplit(".", 1)[-1] for t in steps]
    unknown = [n for n in names if n not in _KNOWN_PREPROCESSING]
    if unknown:
        raise ValueError(f"{model_path}: the embedded preprocessing has steps this smoke does not replicate: {unknown} (known: {list(_KNOWN_PREPROCESSING)})")
    load = steps[names.index("LoadImaged")] if "LoadImaged" in names else {}
    if load.get("reader", "PILReader") != "PILReader":
        raise ValueError(f"{model_path}: preprocessing reads with {load.get('reader')}, this smoke replicates PILReader only")
    arr = np.asarray(Image.open(image_path))
    if load.get("reverse_indexing", True):
        arr = np.swapaxes(arr, 0, 1)  # MONAI's default PILReader gives (cols, rows)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)  # EnsureChannelFirstd
    x = torch.from_numpy(_to_model_input(arr))[None]  # ToModelInputd, EnsureTyped, batch of 1
    in_spec = meta["network_data_format"]["inputs"]["image"]
    if x.shape[1] != int(in_spec["num_channels"]):
        raise ValueError(f"preprocessed image has {x.shape[1]} channels, metadata.json says {in_spec['num_channels']}")
    with torch.no_grad():
        logits = model(x)
    mask = torch.softmax(logits, dim=1).argmax(dim=1)[0].to(torch.uint8).numpy()
    if output_path is not None:
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(output_path).with_name(f".{Path(output_path).name}.tmp")
        Image.fromarray(mask).save(tmp, format="PNG")
        os.replace(tmp, output_path)
    channels = meta["network_data_format"]["outputs"]["pred"].get("channel_def", {})
    return {
        "input_shape": list(x.shape),
        "output_shape": list(logits.shape),
        "foreground_fraction": float(mask.mean()),
        "channels": channels,
        "mcdrl_modules_loaded": sorted(m for m, mod in sys.modules.items() if mod is not None and (m == "mcdrl" or m.startswith("mcdrl."))),
    }


# ---- command line -------------------------------------------------------------------------------------------------------
def _overrides(extra: list[str]) -> dict:
    """``--key value`` pairs -> dict; values parsed as JSON or Python literals, else kept as strings."""
    out, i = {}, 0
    while i < len(extra):
        key = extra[i]
        if not key.startswith("--") or i + 1 >= len(extra):
            raise SystemExit(f"unexpected argument {key!r}: overrides are --key value pairs")
        value = extra[i + 1]
        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(value)
                break
            except (ValueError, SyntaxError):
                continue
        out[key[2:]] = value
        i += 2
    return out


def _shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(v) for v in ast.literal_eval(text))
    if len(shape) != 4 or shape[1] != 3:
        raise argparse.ArgumentTypeError(f"input shape must be [B, 3, H, W], got {text}")
    return shape


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcdrl.deploy.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("onnx", "verify"):
        p = sub.add_parser(name)
        p.add_argument("--config_file", default="bundle/configs/inference.json")
        p.add_argument("--ckpt_file", default=None, help="default: <bundle_root>/models/model.pt")
        p.add_argument("--net_id", default="network_def")
    sub.choices["onnx"].add_argument("--filepath", default=None, help="default: next to the checkpoint, model.onnx (model.int8.onnx with --int8)")
    sub.choices["onnx"].add_argument("--meta_file", default=None, help="default: <bundle_root>/configs/metadata.json")
    sub.choices["onnx"].add_argument("--input_shape", type=_shape, default=(1, 3, 224, 224))
    sub.choices["onnx"].add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18: antialiased Resize)")
    sub.choices["onnx"].add_argument("--int8", action="store_true", help="int8 dynamic quantisation (default file: models/model.int8.onnx)")
    sub.choices["verify"].add_argument("--ts", default=None)
    sub.choices["verify"].add_argument("--onnx", default=None)
    sub.choices["verify"].add_argument("--shapes", default=json.dumps([list(s) for s in DEFAULT_VERIFY_SHAPES]))
    sub.choices["verify"].add_argument("--frames", action="store_true",
                                       help="synthetic endoscopy frames (mcdrl.synthetic) instead of uniform noise: what the model card's bounds are measured on")
    sub.choices["verify"].add_argument("--seeds", type=int, default=1, help="frames (or noise draws) per shape")
    sub.choices["verify"].add_argument("--tolerance", type=float, default=None,
                                       help=f"max |logit difference| allowed (default {VERIFY_TOLERANCE:g} with --frames, else {VERIFY_NOISE_TOLERANCE:g})")
    sub.choices["verify"].add_argument("--mask_tolerance", type=float, default=VERIFY_MASK_TOLERANCE,
                                       help="largest share of pixels whose mask (argmax) may differ")
    sm = sub.add_parser("smoke")
    sm.add_argument("--model", required=True)
    sm.add_argument("--image", required=True)
    sm.add_argument("--output", default=None)
    sm.add_argument("--config_name", default="inference.json")
    args, extra = ap.parse_known_args(argv)

    if args.cmd == "smoke":
        if extra:
            raise SystemExit(f"smoke takes no overrides, got {extra}")
        print(json.dumps(deploy_smoke(args.model, args.image, args.output, args.config_name)))
        return 0

    overrides = _overrides(extra)
    config_file = Path(args.config_file)
    bundle_root = Path(overrides.get("bundle_root", config_file.resolve().parent.parent))
    ckpt = Path(args.ckpt_file) if args.ckpt_file else bundle_root / "models" / "model.pt"
    try:
        net = build_network(str(config_file), ckpt, overrides, args.net_id)
    except (FileNotFoundError, ValueError) as e:  # a missing checkpoint, or weights that do not fit (ConfigError): one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "onnx":
        meta_file = Path(args.meta_file) if args.meta_file else bundle_root / "configs" / "metadata.json"
        metadata = {config_file.name: json.dumps(json.loads(config_file.read_text()))}
        if meta_file.is_file():
            metadata["metadata.json"] = json.dumps(json.loads(meta_file.read_text()))
        from mcdrl.deploy.onnx_engine import build_onnx  # the engine's graph: pred, confounder_weights, lesion_score; weights sha256

        out = build_onnx(net, ckpt, "onnxruntime-int8" if args.int8 else "onnxruntime", args.filepath, metadata, input_shape=args.input_shape, opset=args.opset)
        diffs = compare_outputs(net, {"onnx": onnx_runner(out)}, [args.input_shape])
        print(json.dumps({"onnx": str(out), "max_abs_diff_vs_eager": diffs["onnx"]}))
        return 0
    candidates = {}
    if args.ts:
        candidates["torchscript"] = torch.jit.load(args.ts, map_location="cpu").eval()
    if args.onnx:
        candidates["onnx"] = onnx_runner(args.onnx)
    if not candidates:
        raise SystemExit("verify: pass --ts and/or --onnx")
    shapes = [tuple(s) for s in json.loads(args.shapes)]
    if args.tolerance is None:
        args.tolerance = VERIFY_TOLERANCE if args.frames else VERIFY_NOISE_TOLERANCE
    diffs: dict = {name: {} for name in candidates}
    masks: dict = {name: {} for name in candidates}
    for seed in range(max(1, args.seeds)):
        m: dict = {}
        for name, d in compare_outputs(net, candidates, shapes, seed=seed, frames=args.frames, masks=m).items():
            for key, v in d.items():
                diffs[name][key] = max(diffs[name].get(key, 0.0), v)
                n = m[name][key]
                masks[name][key] = n if n < 0 else max(masks[name].get(key, 0), n)
    pixels = {"x".join(map(str, s)): s[0] * s[2] * s[3] for s in shapes}
    worst = max(v for d in diffs.values() for v in d.values())
    worst_mask = max((n / pixels[k] if n >= 0 else float("inf")) for d in masks.values() for k, n in d.items())
    ok = worst <= args.tolerance and worst_mask <= args.mask_tolerance
    print(json.dumps({"input": "synthetic frames" if args.frames else "uniform noise", "max_abs_diff_vs_eager": diffs,
                      "mask_pixels_differing": masks, "tolerance": args.tolerance, "mask_tolerance": args.mask_tolerance, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
