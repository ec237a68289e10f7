"""FolderInferenceRunner: segment every case of a folder tree (or one file) and write masks, SEGs and a summary.

Used by ``bundle/configs/inference.json``'s ``run``::

    python -m monai.bundle run --config_file bundle/configs/inference.json --dataset_dir IN --output_dir OUT [--strict false]

Flow: discover the cases (:mod:`.discovery`), load them one ahead in a worker thread (:mod:`.readers`), run the
network on batches of up to ``batch_size`` frames of one size (frames of a video or volume, and consecutive cases:
the cases are ordered by frame size so that same-size photos share batches), and write each finished case in a
second worker thread (:mod:`.writers`, :mod:`.dicom_seg`). Every case ends as one summary row (:mod:`.summary`).
With ``strict`` (the default), the run raises ``SystemExit`` (exit status 1) after writing the summary if any case
failed; ``strict=False`` exits 0.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mcdrl.errors import InputFileError
from mcdrl.transforms import LesionPostprocess
from mcdrl.utils import as_bool

from .discovery import DEFAULT_MAX_SIDE, Case, DiscoverCases, quiet_dicom, redact
from .readers import LoadCase, LoadedCase
from .site_profile import apply_site_profile
from .summary import CaseResult, Progress, SummaryWriter
from .writers import write_nifti_mask, write_png_mask

__all__ = ["FolderInferenceRunner", "load_weights"]

logger = logging.getLogger("mcdrl.io")


def load_weights(network: torch.nn.Module, path: str | os.PathLike, device: str | torch.device | None = None) -> torch.nn.Module:
    """Load a bare ``state_dict`` (``models/model.pt``) into ``network`` with ``weights_only=True`` and exact keys.

    Raises:
        FileNotFoundError: the file is missing (never silently random weights).
        ConfigError: the weights do not fit the network the config built (one line naming the config key, both values
            and the file; :func:`mcdrl.networks.weights.load_fitting_weights`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"model weights not found: {path}. Train the bundle first (run training), or pass --bundle_root pointing at a bundle with models/model.pt.")
    from mcdrl.networks.weights import load_fitting_weights

    state = torch.load(path, map_location=device or "cpu", weights_only=True)
    return load_fitting_weights(network, state, path)


def _argmax_channels(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, H, W) uint8 label map, exactly as the bundle's postprocessing (softmax, then argmax;
    ties -> the lower index).

    For the 2-class head the argmax is one comparison of the softmax channels: ``argmax(dim=1)`` reduces over a
    strided axis of size 2 and costs ~150 ms per 8 x 256 x 256 batch on one CPU thread, 3x the tiny network itself.
    """
    p = torch.softmax(logits.float(), dim=1)
    if p.shape[1] == 2:
        return (p[:, 1] > p[:, 0]).to(torch.uint8)
    return p.argmax(dim=1).to(torch.uint8)


@dataclass
class _Pending:
    """A loaded case waiting for its frames to go through the network."""

    loaded: LoadedCase
    masks: np.ndarray
    weights: torch.Tensor
    remaining: int
    scores: np.ndarray
    model_s: float = 0.0
    error: str = ""
    outputs: list[Path] = field(default_factory=list)


class FolderInferenceRunner:
    """Segment every case under a folder (or one file) with a 2-D network.

    Args:
        network: an MCDRL network (``predict_with_confounders`` and ``confounder_names`` are used), weights loaded.
        device: where the network runs; frames are moved there batch by batch.
        output_dir: receives ``<case>_mask.png`` (photos), ``<case>_mask.nii.gz`` (NIfTI, DICOM),
            ``<case>_seg.dcm`` (DICOM), ``summary.csv`` and ``summary.json``.
        strict: raise ``SystemExit`` (status 1) after the summary if any case failed. Strings "true"/"false" work.
        batch_size: frames per network call (frames of one size only).
        max_side: images with a larger side are errors (default 8192 px).
        write_seg: write DICOM SEG for DICOM inputs (needs highdicom; without it each DICOM case gets a warning).
        progress: True/False forces the tqdm bar; None: bar on a terminal, log lines otherwise.
        min_lesion_fraction, keep_largest_lesion: the bundle's post-processing of each frame's mask
            (:class:`mcdrl.transforms.LesionPostprocess`), the same as ``postprocessing`` in inference.json.
        site_profile: a ``site_profile.json`` (:mod:`.site_profile`) whose presence threshold replaces the model's for
            this run; the summary names it. None: the model's own threshold.

    Example:
        >>> runner = FolderInferenceRunner(net, "cpu", "out/", strict=False)
        >>> results = runner.run("pacs_export/")
        >>> [r.status for r in results]
    """

    def __init__(self, network: torch.nn.Module, device: str | torch.device | None = None, output_dir: str | os.PathLike = "output",
                 strict: bool | str = True, batch_size: int = 8, max_side: int = DEFAULT_MAX_SIDE, write_seg: bool | str = True,
                 progress: bool | None = None, min_lesion_fraction: float = 0.0, keep_largest_lesion: bool = False,
                 site_profile: str | os.PathLike | None = None):
        self.network = network
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        self.output_dir = Path(output_dir)
        self.strict = as_bool(strict, "strict")
        self.batch_size = max(int(batch_size), 1)
        self.max_side = int(max_side)
        self.write_seg = as_bool(write_seg, "write_seg")
        self.progress = progress
        self._load = LoadCase()
        self._post = LesionPostprocess(min_lesion_fraction, as_bool(keep_largest_lesion, "keep_largest_lesion"))
        self.site_profile = None if site_profile in (None, "", "null", "none") else Path(site_profile)

    # ------------------------------------------------------------------ public
    def run(self, input_path: str | os.PathLike) -> list[CaseResult]:
        """Process ``input_path``; returns one :class:`CaseResult` per case (also in the summary files)."""
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        net = getattr(self.network, "module", self.network)
        net.eval()
        self._names = list(net.confounder_names)
        profile = apply_site_profile(net, self.site_profile) if self.site_profile is not None else None
        cases = DiscoverCases(self.max_side, exclude=[out])(input_path)
        todo = [c for c in cases if c.processable]
        if not todo and not any(c.kind == "error" for c in cases):
            raise InputFileError(f"no images under {input_path} (looked for PNG/JPEG/BMP/TIFF, NIfTI and DICOM files)")
        results = [CaseResult(c.name, c.input, c.kind, c.kind, c.reason, list(c.warnings), c.series_uid) for c in cases if not c.processable]
        summary = SummaryWriter(out, str(input_path))
        progress = Progress(len(cases), self.progress)
        readout = getattr(net, "readout", None)
        extra = {"network": type(net).__name__, "confounders": self._names, "batch_size": self.batch_size, "strict": self.strict,
                 "confounder_readout": "calibrated" if readout is not None and readout.is_calibrated else "uncalibrated (scores are cos(F_vis, z_m); run calibrate_readout)",
                 "site_profile": profile}
        t0 = time.perf_counter()
        try:
            for r in results:
                progress.update(r)
            todo.sort(key=lambda c: c.size or (0, 0))  # same-size cases next to each other, so that they batch
            with quiet_dicom(), torch.inference_mode():
                self._process(todo, results, summary, progress, extra)
        finally:
            progress.close()
            extra["seconds"] = round(time.perf_counter() - t0, 3)
            summary.write(results, final=True, extra=extra)
        failed = [r for r in results if r.status == "error"]
        ok = sum(r.status == "ok" for r in results)
        message = f"{ok} case(s) ok, {len(failed)} failed, {sum(r.status == 'skipped' for r in results)} skipped; summary: {out / 'summary.csv'}"
        if failed and self.strict:
            raise SystemExit(f"mcdrl: {message}. Failed cases are listed in the summary; --strict false exits with status 0.")
        (logger.warning if failed else logger.info)(message)
        return results

    # ------------------------------------------------------------------ internals
    def _process(self, todo: list[Case], results: list[CaseResult], summary: SummaryWriter, progress: Progress, extra: dict) -> None:
        buffer: list[tuple[_Pending, int, int]] = []
        writes: collections.deque[Future] = collections.deque()

        def collect(block: bool) -> None:
            while writes and (block or writes[0].done()):
                r = writes.popleft().result()
                results.append(r)
                progress.update(r)
                summary.write(results, extra=extra)

        def flush() -> None:
            if not buffer:
                return
            for st in self._infer(buffer):
                writes.append(writer.submit(self._finish, st))
            buffer.clear()
            collect(block=False)

        one = {"max_workers": 1, "initializer": torch.set_num_threads, "initargs": (1,)}  # no second OpenMP team next to the model's
        with ThreadPoolExecutor(thread_name_prefix="mcdrl-load", **one) as loader, ThreadPoolExecutor(thread_name_prefix="mcdrl-write", **one) as writer:
            loads = collections.deque(loader.submit(self._load_case, c) for c in todo[:2])
            nxt = 2
            while loads:
                item = loads.popleft().result()
                if nxt < len(todo):
                    loads.append(loader.submit(self._load_case, todo[nxt]))
                    nxt += 1
                if isinstance(item, CaseResult):
                    results.append(item)
                    progress.update(item)
                    continue
                n, _, h, w = item.frames.shape
                st = _Pending(item, np.zeros((n, h, w), np.uint8), torch.zeros(len(self._names)), n, np.zeros(n, np.float32))
                start = 0
                while start < n:
                    if buffer and buffer[0][0].loaded.frames.shape[-2:] != (h, w):
                        flush()
                    take = min(self.batch_size - sum(b[2] for b in buffer), n - start)
                    buffer.append((st, start, take))
                    start += take
                    if sum(b[2] for b in buffer) >= self.batch_size:
                        flush()
            flush()
            collect(block=True)

    def _load_case(self, case: Case) -> LoadedCase | CaseResult:
        try:
            return self._load(case)
        except ValueError as e:
            return CaseResult(case.name, case.input, case.kind, "error", str(e).removeprefix(f"{case.input}: "), list(case.warnings), case.series_uid, case.frames)

    def _infer(self, buffer: list[tuple[_Pending, int, int]]) -> list[_Pending]:
        """Run one batch; returns the cases this batch completed."""
        net = getattr(self.network, "module", self.network)
        total = sum(b[2] for b in buffer)
        t0 = time.perf_counter()
        try:
            x = torch.cat([st.loaded.frames[s : s + k] for st, s, k in buffer]).to(self.device, non_blocking=True)
            if getattr(net, "presence_decision", None) is not None:
                logits, weights, scores = net.predict_with_confounders(x, with_score=True)
                scores = scores.float().cpu().numpy()
            else:  # a network without the presence decision's score
                logits, weights = net.predict_with_confounders(x)
                scores = np.full(x.shape[0], np.nan, np.float32)
            masks = np.stack([self._post(m) for m in _argmax_channels(logits).cpu().numpy()])
            weights = weights.float().cpu()
            error = ""
        except Exception as e:  # noqa: BLE001 - a failed batch fails its cases, not the run
            masks, weights, scores, error = None, None, None, f"model call failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        dt = time.perf_counter() - t0
        done, offset = [], 0
        for st, s, k in buffer:
            if error:
                st.error = st.error or error
            else:
                st.masks[s : s + k] = masks[offset : offset + k]
                st.weights += weights[offset : offset + k].sum(0)
                st.scores[s : s + k] = scores[offset : offset + k]
            offset += k
            st.model_s += dt * k / total
            st.remaining -= k
            if st.remaining == 0:
                done.append(st)
        return done

    def _finish(self, st: _Pending) -> CaseResult:
        """Write the outputs of a finished case (writer thread) and build its result."""
        lc, case = st.loaded, st.loaded.case
        n, h, w = st.masks.shape
        res = CaseResult(case.name, case.input, case.kind, "ok", "", list(lc.warnings), case.series_uid, n, h, w)
        t0 = time.perf_counter()
        try:
            if st.error:
                raise RuntimeError(st.error)
            out = self.output_dir
            if case.kind == "image":
                st.outputs.append(write_png_mask(st.masks[0], out / f"{case.name}_mask.png"))
            else:
                label = lc.label_map(st.masks)
                st.outputs.append(write_nifti_mask(label, lc.affine, out / f"{case.name}_mask.nii.gz", header=lc.nifti_header))
            if case.kind == "dicom" and self.write_seg:
                try:
                    from .dicom_seg import write_dicom_seg
                except ImportError as e:  # pragma: no cover - highdicom missing
                    res.warnings.append(f"DICOM SEG not written: {e}")
                else:
                    st.outputs.append(write_dicom_seg(st.masks, case.headers, out / f"{case.name}_seg.dcm"))
        except Exception as e:  # noqa: BLE001 - one failed case is one error line; remove its other outputs
            for p in st.outputs:
                with contextlib.suppress(OSError):
                    p.unlink()
            reason = str(e) if isinstance(e, RuntimeError) and st.error else f"writing the output failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            res.status, res.reason, res.outputs = "error", redact(reason, case.redact), []
            res.seconds = lc.seconds + st.model_s + time.perf_counter() - t0
            return res
        mean_w = st.weights / max(n, 1)
        top = torch.argsort(mean_w, descending=True)[:3].tolist()
        res.top_confounders = [(self._names[i], float(mean_w[i])) for i in top]
        res.lesion_score = None if np.isnan(st.scores).all() else float(np.nanmax(st.scores))
        res.lesion_area_px = int(np.count_nonzero(st.masks))
        res.lesion_frames = int(np.count_nonzero(st.masks.reshape(n, -1).any(axis=1)))
        if lc.pixel_area_mm2 is not None:
            res.lesion_area_mm2 = res.lesion_area_px * lc.pixel_area_mm2
        res.outputs = [p.relative_to(self.output_dir).as_posix() for p in st.outputs]
        res.warnings = [redact(wn, case.redact) for wn in res.warnings]
        res.seconds = lc.seconds + st.model_s + time.perf_counter() - t0
        st.loaded.frames = None  # free the model input
        return res
