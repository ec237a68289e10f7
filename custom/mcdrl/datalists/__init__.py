"""Datalists of the public endoscopy datasets, built from each dataset's published folder layout.

``python -m mcdrl.datalists <name> <root> [--out FILE] [--val-fraction 0.1] [--seed 0] [--holdout SITE]``
writes a MONAI (decathlon-style) JSON datalist::

    {"name": ..., "description": ..., "licence": ..., "url": ..., "sites": [...], "holdout": [...],
     "val_fraction": 0.1, "seed": 0, "paths": "relative to this file's folder" | "absolute",
     "training": [...], "validation": [...], "test": [...], "numTraining": n, "numValidation": n, "numTest": n}

with every entry ``{"image": path, "label": path, "site": str, "lesion_class": str}`` (``lesion_class`` one
of :data:`mcdrl.networks.prompts.LESION_CLASSES` or :data:`mcdrl.networks.prompts.NO_LESION`). Paths are relative to the
datalist file's folder when that folder is inside ``root`` (default ``--out``: ``<root>/datalist_<name>.json``),
absolute otherwise; ``monai.data.load_decathlon_datalist(out, data_list_key=..., base_dir=dirname(out))``
resolves both. Lists are sorted by (site, image) and the validation split is drawn, with a seeded RNG, from
the training sites only. See :mod:`mcdrl.datalists.catalog` for URLs, licences and expected layouts.
"""

from .airway import BRONCHOLC_CLASS_MAP, LARYNGOSCOPE8_CLASS_MAP
from .catalog import CATALOG, DatasetInfo
from .core import DatalistError, DatalistWarning, load_datalist, pair_by_stem, split_entries, write_datalist
from .registry import BUILDERS, LOSO5_SITES, build_datalist, canonical_name

__all__ = [
    "BRONCHOLC_CLASS_MAP",
    "BUILDERS",
    "CATALOG",
    "DatalistError",
    "DatalistWarning",
    "DatasetInfo",
    "LARYNGOSCOPE8_CLASS_MAP",
    "LOSO5_SITES",
    "build_datalist",
    "canonical_name",
    "load_datalist",
    "pair_by_stem",
    "split_entries",
    "write_datalist",
]
