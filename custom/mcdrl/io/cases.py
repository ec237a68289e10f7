"""The case record shared by discovery, readers, the runner and the summary, and the patient-data guards."""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEFAULT_MAX_SIDE", "Case", "check_side", "first_line", "quiet_dicom", "redact"]

DEFAULT_MAX_SIDE = 8192


@dataclass
class Case:
    """One unit of work and of output.

    Attributes:
        name: unique output stem, a relative POSIX path ("sub/frame01", "dicom/<SeriesInstanceUID>").
        kind: "image" (PNG/JPEG/BMP/TIFF), "nifti", "dicom", or "error" / "skipped" (no processing).
        input: the input, relative to the input root (a file, or for a multi-file DICOM stack its folder).
        files: the files; for a DICOM stack in slice order.
        size: (rows, columns) of each frame, from the header. frames: number of 2-D frames (slices).
        series_uid: DICOM SeriesInstanceUID. reason: why "error" / "skipped". warnings: notes for the summary.
        headers: pydicom datasets without pixel data (DICOM only), in the order of ``files``.
        redact: patient-identifying strings (PatientName, PatientID) to scrub from any message about this case.
    """

    name: str
    kind: str
    input: str
    files: list[Path] = field(default_factory=list)
    size: tuple[int, int] | None = None
    frames: int | None = None
    series_uid: str | None = None
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    headers: list = field(default_factory=list, repr=False)
    redact: tuple[str, ...] = ()

    @property
    def processable(self) -> bool:
        return self.kind in ("image", "nifti", "dicom")


@contextlib.contextmanager
def quiet_dicom():
    """Silence pydicom's value-validation warnings and log lines (they quote element values, e.g. a PatientName)."""
    import pydicom

    settings = pydicom.config.settings
    loggers = [logging.getLogger(n) for n in ("pydicom", "highdicom")]
    old_mode, old_levels = settings.reading_validation_mode, [lg.level for lg in loggers]
    settings.reading_validation_mode = pydicom.config.IGNORE
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
            warnings.filterwarnings("ignore", module=r"highdicom(\.|$)")
            yield
    finally:
        settings.reading_validation_mode = old_mode
        for lg, level in zip(loggers, old_levels):
            lg.setLevel(level)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """Replace every patient-identifying string of ``secrets`` in ``text`` by ``<redacted>``."""
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, "<redacted>")
    return text


def check_side(rows: int, cols: int, max_side: int) -> None:
    if max(rows, cols) > max_side:
        raise ValueError(f"image is {cols} x {rows} px; the limit is {max_side} px per side (max_side)")


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
