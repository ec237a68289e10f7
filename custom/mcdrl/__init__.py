"""MCDRL: Multimodal Causality-Driven Representation Learning for domain-generalised lesion segmentation.

Modules, one per part of the method (Liang et al., CVPR 2026, arXiv 2508.05008):

* :mod:`mcdrl.clip_backbone`     CLIP factory (name + local weights) and the dense visual read-out
* :mod:`mcdrl.region_selection`  MTRS, top-alpha candidate lesion regions
* :mod:`mcdrl.dictionary`        stage 1: the confounder dictionary artifact and its buffers
* :mod:`mcdrl.intervention`      stage 2: the causal intervention (cross-attention to the dictionary)
* :mod:`mcdrl.head`              the segmentation decoder
* :mod:`mcdrl.network`           MCDRLNet, composing the parts
* :mod:`mcdrl.losses`, :mod:`mcdrl.handlers`, :mod:`mcdrl.training`, :mod:`mcdrl.transforms`  training glue
"""

__version__ = "0.3.0"

import importlib as _importlib
import sys as _sys

if _sys.argv and _sys.argv[0].replace("\\", "/").endswith(("monai/bundle/__main__.py", "/mcdrl/__main__.py")):  # CLI runs only
    from .errors import install_cli_hook as _install_cli_hook

    _install_cli_hook()


def __getattr__(name: str):
    """Import submodules on first use, so that configs need only ``$import mcdrl`` (``mcdrl.training.f(...)``)."""
    try:
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise
