"""Builders for the colonoscopy polyp datasets and the PraNet benchmark split (every entry: ``"polyp"``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .core import DatalistError, first_dir, list_images, make_entries, pair_by_stem

POLYP = "polyp"


@dataclass(frozen=True)
class Layout:
    """One published folder layout: image and mask folders relative to the dataset folder."""

    images: str
    masks: str
    image_pattern: str | None = None  #: regex the image stem must match (flat layouts mixing both kinds)
    mask_pattern: str | None = None
    mask_prefix: str = ""  #: stripped from mask stems before matching (ETIS / ColonDB ``p<n>``)


def locate(root: Path, aliases: Sequence[str], layouts: Sequence[Layout], site: str) -> tuple[Path, Layout]:
    """Find the dataset folder and layout: ``root`` itself or ``root/<alias>``, first layout whose image and
    mask folders both exist. When only the image folder exists, raise naming the mask folder looked in."""
    bases = [root] + [root / a for a in aliases]
    for base in bases:
        for lay in layouts:
            if list_images(base / lay.images, pattern=lay.image_pattern) and list_images(
                base / lay.masks, pattern=lay.mask_pattern
            ):
                return base, lay
    for base in bases:
        for lay in layouts:
            if list_images(base / lay.images, pattern=lay.image_pattern):
                raise DatalistError(
                    f"site {site!r}: images found in {base / lay.images} but no masks: looked in {base / lay.masks}"
                )
    expected = "; ".join(f"{lay.images}/ + {lay.masks}/" for lay in layouts)
    raise DatalistError(
        f"site {site!r}: no known layout under {root} (also tried {', '.join(aliases)} inside it); "
        f"expected image and mask folders: {expected}"
    )


def simple_builder(site: str, aliases: Sequence[str], layouts: Sequence[Layout]) -> Callable[..., list[dict]]:
    """A builder for a single-site polyp dataset with one image and one mask folder."""

    def build(root: Path) -> list[dict]:
        base, lay = locate(Path(root), aliases, layouts, site)
        pairs = pair_by_stem(
            base / lay.images,
            base / lay.masks,
            site=site,
            image_pattern=lay.image_pattern,
            mask_pattern=lay.mask_pattern,
            mask_prefix=lay.mask_prefix,
        )
        return make_entries(pairs, site, POLYP)

    build.__doc__ = f"Entries of {site} (all ``polyp``); layouts tried: {[(l.images, l.masks) for l in layouts]}."
    return build


_IMAGES_MASKS = Layout("images", "masks")

build_kvasir_seg = simple_builder("Kvasir-SEG", ["Kvasir-SEG", "kvasir-seg", "Kvasir"], [_IMAGES_MASKS])
build_cvc_clinicdb = simple_builder(
    "CVC-ClinicDB",
    ["CVC-ClinicDB", "CVC-612"],
    [
        Layout("Original", "Ground Truth"),
        Layout("PNG/Original", "PNG/Ground Truth"),
        Layout("TIF/Original", "TIF/Ground Truth"),
        _IMAGES_MASKS,
    ],
)
build_etis_larib = simple_builder(
    "ETIS-LaribPolypDB",
    ["ETIS-LaribPolypDB", "ETIS-Larib", "ETIS"],
    [Layout("ETIS-LaribPolypDB", "GroundTruth", mask_prefix="p"), _IMAGES_MASKS],
)
build_cvc_colondb = simple_builder(
    "CVC-ColonDB",
    ["CVC-ColonDB", "CVC-ColonDB/CVC-ColonDB"],
    [_IMAGES_MASKS, Layout(".", ".", image_pattern=r"\d+", mask_pattern=r"p\d+", mask_prefix="p")],
)
build_cvc_300 = simple_builder("CVC-300", ["CVC-300", "CVC-T"], [_IMAGES_MASKS])


def build_polypgen(root: Path) -> list[dict]:
    """PolypGen single frames: one site ``PolypGen-C<k>`` per ``data_C<k>`` centre folder."""
    root = Path(root)
    for base in (root, root / "PolypGen2021_MultiCenterData_v3", root / "PolypGen"):
        centres = sorted(
            (p for p in base.glob("data_C*") if p.is_dir() and re.fullmatch(r"data_C\d+", p.name)),
            key=lambda p: int(p.name[6:]),
        )
        if centres:
            break
    else:
        raise DatalistError(f"site 'PolypGen': no data_C<k> centre folders under {root}")
    entries: list[dict] = []
    for centre in centres:
        k = centre.name[len("data_C") :]
        site = f"PolypGen-C{k}"
        pairs = pair_by_stem(centre / f"images_C{k}", centre / f"masks_C{k}", site=site)
        entries += make_entries(pairs, site, POLYP)
    return entries


#: PraNet TestDataset sub-folder -> site. The first three are the unseen sites of the PraNet protocol.
PRANET_UNSEEN_TEST = {"CVC-ColonDB": "CVC-ColonDB", "ETIS-LaribPolypDB": "ETIS-LaribPolypDB", "CVC-300": "CVC-300"}
PRANET_SEEN_TEST = {"Kvasir": "Kvasir-SEG", "CVC-ClinicDB": "CVC-ClinicDB"}

_KVASIR_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]{16,}", re.IGNORECASE)  # e.g. cju0qkwl35piu0993l0dewei2


def pranet_source(name: str) -> str:
    """Source site of a PraNet TrainDataset file: numeric stems are CVC-ClinicDB, long hash stems Kvasir-SEG."""
    stem = Path(name).stem
    if stem.isdigit():
        return "CVC-ClinicDB"
    if _KVASIR_NAME.fullmatch(stem):
        return "Kvasir-SEG"
    raise DatalistError(
        f"PraNet TrainDataset file {name!r}: cannot tell its source (CVC-ClinicDB files are numeric like 1.png, "
        "Kvasir-SEG files are hash names like cju0qkwl35piu0993l0dewei2.png)"
    )


def build_pranet(root: Path, include_seen_test: bool = False) -> list[dict]:
    """The PraNet split: TrainDataset -> training (sites Kvasir-SEG / CVC-ClinicDB by file naming), the unseen
    CVC-ColonDB, ETIS-LaribPolypDB and CVC-300 test sets -> test; ``include_seen_test`` adds TestDataset/Kvasir
    and TestDataset/CVC-ClinicDB to test as well."""
    root = Path(root)
    for base in (root, root / "data"):
        if (base / "TrainDataset").is_dir() or (base / "TestDataset").is_dir():
            break
    else:
        raise DatalistError(f"PraNet: neither TrainDataset/ nor TestDataset/ under {root} (or {root / 'data'})")
    train = base / "TrainDataset"
    img_dir = first_dir(train, ("image", "images"))
    if img_dir is None:
        raise DatalistError(f"PraNet: no image folder: looked in {train / 'image'} and {train / 'images'}")
    mask_dir = first_dir(train, ("mask", "masks")) or train / "mask"
    pairs = pair_by_stem(img_dir, mask_dir, site="PraNet-TrainDataset")
    entries = [e for img, msk in pairs for e in make_entries([(img, msk)], pranet_source(img.name), POLYP)]
    tests = dict(PRANET_UNSEEN_TEST)
    if include_seen_test:
        tests.update(PRANET_SEEN_TEST)
    for folder, site in tests.items():
        d = base / "TestDataset" / folder
        if not d.is_dir():
            raise DatalistError(f"site {site!r}: PraNet test folder not found: looked in {d}")
        pairs = pair_by_stem(d / "images", d / "masks", site=site)
        entries += make_entries(pairs, site, POLYP, _split="test")
    return entries
