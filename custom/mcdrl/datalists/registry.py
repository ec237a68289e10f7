"""Builder registry, the 5-site leave-one-site-out benchmark and :func:`build_datalist`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

from .airway import build_broncholc, build_laryngoscope8
from .catalog import CATALOG
from .core import DatalistError, inspect_masks, split_entries
from .polyp import (
    build_cvc_300,
    build_cvc_clinicdb,
    build_cvc_colondb,
    build_etis_larib,
    build_kvasir_seg,
    build_polypgen,
    build_pranet,
)

#: [paper] The five sites of the MCDRL leave-one-site-out evaluation: letter -> (builder name, site name).
LOSO5_SITES: dict[str, tuple[str, str]] = {
    "A": ("bm-broncholc", "BM-BronchoLC"),
    "B": ("laryngoscope8", "Laryngoscope8"),
    "C": ("cvc-clinicdb", "CVC-ClinicDB"),
    "D": ("etis-larib", "ETIS-LaribPolypDB"),
    "E": ("kvasir-seg", "Kvasir-SEG"),
}
#: Extra accepted sub-folder names per site (besides the letter, the site name, and "<letter>_<anything>").
_LOSO5_FOLDER_ALIASES = {"D": ("ETIS", "ETIS-Larib"), "E": ("Kvasir",)}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def loso5_folder(root: Path, letter: str) -> Path:
    """The sub-folder of ``root`` holding site ``letter``: named ``A``, ``A_<anything>``, or by dataset name."""
    _, site = LOSO5_SITES[letter]
    wanted = {_norm(letter), _norm(site)} | {_norm(a) for a in _LOSO5_FOLDER_ALIASES.get(letter, ())}
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    for p in subdirs:
        if _norm(p.name) in wanted or re.fullmatch(rf"{letter}[ _\-].+", p.name, re.IGNORECASE):
            return p
    raise DatalistError(
        f"site {site!r} (loso5 site {letter}): no sub-folder of {root} named {letter}, {letter}_<...> or {site}"
    )


def build_loso5(root: Path, sites: Sequence[str] = tuple(LOSO5_SITES)) -> list[dict]:
    """Every entry of the chosen loso5 sites (letters), each built from its sub-folder of ``root``."""
    root = Path(root)
    entries: list[dict] = []
    for letter in sites:
        letter = letter.upper()
        if letter not in LOSO5_SITES:
            raise DatalistError(f"unknown loso5 site {letter!r}; known: {', '.join(LOSO5_SITES)}")
        builder_name, _ = LOSO5_SITES[letter]
        entries += BUILDERS[builder_name](loso5_folder(root, letter))
    return entries


#: Dataset name -> builder ``(root, **options) -> entries``.
BUILDERS: dict[str, Callable[..., list[dict]]] = {
    "kvasir-seg": build_kvasir_seg,
    "cvc-clinicdb": build_cvc_clinicdb,
    "etis-larib": build_etis_larib,
    "cvc-colondb": build_cvc_colondb,
    "cvc-300": build_cvc_300,
    "polypgen": build_polypgen,
    "bm-broncholc": build_broncholc,
    "laryngoscope8": build_laryngoscope8,
    "pranet": build_pranet,
    "loso5": build_loso5,
}

#: Other spellings accepted for a dataset name.
ALIASES = {
    "kvasir": "kvasir-seg",
    "clinicdb": "cvc-clinicdb",
    "cvc-612": "cvc-clinicdb",
    "etis": "etis-larib",
    "etis-laribpolypdb": "etis-larib",
    "colondb": "cvc-colondb",
    "endoscene": "cvc-300",
    "broncholc": "bm-broncholc",
}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in BUILDERS:
        raise DatalistError(f"unknown dataset {name!r}; known: {', '.join(BUILDERS)}")
    return key


def _resolve_holdout(name: str, holdout: Sequence[str], sites: set[str]) -> list[str]:
    out = []
    by_norm = {_norm(s): s for s in sites}
    for h in holdout:
        if name == "loso5" and h.upper() in LOSO5_SITES:
            out.append(LOSO5_SITES[h.upper()][1])
        elif _norm(h) in by_norm:
            out.append(by_norm[_norm(h)])
        else:
            raise DatalistError(f"holdout site {h!r} is not in this datalist; sites: {sorted(sites)}")
    return out


def build_datalist(
    name: str,
    root: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    holdout: Sequence[str] = (),
    **options,
) -> dict:
    """Build the datalist of dataset ``name`` from its folder ``root`` (entries hold absolute paths).

    Returns ``{"name", "description", "licence", "url", "sites", "holdout", "val_fraction", "seed", "masks",
    "training", "validation", "test"}``; write it with :func:`mcdrl.datalists.write_datalist`. ``masks`` says per site
    what the masks are (format, value range, JPEG artifacts, the threshold the bundle applies; see
    :func:`mcdrl.datalists.core.inspect_masks`).
    ``holdout`` sites (names, case-insensitive; loso5 also takes letters) go to ``test``. ``options`` go to
    the builder (``include_seen_test`` for pranet, ``sites`` for loso5).
    """
    key = canonical_name(name)
    root = Path(root)
    if not root.is_dir():
        raise DatalistError(f"dataset folder not found: {root}")
    entries = BUILDERS[key](root, **options)
    sites = {e["site"] for e in entries}
    held = _resolve_holdout(key, holdout, sites)
    splits = split_entries(entries, val_fraction=val_fraction, seed=seed, holdout=held)
    info = CATALOG[key]
    return {
        "name": key,
        "description": info.description,
        "licence": info.licence,
        "url": info.url,
        "sites": sorted(sites),
        "holdout": held,
        "val_fraction": val_fraction,
        "seed": seed,
        "masks": inspect_masks(entries),
        **splits,
    }
