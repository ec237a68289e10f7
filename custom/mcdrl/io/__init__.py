"""Clinical folder I/O: find every image in a messy export folder, segment it, write masks, DICOM SEG and a summary.

Pipeline (the steps are MONAI ``Transform`` s with dictionary twins, so they drop into ``Compose``)::

    folder or file
      -> DiscoverCases     cases: PNG/JPEG files, NIfTI files, DICOM series grouped by SeriesInstanceUID (split
                           into stacks / instances), and one error or skip line per bad or stray file
      -> LoadCase          model input (N, 3, H, W) float [0, 1] (mcdrl.transforms.ToModelInput) + label geometry
      -> network           FolderInferenceRunner: batched calls on same-size frames -> masks + confounder weights
      -> writers           PNG mask | NIfTI label map (source shape and affine) | DICOM SEG (WriteDicomSeg)
      -> summary.csv / summary.json, one row per case

highdicom is imported only where a DICOM SEG is written (it is absent from MONAI Label's environment).

Entry point: :class:`FolderInferenceRunner` (``bundle/configs/inference.json``'s ``run``; its network may be the
onnxruntime engine's, ``engine`` in inference.json). Its throughput: ``python -m mcdrl.evaluation.speed``.
"""

from .dicom_seg import WriteDicomSeg, WriteDicomSegd, write_dicom_seg
from .discovery import Case, DiscoverCases, DiscoverCasesd, discover
from .readers import LoadCase, LoadCased, LoadedCase
from .runner import FolderInferenceRunner, load_weights
from .summary import CaseResult
from .writers import write_nifti_mask, write_png_mask

__all__ = [
    "Case", "CaseResult", "DiscoverCases", "DiscoverCasesd", "FolderInferenceRunner", "LoadCase", "LoadCased",
    "LoadedCase", "WriteDicomSeg", "WriteDicomSegd", "discover", "load_weights", "write_dicom_seg",
    "write_nifti_mask", "write_png_mask",
]
