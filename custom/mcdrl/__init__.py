"""MCDRL: Multimodal Causality-Driven Representation Learning for domain-generalised lesion segmentation.

The package is arranged in wings, as MONAI is; each wing imports only the ones below it (``tests/test_layout.py``):

* :mod:`mcdrl.networks`    the paper's parts (CLIP backbone, MTRS, confounder dictionary, causal intervention, head),
  :class:`~mcdrl.networks.MCDRLNet` composing them, the losses and the prompt vocabulary
* :mod:`mcdrl.transforms`, :mod:`mcdrl.io`, :mod:`mcdrl.synthetic`, :mod:`mcdrl.datalists`
  data: MONAI transforms, clinical folder I/O (DICOM, NIfTI, PNG), the synthetic world, public datalists
* :mod:`mcdrl.engines`     how a run trains: ignite glue, handlers, checkpoints, distributed, CLIP pretraining
* :mod:`mcdrl.evaluation`  what measures: metrics, leave-one-site-out, speed, CLIP probes
* :mod:`mcdrl.deploy`      the ways out: exports, MONAI Label, the shipped binaries
* :mod:`mcdrl.demo`, and below everything :mod:`mcdrl.errors`, :mod:`mcdrl.paths`, :mod:`mcdrl.utils`
"""

__version__ = "0.9.9"

import importlib as _importlib
import sys as _sys

def _quiet_gpu_decoder_warnings() -> None:
    """MONAI 1.6 builds every image reader inside each ``LoadImage``, and its GPU DICOM decoder (nvImageCodec, CUDA only)
    warns on every machine without one that it "did not register": noise in every run of this CPU bundle, which
    decodes DICOM with pydicom's own plugins (pinned in requirements.txt). Only those two messages are silenced."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "nvImageCodec is not available" not in str(record.msg)

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").addFilter(_Drop())


_quiet_gpu_decoder_warnings()

_argv0 = _sys.argv[0].replace("\\", "/") if _sys.argv else ""
if _argv0.endswith("monai/bundle/__main__.py") or (_argv0.endswith("/__main__.py") and "/mcdrl/" in _argv0):  # CLI runs only
    from .errors import install_cli_hook as _install_cli_hook
    from .errors import warn_dropped_none as _warn_dropped_none

    _install_cli_hook()
    if _argv0.endswith("monai/bundle/__main__.py"):
        _warn_dropped_none()


def __getattr__(name: str):
    """Import submodules on first use, so that configs need only ``$import mcdrl`` (``mcdrl.engines.training.f(...)``)."""
    try:
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise
