"""A site profile from unlabelled frames: how a new site differs from the training sites, and its presence threshold.

The ``profile`` run of ``bundle/configs/site_profile.json`` (an override of ``inference.json``)::

    python -m monai.bundle run profile --config_file "['bundle/configs/inference.json','bundle/configs/site_profile.json']" \\
        --dataset_dir FOLDER --output_dir OUT [--threshold_method lesion_free_share --lesion_free_share 0.3]

reads every frame under ``FOLDER`` (PNG/JPEG, NIfTI, DICOM: the folder runner's discovery and readers; a frame of a
video or a slice of a volume counts as a frame) and writes into ``OUT``:

* ``site_profile.json``: the profile (atomically), which ``inference.json`` applies with ``--site_profile PATH``;
* ``site_profile.md`` and ``site_profile.png``: the confounder profile as a table and a chart.

What it holds:

* **The confounder profile.** Each frame's confounders are read zero-shot by the model's calibrated confounder readout
  (:class:`mcdrl.networks.confounder_readout.ConfounderReadout`, the same one the folder runner's report uses). The
  site's share of frames per confounder stands beside the training sites' share, read the same way from source-site
  frames when the readout was calibrated. A confounder that fewer than ``rare_share`` of the training frames had, but
  at least ``rare_share`` of this site's, is flagged.
* **A presence threshold for the site, chosen without labels**, aimed at a false-alarm rate ``target_false_alarm`` on
  the site's lesion-free frames, from the network's image-level lesion scores:

  - ``mixture`` (default): a two-component Gaussian mixture fitted to the scores (EM); the lower component models the
    lesion-free frames and the threshold is its (1 - target_false_alarm) quantile;
  - ``lesion_free_share``: the user states the share of lesion-free frames p at the site; the threshold is the
    p * (1 - target_false_alarm) quantile of the scores (exact when lesion-free frames score below lesion frames).

  The profile records the method, its inputs and what it fitted.

A profile is tied to the model it was made with (a fingerprint of its weights, the presence threshold aside): applying
it to another model is an error, since another model's lesion scores have another distribution.

Bad input: an unreadable file is reported as the folder runner reports it (a warning line, and a row of
``unreadable`` in the profile) and the rest go on; fewer than ``min_frames`` readable frames is an error naming both
numbers.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import statistics
from pathlib import Path

import numpy as np
import torch

from mcdrl.errors import ConfigError, InputFileError
from mcdrl.utils import atomic_path

from .discovery import DEFAULT_MAX_SIDE, DiscoverCases, quiet_dicom
from .readers import LoadCase
from .summary import CaseResult

__all__ = ["PROFILE_FORMAT", "THRESHOLD_METHODS", "SiteProfiler", "apply_site_profile", "choose_threshold", "fit_two_gaussians",
           "load_site_profile", "network_fingerprint"]

logger = logging.getLogger("mcdrl.io")
PROFILE_FORMAT = "mcdrl-site-profile/1"
THRESHOLD_METHODS = ("mixture", "lesion_free_share")
_EXCLUDED_FROM_FINGERPRINT = ("presence_threshold",)


def network_fingerprint(network: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of the network's state dict, ``presence_threshold`` aside (the profile sets it)."""
    net = getattr(network, "module", network)
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        if k in _EXCLUDED_FROM_FINGERPRINT:
            continue
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fit_two_gaussians(x: np.ndarray, iterations: int = 200, tol: float = 1e-8) -> dict:
    """EM fit of a two-component 1-D Gaussian mixture to ``x`` (n,); components sorted by mean (low first).

    Returns:
        ``{"means": [m0, m1], "sds": [s0, s1], "weights": [w0, w1], "iterations": k}``. Standard deviations are floored
        at 1e-3 of the data's spread, so a component never collapses onto one value.
    """
    x = np.asarray(x, np.float64)
    if x.size < 4:
        raise ValueError(f"a two-component mixture needs at least 4 values, got {x.size}")
    spread = max(float(x.std()), 1e-12)
    floor = 1e-3 * spread
    med = float(np.median(x))
    lo, hi = x[x <= med], x[x > med]
    if hi.size == 0:
        hi = lo
    mu = np.array([lo.mean(), hi.mean()])
    sd = np.maximum(np.array([lo.std(), hi.std()]), floor)
    w = np.array([0.5, 0.5])
    prev = -np.inf
    for it in range(1, iterations + 1):
        dens = w / (sd * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((x[:, None] - mu) / sd) ** 2)
        total = dens.sum(1, keepdims=True) + 1e-300
        ll = float(np.log(total).sum())
        r = dens / total
        nk = r.sum(0) + 1e-12
        w = nk / x.size
        mu = (r * x[:, None]).sum(0) / nk
        sd = np.maximum(np.sqrt((r * (x[:, None] - mu) ** 2).sum(0) / nk), floor)
        if abs(ll - prev) < tol * max(1.0, abs(ll)):
            break
        prev = ll
    order = np.argsort(mu)
    return {"means": mu[order].tolist(), "sds": sd[order].tolist(), "weights": w[order].tolist(), "iterations": it}


def choose_threshold(scores: np.ndarray, method: str = "mixture", target_false_alarm: float = 0.2, lesion_free_share: float | None = None) -> dict:
    """A presence threshold from unlabelled lesion scores (see the module doc); returns ``{"value", "method", "inputs", ...}``.

    Args:
        scores: (n,) image-level lesion scores of the site's frames.
        method: ``"mixture"`` or ``"lesion_free_share"``.
        target_false_alarm: the false-alarm rate aimed at on lesion-free frames, in (0, 1).
        lesion_free_share: the stated share of lesion-free frames (``lesion_free_share`` only), in (0, 1].

    Example:
        >>> choose_threshold(np.array([0.1, 0.2, 0.3, 0.9]), "lesion_free_share", 0.5, 1.0)["value"]   # the median
        0.25
    """
    scores = np.asarray(scores, np.float64)
    if method not in THRESHOLD_METHODS:
        raise ConfigError(f"threshold_method must be one of {list(THRESHOLD_METHODS)}, got {method!r}")
    if not 0.0 < float(target_false_alarm) < 1.0:
        raise ConfigError(f"target_false_alarm must be in (0, 1), got {target_false_alarm!r}")
    alpha = float(target_false_alarm)
    inputs = {"frames": int(scores.size), "target_false_alarm": alpha}
    if method == "lesion_free_share":
        if lesion_free_share is None or not 0.0 < float(lesion_free_share) <= 1.0:
            raise ConfigError(f"threshold_method 'lesion_free_share' needs lesion_free_share in (0, 1] (the share of lesion-free frames at the site), got {lesion_free_share!r}")
        q = float(lesion_free_share) * (1.0 - alpha)
        inputs["lesion_free_share"] = float(lesion_free_share)
        return {"value": float(np.quantile(scores, q)), "method": method, "inputs": inputs, "quantile": q}
    fit = fit_two_gaussians(scores)
    z = statistics.NormalDist().inv_cdf(1.0 - alpha)
    value = fit["means"][0] + z * fit["sds"][0]
    return {"value": float(value), "method": method, "inputs": inputs, "mixture": fit,
            "rule": "mean + z * sd of the low (lesion-free) component, z = the standard normal's (1 - target_false_alarm) quantile"}


def load_site_profile(path: str | os.PathLike) -> dict:
    """Read and check a ``site_profile.json``. Raises a clear error naming the file for a missing or malformed one."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"site profile not found: {path}. Make one with: python -m monai.bundle run profile --config_file "
                             "\"['bundle/configs/inference.json','bundle/configs/site_profile.json']\" --dataset_dir FRAMES --output_dir OUT")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(f"site profile {path} is not readable JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != PROFILE_FORMAT:
        raise InputFileError(f"{path} is not a site profile (format {doc.get('format') if isinstance(doc, dict) else None!r}, expected {PROFILE_FORMAT!r})")
    try:
        float(doc["presence_threshold"]["value"])
        str(doc["model"]["fingerprint"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputFileError(f"site profile {path} lacks presence_threshold.value or model.fingerprint ({e!r})") from e
    return doc


def apply_site_profile(network: torch.nn.Module, path: str | os.PathLike, fingerprint: str | None = None) -> dict:
    """Set ``network``'s presence threshold to the profile's; returns what the summary records about it.

    Args:
        fingerprint: the network's :func:`network_fingerprint`, if already computed.

    Raises:
        ConfigError: the profile was made with another model, or the network has no presence decision.
    """
    net = getattr(network, "module", network)
    doc = load_site_profile(path)
    if type(net).__name__ == "OnnxRuntimeNetwork":  # its graph carries the model's threshold
        raise ConfigError(f"site profile {path}: a site profile applies to the torch engine only (engine onnxruntime bakes the "
                          "model's presence threshold into its graph); use --engine torch with --site_profile")
    if not getattr(net, "presence_decision", False) or not hasattr(net, "presence_threshold"):
        raise ConfigError(f"site profile {path}: the network's presence decision is off, so a site threshold would change nothing; set presence_decision true")
    mine = fingerprint or network_fingerprint(net)
    if doc["model"]["fingerprint"] != mine:
        raise ConfigError(f"site profile {path} was made with another model (fingerprint {doc['model']['fingerprint']}, this model {mine}); "
                          "make the profile again with this model")
    value = float(doc["presence_threshold"]["value"])
    net.presence_threshold.fill_(value)
    return {"path": str(path), "site": doc.get("site"), "presence_threshold": value, "method": doc["presence_threshold"].get("method"),
            "model_presence_threshold": doc["model"].get("presence_threshold")}


class SiteProfiler:
    """Profile the frames under a folder (see the module doc).

    Args:
        network: an MCDRL network with weights loaded and a calibrated confounder readout (``read_frames`` is used).
        output_dir: receives ``site_profile.json``, ``site_profile.md`` and ``site_profile.png``.
        site: a name for the site, recorded in the profile (default: the folder's name).
        min_frames: fewer readable frames than this is an error.
        threshold_method, target_false_alarm, lesion_free_share: see :func:`choose_threshold`.
        rare_share: the training share below which a confounder counts as rare in training.
        batch_size, max_side, device: as for the folder runner.

    Example:
        >>> SiteProfiler(net, "out/", min_frames=60).run("site_frames/")["presence_threshold"]["value"]
    """

    def __init__(self, network: torch.nn.Module, output_dir: str | os.PathLike, site: str | None = None, min_frames: int = 30,
                 threshold_method: str = "mixture", target_false_alarm: float = 0.2, lesion_free_share: float | None = None,
                 rare_share: float = 0.10, batch_size: int = 8, max_side: int = DEFAULT_MAX_SIDE, device: str | torch.device | None = None):
        if threshold_method not in THRESHOLD_METHODS:
            raise ConfigError(f"threshold_method must be one of {list(THRESHOLD_METHODS)}, got {threshold_method!r}")
        self.network = network
        self.output_dir = Path(output_dir)
        self.site = site
        self.min_frames = int(min_frames)
        self.threshold_method = threshold_method
        self.target_false_alarm = float(target_false_alarm)
        self.lesion_free_share = None if lesion_free_share in (None, "", "null") else float(lesion_free_share)
        self.rare_share = float(rare_share)
        self.batch_size = max(int(batch_size), 1)
        self.max_side = int(max_side)
        self.device = torch.device(device) if device is not None else next(network.parameters()).device

    def read(self, input_path: str | os.PathLike) -> tuple[list[dict], list[CaseResult]]:
        """Per-frame readings ``[{"case", "frame", "lesion_score", "confounder_scores" (M,)}]`` and the unreadable cases."""
        net = getattr(self.network, "module", self.network).eval()
        cases = DiscoverCases(self.max_side, exclude=[self.output_dir])(input_path)
        bad = [CaseResult(c.name, c.input, c.kind, c.kind, c.reason, list(c.warnings), c.series_uid) for c in cases if not c.processable]
        done = 0

        def report(r: CaseResult, line: str = "") -> None:  # the folder runner's wording for errors and skipped files
            nonlocal done
            done += 1
            if r.status == "ok":
                logger.info("[%d/%d] ok %s: %s", done, len(cases), r.input, line)
            else:
                (logger.warning if r.status == "error" else logger.info)("[%d/%d] %s %s: %s", done, len(cases), r.status.upper(), r.input, r.reason)

        for r in bad:
            report(r)
        frames: list[dict] = []
        load = LoadCase()
        with quiet_dicom(), torch.inference_mode():
            for c in (c for c in cases if c.processable):
                try:
                    loaded = load(c)
                except ValueError as e:  # the runner's wording: the reason without the repeated input path
                    r = CaseResult(c.name, c.input, c.kind, "error", str(e).removeprefix(f"{c.input}: "), list(c.warnings), c.series_uid, c.frames)
                    bad.append(r)
                    report(r)
                    continue
                x = loaded.frames
                for s in range(0, x.shape[0], self.batch_size):
                    score, conf = net.read_frames(x[s : s + self.batch_size].to(self.device))
                    for j in range(score.shape[0]):
                        frames.append({"case": c.name, "frame": s + j, "lesion_score": float(score[j]), "confounder_scores": conf[j].float().cpu()})
                report(CaseResult(c.name, c.input, c.kind, "ok"), f"{x.shape[0]} frame(s) read")
        return frames, [r for r in bad if r.status == "error"]

    def run(self, input_path: str | os.PathLike) -> dict:
        """Read the folder, build the profile, write the three files; returns the profile."""
        net = getattr(self.network, "module", self.network)
        readout = net.readout
        if not readout.is_calibrated:
            readout.present(torch.zeros(1, readout.thresholds.shape[0]))  # raises the clear "not calibrated" error
        frames, bad = self.read(input_path)
        if len(frames) < self.min_frames:
            raise InputFileError(f"{input_path}: found {len(frames)} readable frame(s)" + (f" ({len(bad)} unreadable file(s) or series)" if bad else "")
                                 + f"; a site profile needs at least {self.min_frames} (min_frames)")
        names = list(net.confounder_names)
        scores = torch.stack([f["confounder_scores"] for f in frames])
        present = readout.present(scores).numpy()
        site_share = present.mean(0)
        source_share = readout.source_share.cpu().numpy()
        lesion_scores = np.array([f["lesion_score"] for f in frames])
        threshold = choose_threshold(lesion_scores, self.threshold_method, self.target_false_alarm, self.lesion_free_share)
        model_threshold = float(net.presence_threshold)
        threshold["model_presence_threshold"] = model_threshold
        threshold["frames_above"] = {"site_threshold": float((lesion_scores >= threshold["value"]).mean()), "model_threshold": float((lesion_scores >= model_threshold).mean())}
        conf = []
        for m, name in enumerate(names):
            flag = bool(source_share[m] < self.rare_share <= site_share[m])
            conf.append({"name": name, "site_share": round(float(site_share[m]), 4), "training_share": round(float(source_share[m]), 4), "rare_in_training": flag})
        doc = {
            "format": PROFILE_FORMAT,
            "site": self.site or Path(str(input_path)).name,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "input": Path(str(input_path)).name,
            "model": {"fingerprint": network_fingerprint(net), "presence_threshold": model_threshold},
            "frames": len(frames),
            "cases": len({f["case"] for f in frames}),
            "unreadable": [{"input": r.input, "reason": r.reason} for r in bad],
            "readout": {"what": "cos(F_vis, z_m) - cos(F_vis, reference prompt) against per-confounder thresholds calibrated on the source sites",
                        "rare_share": self.rare_share},
            "confounders": conf,
            "presence_threshold": threshold,
            "lesion_score_quantiles": {str(q): round(float(np.quantile(lesion_scores, q)), 5) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
            "per_frame": [{"case": f["case"], "frame": f["frame"], "lesion_score": round(f["lesion_score"], 5),
                           "confounders": [names[m] for m in np.flatnonzero(present[i])]} for i, f in enumerate(frames)],
        }
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "site_profile.json") as tmp:
            Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
        with atomic_path(out / "site_profile.md") as tmp:
            Path(tmp).write_text("\n".join(profile_markdown(doc)) + "\n")
        profile_chart(doc, out / "site_profile.png")
        logger.info("site profile of %d frame(s) (%d unreadable case(s)) -> %s; presence threshold %.4f (%s; the model's: %.4f)",
                    len(frames), len(bad), out / "site_profile.json", threshold["value"], threshold["method"], model_threshold)
        return doc


def profile_markdown(doc: dict) -> list[str]:
    """The profile as markdown lines: the confounder table, the flags and the threshold."""
    t = doc["presence_threshold"]
    lines = [f"# Site profile: {doc['site']}", "", f"{doc['frames']} frame(s) from {doc['cases']} case(s); {len(doc['unreadable'])} unreadable.",
             "Confounders read zero-shot by the model's confounder readout (the folder runner's report reads them the same way).", "",
             "| confounder | this site | training sites | flag |", "|---|---|---|---|"]
    for c in sorted(doc["confounders"], key=lambda c: -c["site_share"]):
        flag = "rare in training" if c["rare_in_training"] else ""
        lines.append(f"| {c['name']} | {100 * c['site_share']:.0f}% | {100 * c['training_share']:.0f}% | {flag} |")
    rare = [c["name"] for c in doc["confounders"] if c["rare_in_training"]]
    lines += ["", f"Rare in training (under {100 * doc['readout']['rare_share']:.0f}% of training frames) but present here: {', '.join(rare) if rare else 'none'}.", "",
              f"Presence threshold for this site: {t['value']:.4f} (method `{t['method']}`, inputs {json.dumps(t['inputs'])}); the model's own: "
              f"{t['model_presence_threshold']:.4f}. Frames at or above it: {100 * t['frames_above']['site_threshold']:.0f}% (with the model's: "
              f"{100 * t['frames_above']['model_threshold']:.0f}%)."]
    return lines


def profile_chart(doc: dict, path: str | os.PathLike) -> Path:
    """A horizontal bar chart of the site's share per confounder beside the training sites' (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = doc["confounders"]
    y = np.arange(len(conf))
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(conf) + 1.4), dpi=110)
    ax.barh(y - 0.2, [100 * c["training_share"] for c in conf], 0.4, label="training sites", color="#9aa5b1")
    ax.barh(y + 0.2, [100 * c["site_share"] for c in conf], 0.4, label=f"site {doc['site']}", color="#d1495b")
    ax.set_yticks(y, [c["name"] + (" (rare in training)" if c["rare_in_training"] else "") for c in conf], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of frames (%)")
    ax.set_xlim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Confounder profile: site {doc['site']} ({doc['frames']} frames)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
