"""Per-case results, the summary files (``summary.csv``, ``summary.json``) and progress reporting.

One row per case, in input order, whatever happened to it: ``ok``, ``error`` (with the reason) or ``skipped``
(a stray non-image file). Both files are rewritten atomically while the run goes (at most every few seconds) and at
the end, so an interrupted run still leaves a complete summary of what was done. No patient attribute is ever
written: inputs are shown as paths relative to the input folder, DICOM cases are named by UIDs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .writers import atomic_output

__all__ = ["CSV_COLUMNS", "CaseResult", "Progress", "SummaryWriter"]

logger = logging.getLogger("mcdrl.io")

CSV_COLUMNS = [
    "case", "input", "kind", "status", "reason", "warnings", "series_uid", "frames", "rows", "columns",
    "lesion_score", "lesion_area_px", "lesion_area_mm2", "lesion_frames", "seconds",
    "confounder_1", "weight_1", "confounder_2", "weight_2", "confounder_3", "weight_3", "outputs",
]


@dataclass
class CaseResult:
    """The outcome of one case.

    Attributes:
        case: the output stem. input: relative input path. kind: image / nifti / dicom / error / skipped.
        status: "ok", "error" or "skipped". reason: why not ok.
        lesion_area_px: lesion pixels summed over all frames. lesion_area_mm2: the same in mm^2 (None when the
            pixel spacing is unknown: photos, DICOM without PixelSpacing, NIfTI without spatial units).
        lesion_score: the network's image-level lesion score (1 - P(normal mucosa)), the highest over the frames; a
            frame scoring below the model's presence threshold gets an empty mask. lesion_frames: frames with any
            lesion pixel. seconds: load + this case's share of the batched model calls
            + writing. top_confounders: [(name, score)] x 3, the confounder readout's scores averaged over the
            frames (``MCDRLNet.predict_with_confounders``): cos(F_vis, z_m) - cos(F_vis, neutral prompt), highest
            first; the model's calibration thresholds on these scores decide presence (the site profile). outputs: written files, relative to the
            output folder.
    """

    case: str
    input: str
    kind: str
    status: str
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    series_uid: str | None = None
    frames: int | None = None
    rows: int | None = None
    columns: int | None = None
    lesion_area_px: int | None = None
    lesion_area_mm2: float | None = None
    lesion_score: float | None = None
    lesion_frames: int | None = None
    seconds: float | None = None
    top_confounders: list[tuple[str, float]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def csv_row(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k in CSV_COLUMNS}
        row["warnings"] = "; ".join(self.warnings)
        row["outputs"] = "; ".join(self.outputs)
        if self.lesion_area_mm2 is not None:
            row["lesion_area_mm2"] = f"{self.lesion_area_mm2:.3f}"
        if self.seconds is not None:
            row["seconds"] = f"{self.seconds:.3f}"
        if self.lesion_score is not None:
            row["lesion_score"] = f"{self.lesion_score:.4f}"
        for i in range(3):
            name, weight = self.top_confounders[i] if i < len(self.top_confounders) else ("", None)
            row[f"confounder_{i + 1}"], row[f"weight_{i + 1}"] = name, "" if weight is None else f"{weight:.4f}"
        return {k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS}

    def json_record(self) -> dict:
        d = asdict(self)
        d["top_confounders"] = [{"name": n, "weight": round(float(w), 6)} for n, w in self.top_confounders]
        if d["seconds"] is not None:
            d["seconds"] = round(d["seconds"], 4)
        if d["lesion_score"] is not None:
            d["lesion_score"] = round(d["lesion_score"], 6)
        return d


class SummaryWriter:
    """Writes ``summary.csv`` and ``summary.json`` into ``output_dir`` (atomically, throttled while running)."""

    def __init__(self, output_dir: str | os.PathLike, input_root: str, every_s: float = 5.0):
        self.output_dir = Path(output_dir)
        self.input_root = input_root
        self.every_s = float(every_s)
        self._last = 0.0

    def write(self, results: list[CaseResult], final: bool = False, extra: dict | None = None) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.every_s:
            return
        self._last = now
        rows = sorted(results, key=lambda r: (r.input, r.case))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(r.csv_row())
        counts = {s: sum(r.status == s for r in rows) for s in ("ok", "error", "skipped")}
        doc = {"input": self.input_root, "complete": bool(final), "counts": counts, **(extra or {}), "cases": [r.json_record() for r in rows]}
        with atomic_output(self.output_dir / "summary.csv") as tmp:
            Path(tmp).write_text(buf.getvalue(), encoding="utf-8")
        with atomic_output(self.output_dir / "summary.json") as tmp:
            Path(tmp).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _describe(r: CaseResult) -> str:
    if r.status != "ok":
        return f"{r.status.upper()} {r.input}: {r.reason}"
    area = f"{r.lesion_area_px} px" + (f" ({r.lesion_area_mm2:.1f} mm2)" if r.lesion_area_mm2 is not None else "")
    top = ", ".join(n for n, _ in r.top_confounders)
    warn = f"; warnings: {'; '.join(r.warnings)}" if r.warnings else ""
    score = "" if r.lesion_score is None else f" (score {r.lesion_score:.2f})"
    return f"ok {r.input} -> {r.case}: {r.frames} frame(s), lesion {area}{score}, {r.seconds:.2f} s, top confounders: {top}{warn}"


class Progress:
    """A tqdm bar on a terminal, else one log line per case (``mcdrl.io`` logger, INFO; errors at WARNING).

    Args:
        total: number of cases. enabled: True/False forces the bar on/off; None: on when stderr is a terminal.
    """

    def __init__(self, total: int, enabled: bool | None = None):
        self.total, self.done = total, 0
        use_bar = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.bar = None
        if use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="case", dynamic_ncols=True, file=sys.stderr)

    def update(self, r: CaseResult) -> None:
        self.done += 1
        line = f"[{self.done}/{self.total}] {_describe(r)}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(r.status, refresh=False)
            if r.status == "error":
                self.bar.write(line, file=sys.stderr)
        elif r.status == "error":
            logger.warning(line)
        else:
            logger.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
