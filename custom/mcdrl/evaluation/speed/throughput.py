"""``python -m mcdrl.evaluation.speed.throughput``: throughput of folder inference vs bare model calls, in one run (not a test).

Builds the bundle's network from ``bundle/configs/inference.json`` (random CLIP weights of the chosen config, a
dictionary made from them), writes synthetic endoscopy frames as PNG files (and optionally one multi-frame RGB
DICOM video), then times, on the same frames and batch size:

* ``bare forward``: ``net(x)`` on preloaded (B, 3, H, W) batches (the model alone);
* ``bare predict``: ``net.predict_with_confounders(x)`` (the model call the runner makes);
* ``folder``: :class:`mcdrl.io.FolderInferenceRunner` on the folder, end to end (discovery, PNG decoding,
  ToModelInput, batching, masks, summary).

The figure of merit is folder / bare forward throughput (target >= 0.8 on PNG input).

Examples:
    python -m mcdrl.evaluation.speed.throughput                           # demo CLIP (224 px), 32 PNGs of 256 px, batch 8, 3 rounds
    python -m mcdrl.evaluation.speed.throughput --model mcdrl-tiny-vit --n 32 --video-frames 32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["build_network", "main"]


def build_network(model_name: str, workdir: Path, device: str = "cpu", **overrides) -> torch.nn.Module:
    """The bundle's ``network_def`` with random CLIP weights of ``model_name`` (saved, with their dictionary, in ``workdir``)."""
    import open_clip
    from monai.bundle import ConfigParser
    from safetensors.torch import save_file

    import mcdrl.networks.clip_backbone  # noqa: F401 - registers the model configs
    from mcdrl.networks.dictionary import build_dictionary
    from mcdrl.paths import default_bundle_root

    workdir.mkdir(parents=True, exist_ok=True)
    weights, dictionary = workdir / "clip.safetensors", workdir / "dictionary.safetensors"
    if not dictionary.is_file():
        torch.manual_seed(0)
        model = open_clip.create_model(model_name, pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
        build_dictionary(model_name, weights, dictionary)
    parser = ConfigParser()
    parser.read_config(str(Path(default_bundle_root()) / "configs" / "inference.json"))
    parser.update({"clip_model": model_name, "clip_weights": str(weights), "dictionary_path": str(dictionary), **overrides})
    return parser.get_parsed_content("network_def").to(device).eval()


def _frames(n: int, size: int) -> np.ndarray:
    try:
        from mcdrl.synthetic import SITES, sample_case

        return np.stack([sample_case(SITES["A"], seed, size).image for seed in range(n)])
    except ImportError:  # pragma: no cover - the synthetic world is optional
        return np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def _bare(fn, batches: list[torch.Tensor]) -> float:
    """Seconds for one pass of ``fn`` over ``batches``."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        for x in batches:
            fn(x)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def _folder(net, folder: Path, out: Path, device: str, batch_size: int) -> float:
    """Seconds for one end-to-end folder run."""
    from mcdrl.io import FolderInferenceRunner

    shutil.rmtree(out, ignore_errors=True)
    runner = FolderInferenceRunner(net, device, out, strict=True, batch_size=batch_size, progress=False)
    t0 = time.perf_counter()
    runner.run(folder)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m mcdrl.evaluation.speed.throughput", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mcdrl-demo-vit", help="CLIP config (random weights); default: the shipped demo CLIP")
    ap.add_argument("--n", type=int, default=32, help="number of PNG frames")
    ap.add_argument("--size", type=int, default=256, help="frame side in px")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (bare, folder, ...); medians are reported")
    ap.add_argument("--video-frames", type=int, default=0, help="also time one multi-frame RGB DICOM of this many frames")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--workdir", default=None, help="keep the generated files here (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("mcdrl.io").setLevel(logging.WARNING)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mcdrl-io-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        net = build_network(args.model, work, args.device)
        frames = _frames(args.n, args.size)
        pngs = work / "png"
        shutil.rmtree(pngs, ignore_errors=True)
        from PIL import Image

        from mcdrl.io.discovery import discover
        from mcdrl.io.readers import LoadCase

        pngs.mkdir(parents=True)
        for i, f in enumerate(frames):
            Image.fromarray(f).save(pngs / f"frame{i:04d}.png", compress_level=2)
        load = LoadCase()
        inputs = torch.cat([load(c).frames for c in discover(pngs)])  # exactly the runner's model input
        batches = [inputs[i : i + args.batch_size].to(args.device) for i in range(0, len(inputs), args.batch_size)]
        with torch.inference_mode():  # warm-up: one batch, and one folder run
            net(batches[0])
        _folder(net, pngs, work / "out", args.device, args.batch_size)
        vid = None
        if args.video_frames:
            from mcdrl.synthetic import write_dicom_rgb

            vid = work / "video"
            shutil.rmtree(vid, ignore_errors=True)
            write_dicom_rgb(vid / "video.dcm", _frames(args.video_frames, args.size))
            _folder(net, vid, work / "out_video", args.device, args.batch_size)
        times: dict[str, list[float]] = {"bare_forward": [], "bare_predict": [], "folder_png": [], "folder_dicom_video": []}
        for _ in range(args.rounds):  # interleaved, so that load from other processes hits all of them alike
            times["bare_forward"].append(args.n / _bare(net, batches))
            times["bare_predict"].append(args.n / _bare(net.predict_with_confounders, batches))
            times["folder_png"].append(args.n / _folder(net, pngs, work / "out", args.device, args.batch_size))
            if vid is not None:
                times["folder_dicom_video"].append(args.video_frames / _folder(net, vid, work / "out_video", args.device, args.batch_size))
        fig = {"model": args.model, "device": args.device, "threads": torch.get_num_threads(), "n": args.n, "size": args.size,
               "batch_size": args.batch_size, "rounds": args.rounds, "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        for key, values in times.items():
            if values:
                fig[f"{key}_ips"] = float(np.median(values))
                fig[f"{key}_ips_all"] = [round(v, 2) for v in values]
        ratios = [f / b for f, b in zip(times["folder_png"], times["bare_forward"])]
        fig["ratio_folder_vs_bare"] = float(np.median(ratios))
        rows = [("bare model: net(x)", fig["bare_forward_ips"]), ("bare model: predict_with_confounders(x)", fig["bare_predict_ips"]),
                ("folder inference, PNG", fig["folder_png_ips"])]
        if vid is not None:
            rows.append((f"folder inference, 1 RGB DICOM video x {args.video_frames} frames (+ SEG)", fig["folder_dicom_video_ips"]))
        print(f"\n{args.model} on {args.device} ({fig['threads']} threads), {args.n} frames of {args.size} px, batch {args.batch_size}")
        for label, ips in rows:
            print(f"  {label:<60s} {ips:8.1f} images/s")
        print(f"  folder / bare forward (median of per-round ratios): {fig['ratio_folder_vs_bare']:.2f} (target >= 0.8); load average {fig['load_average']}")
        if args.json:
            Path(args.json).write_text(json.dumps(fig, indent=1) + "\n")
        return fig
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
