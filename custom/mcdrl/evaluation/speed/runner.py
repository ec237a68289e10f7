"""The measurements of ``python -m mcdrl.evaluation.speed``, on the bundle's own configs with random CLIP weights.

* **forward**: the bare CLIP visual forward (open_clip ``model.visual`` on a CLIP-normalised S x S batch, S the
  CLIP's input size, pooled embedding out) against the eval forward of the shipped configuration (``inference.json``)
  and of the same network with the intervention on, on the frames the bundle trains and deploys at (``train_size``,
  224 px: the head decodes at the frame's resolution, so a CLIP of S < 224 also pays for the resize and the larger
  head), interleaved, at batch 1 and 8; with the share of each part inside those forwards.
* **train_step**: one step on ``train_size`` frames (forward, ``train.json``'s loss, backward, its AdamW) of the shipped configuration, of
  the intervention on (lambda_causal 0.5), and of the Baseline (intervention off, L_seg only), interleaved.
* **rss**: peak RSS of a fresh process that builds the network and runs inference.
* **folder**: the bundle's ``folder_runner`` end to end on synthetic PNG frames with each engine (torch,
  onnxruntime, onnxruntime-int8) next to bare ``net(x)`` calls on the same batches, interleaved.

Random weights time the same as trained ones; the engines' Dice needs the trained model and real data, so it is
measured by ``make engine-dice`` and read by the report (see :mod:`.report`).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from mcdrl.paths import default_bundle_root

from . import report
from .timing import PartTimer, interleaved, machine_info, paired_ratio, peak_rss_mb

__all__ = ["folder_rows", "forward_rows", "main", "network_fingerprint", "part_shares", "random_network", "train_row"]

QUICK_MODEL = "mcdrl-tiny-vit"
ENGINES = ("torch", "onnxruntime", "onnxruntime-int8")


def _parser(config: str, model_name: str, **overrides):
    from monai.bundle import ConfigParser

    configs = Path(default_bundle_root()) / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / c) for c in config.split("+")])
    parser.update({"clip_model": model_name, "clip_weights": None, "dictionary_path": None, "device": "$torch.device('cpu')", **overrides})
    return parser


def _randomise_dictionary(net, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed + 1)
    for name in ("confounders", "class_embeddings", "class_anchors", "background_embedding"):
        buf = getattr(net.dictionary, name)
        buf.copy_(F.normalize(torch.randn(buf.shape, generator=gen), dim=-1))


def frame_size(model_name: str) -> int:
    """The side of the frames the bundle trains and deploys at: ``train.json``'s ``train_size``."""
    return int(_parser("train.json", model_name).get_parsed_content("train_size"))


def random_network(model_name: str, seed: int = 0, config: str = "inference.json", **overrides):
    """``network_def`` of the bundle config (``inference.json``; ``a.json+b.json`` merges) with random CLIP weights and
    a random unit-vector dictionary, in eval mode. ``overrides``: config keys (``intervention_heads=2``, ...).

    Returns MCDRLNet; eval ``forward`` maps (B, 3, H, W) in [0, 1] to logits (B, 2, H, W)."""
    torch.manual_seed(seed)
    net = _parser(config, model_name, **overrides).get_parsed_content("network_def")
    _randomise_dictionary(net, seed)
    return net.eval()


def network_fingerprint(net: torch.nn.Module) -> str:
    """What a timing of ``net`` depends on, hashed (16 hex digits): its modules (names, classes, ``extra_repr``), their
    public scalar settings (MTRS ``alpha``, ``use_intervention``, ``head_resolution``, ...), and every parameter and
    buffer's name, shape and dtype. Weights are left out: a retrain of the same network keeps the fingerprint."""
    h = hashlib.sha256()
    for name, module in net.named_modules():
        settings = sorted((k, repr(v)) for k, v in vars(module).items()
                          if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple, type(None))))
        h.update(f"{name}|{type(module).__qualname__}|{module.extra_repr()}|{settings}\n".encode())
    for name, t in net.state_dict().items():
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
    return h.hexdigest()[:16]


def part_shares(net, x: torch.Tensor, rounds: int, clock=None) -> dict:
    """Share of each part in ``rounds`` eval forwards (median of per-forward shares): backbone, MTRS, intervention,
    head, presence (lesion score and gate), other (resizes, gathers, the rest). Returns ``{part: share}`` summing to ~1."""
    parts = {
        "backbone": [(net.backbone, "forward_tokens"), (net.backbone, "forward_dense")],
        "mtrs": [(net.selector, "forward")],
        "intervention": [(net.intervention, "forward"), (net.intervention, "forward_with_weights")],
        "head": [(net.head, "forward")],
        "presence": [(net, "lesion_score"), (net, "gate")],
    }
    timer = PartTimer(parts, **({"clock": clock} if clock else {}))
    shares: dict[str, list[float]] = {p: [] for p in [*parts, "other"]}
    with torch.inference_mode(), timer.active():
        for _ in range(rounds):
            timer.reset()
            start = timer.clock()
            net(x)
            total = (timer.clock() - start) * 1e3
            for p in parts:
                shares[p].append(timer.ms[p] / total)
            shares["other"].append(1.0 - sum(timer.ms.values()) / total)
    return {p: statistics.median(v) for p, v in shares.items()}


def forward_rows(model_name: str, batches: list[int], rounds: int, size: int | None = None) -> list[dict]:
    """Bare CLIP visual (S x S, the CLIP's size) vs the shipped eval forward vs the same with the intervention on
    (``size`` x ``size`` frames; None = ``train_size``), interleaved."""
    net = random_network(model_name)
    shipped = net.use_intervention
    s, size, rows = net.image_size, size or frame_size(model_name), []

    def run(on: bool):
        net.use_intervention = on
        return net(x)

    for b in batches:
        x = torch.rand(b, 3, size, size)
        xn = net.backbone.normalize(torch.rand(b, 3, s, s))
        with torch.inference_mode():
            t = interleaved({"visual": lambda: net.backbone.visual(xn), "shipped": lambda: run(shipped), "intervention": lambda: run(True)}, rounds)
        row = {"model": model_name, "batch": b, "input_size": size, "clip_size": s, "shipped_intervention": shipped, "rounds_ms": t,
               **{f"{k}_ms": statistics.median(v) for k, v in t.items()},
               "shipped_over_visual": paired_ratio(t, "shipped", "visual"), "intervention_over_visual": paired_ratio(t, "intervention", "visual")}
        for on in (shipped, True):
            net.use_intervention = on
            row[f"parts_{'intervention' if on else 'shipped'}"] = part_shares(net, x, max(3, rounds // 2))
        rows.append(row)
    net.use_intervention = shipped
    return rows


def _variant(loss, **attrs):
    out = copy.copy(loss)
    for k, v in attrs.items():
        setattr(out, k, v)
    return out


def train_row(model_name: str, batch: int, rounds: int, size: int | None = None) -> dict:
    """One training step of ``train.json`` (its network, loss and AdamW; random CLIP weights and batch) for the shipped
    configuration, the intervention on (lambda_causal 0.5), and the Baseline (intervention off, L_seg only), interleaved.
    One network and optimiser serve all three (the intervention's parameters get no gradient when it is off).
    ``size``: the frames' side (None = ``train_size``)."""
    torch.manual_seed(0)
    parser = _parser("train.json", model_name)
    net = parser.get_parsed_content("network_def").train()
    _randomise_dictionary(net, 0)
    loss, opt = parser.get_parsed_content("loss"), parser.get_parsed_content("optimizer")
    s = size or int(parser.get_parsed_content("train_size"))
    x = torch.rand(batch, 3, s, s)
    target = {"label": (torch.rand(batch, 1, s, s) > 0.8).float(), "lesion_class": torch.randint(0, len(net.dictionary.class_embeddings), (batch,))}
    shipped = net.use_intervention

    def step(on: bool, loss_fn):
        def fn():
            net.use_intervention = on
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), target).backward()
            opt.step()

        return fn

    t = interleaved({"shipped": step(shipped, loss), "intervention": step(True, _variant(loss, lambda_causal=0.5)),
                     "baseline": step(False, _variant(loss, lambda_causal=0.0, lambda_contrast=0.0))}, rounds)
    net.use_intervention = shipped
    return {"model": model_name, "batch": batch, "input_size": s, "rounds_ms": t, **{f"{k}_ms": statistics.median(v) for k, v in t.items()},
            "shipped_over_baseline": paired_ratio(t, "shipped", "baseline"), "intervention_over_baseline": paired_ratio(t, "intervention", "baseline")}


def _folder_bundle(model_name: str, work: Path, n: int, size: int) -> Path:
    """``work`` as a bundle root: random CLIP weights saved, their dictionary, ``models/model.pt``, ``n`` PNG frames."""
    import open_clip
    from PIL import Image
    from safetensors.torch import save_file

    from mcdrl.networks.dictionary import build_dictionary
    from mcdrl.synthetic import SITES, sample_case

    (work / "models").mkdir(parents=True)
    torch.manual_seed(0)
    clip = open_clip.create_model(model_name, pretrained=None)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(work / "clip.safetensors"))
    build_dictionary(model_name, work / "clip.safetensors", work / "dictionary.safetensors")
    net = _parser("inference.json", model_name, **_files(work)).get_parsed_content("network_def")
    torch.save(net.state_dict(), work / "models" / "model.pt")
    (work / "frames").mkdir()
    for i in range(n):
        Image.fromarray(sample_case(SITES["ABCDE"[i % 5]], i, size).image).save(work / "frames" / f"f{i:03d}.png")
    return work


def _files(work: Path) -> dict:
    return {"bundle_root": str(work), "clip_weights": str(work / "clip.safetensors"), "dictionary_path": str(work / "dictionary.safetensors")}


def folder_rows(model_name: str, n: int = 16, size: int = 224, batch: int = 8, rounds: int = 3, engines=ENGINES) -> dict:
    """Images/s of ``folder_runner`` (inference.json's ``run``: discovery, PNG decoding, batches, masks, summary) with
    each engine, and of bare ``net(x)`` on the same number of frames and batch size, interleaved (the first, untimed
    round exports the ONNX graphs). Ratios: each engine / torch, and folder (torch) / bare, per round."""
    with tempfile.TemporaryDirectory(prefix="mcdrl-speed-") as tmp:
        work = _folder_bundle(model_name, Path(tmp), n, size)
        runners, count = {}, [0]
        for engine in engines:
            runners[engine] = _parser("inference.json", model_name, **_files(work), engine=engine, strict=False, batch_size=batch).get_parsed_content("folder_runner")
            runners[engine].progress = False
        bare_net = runners["torch"].network
        xs = [torch.rand(min(batch, n - i), 3, size, size) for i in range(0, n, batch)]

        def folder(engine):
            def fn():
                count[0] += 1
                runners[engine].output_dir = work / f"out{count[0]}"
                bad = [r for r in runners[engine].run(work / "frames") if r.status != "ok"]
                if bad:
                    raise RuntimeError(f"folder inference ({engine}) failed: {bad[0].reason}")

            return fn

        def bare():
            with torch.inference_mode():
                for x in xs:
                    bare_net(x)

        t = interleaved({"bare": bare, **{e: folder(e) for e in engines}}, rounds)
    ips = {k: n / (statistics.median(v) / 1e3) for k, v in t.items()}
    return {"model": model_name, "images": n, "size": size, "batch": batch, "rounds_ms": t, "images_per_s": ips,
            "folder_over_bare": paired_ratio(t, "bare", "torch"), **{f"{e}_over_torch": paired_ratio(t, "torch", e) for e in engines if e != "torch"}}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    results = Path(default_bundle_root()) / "docs" / "results"
    p = argparse.ArgumentParser(prog="python -m mcdrl.evaluation.speed", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_MODEL}, few rounds (checks the code, not the speed)")
    p.add_argument("--models", nargs="+", default=None, help="open_clip configs (default: mcdrl-demo-vit ViT-B-16)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per forward comparison (default 9)")
    p.add_argument("--output", default=str(results / "bench.json"))
    p.add_argument("--markdown", default=str(results / "bench.md"), help="'' to skip")
    p.add_argument("--dice-dir", default=str(Path(default_bundle_root()) / "eval"), help="where make engine-dice wrote engine_<engine>/")
    p.add_argument("--dice-only", action="store_true",
                   help="after a retrain of the same network: read the engines' Dice into the existing --output report and keep "
                        "its timings (they use random weights); the page says when the Dice were read. Refused when the configs no longer "
                        "build the network the report timed (its recorded fingerprint)")
    a = p.parse_args(argv)
    command = "python -m mcdrl.evaluation.speed " + shlex.join(argv)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    if a.dice_only:
        try:
            previous = json.loads(Path(a.output).read_text())
            result = report.with_new_dice(previous, report.engine_dice(a.dice_dir), command, now)
        except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            raise SystemExit(f"--dice-only: {a.output}: {e}")
        timed = previous.get("network") or {}
        changed = [m for m, fingerprint in timed.items() if network_fingerprint(random_network(m)) != fingerprint]
        if changed:
            raise SystemExit(f"--dice-only: {a.output}: the network of {', '.join(changed)} changed since its timings were "
                             f"taken ({previous.get('date', '?')}); run the full `make bench`")
        if not timed:
            print(f"WARNING: {a.output} records no network fingerprint (written before they were kept), so it cannot be "
                  "checked that its timings are this network's", file=sys.stderr, flush=True)
        report.write(result, a.output, a.markdown or None)
        print(f"int8 Dice cost {report.fmt(result['headline']['int8_dice_cost_points'], 3)} points; wrote {a.output}"
              + (f" and {a.markdown}" if a.markdown else ""))
        return 0
    models = a.models or ([QUICK_MODEL] if a.quick else ["mcdrl-demo-vit", "ViT-B-16"])
    rounds = a.rounds or (2 if a.quick else 9)
    log = lambda msg: print(f"[mcdrl.evaluation.speed] {msg}", flush=True)  # noqa: E731
    out = {"command": command, "date": now, "machine": machine_info(), "main_model": models[-1],
           "network": {m: network_fingerprint(random_network(m)) for m in models}, "forward": [], "train_step": [], "folder": [], "rss": {}}
    for m in models:
        log(f"forward {m}")
        out["forward"] += forward_rows(m, [1, 2] if a.quick else [1, 8], rounds, 64 if a.quick else None)
        log(f"training step {m}")
        out["train_step"].append(train_row(m, 2 if a.quick else 8, max(1, rounds // 3), 64 if a.quick else None))
        log(f"peak RSS {m}")
        out["rss"][m] = peak_rss_mb(m)
        log(f"folder inference {m}, engines {list(ENGINES)}")
        out["folder"].append(folder_rows(m, 4 if a.quick else 16, 64 if a.quick else 224, 2 if a.quick else 8, 1 if a.quick else 3))
    out["machine"]["load_average_after"] = machine_info()["load_average"]
    out["dice"] = report.engine_dice(a.dice_dir)
    result = report.finish(out)
    report.write(result, a.output, a.markdown or None)
    for key, c in result["targets"].items():
        print(f"{key:34s} {report.fmt(c['value'], 3):>8s}  target {c['target']:8s} {c['met']}")
    print(f"wrote {a.output}" + (f" and {a.markdown}" if a.markdown else ""))
    return 0
