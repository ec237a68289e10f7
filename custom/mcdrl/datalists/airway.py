"""Builders for the airway datasets: BM-BronchoLC (bronchoscopy) and Laryngoscope8 (laryngoscopy).

Both label lesions with their own names; the dict constants below map them onto the MCDRL vocabulary
(:data:`mcdrl.networks.prompts.LESION_CLASSES`). Edit the dicts, not the builders, to change a mapping.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from mcdrl.networks.prompts import NO_LESION

from .core import DatalistError, check_lesion_class, first_dir, list_images, pair_by_stem, pair_files, warn

# ----------------------------------------------------------------------------------------------- BM-BronchoLC
BRONCHOLC_SITE = "BM-BronchoLC"

#: BM-BronchoLC's 7 lung-lesion labels (spelt as in the release, typos included: "Muscosal erythema",
#: "Anthrocosis") -> MCDRL lesion class. [ours] The dataset has no polyp/cyst labels; the mapping is ours:
#: neoplastic findings -> tumor, mucosal inflammatory signs -> inflammation, anthracotic pigment
#: plaques -> nodule.
BRONCHOLC_CLASS_MAP: dict[str, str] = {
    "Tumor": "tumor",
    "Vascular growth": "tumor",  # tumour neovascularisation
    "Mucosal infiltration": "tumor",  # submucosal tumour infiltration
    "Stenosis": "tumor",  # airway narrowing; in this lung-cancer cohort mostly tumour-related
    "Muscosal erythema": "inflammation",
    "Mucosal edema of carina": "inflammation",
    "Anthrocosis": "nodule",
}

#: When one image carries several lesion labels, the first class of this list among them wins.
BRONCHOLC_CLASS_PRIORITY: tuple[str, ...] = ("tumor", "nodule", "inflammation")

#: Class of a lesion-masked image that has no (known) lesion label in the label files. [ours]
BRONCHOLC_DEFAULT_CLASS = "tumor"

BRONCHOLC_GROUPS = ("Lung_cancer", "Non_lung_cancer")
BRONCHOLC_LABEL_FILES = ("labels_Lung_lesions_final.json", "labels_Lung_lesions.json")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


_BRONCHO_NORM = {_norm(k): v for k, v in BRONCHOLC_CLASS_MAP.items()}
_BRONCHO_NORM.update({"mucosalerythema": "inflammation", "anthracosis": "nodule"})  # correct spellings too


def broncholc_class(label_names) -> str | None:
    """MCDRL class of an image from its BM-BronchoLC lesion label names (None when none is known)."""
    classes = {_BRONCHO_NORM[_norm(n)] for n in label_names if _norm(n) in _BRONCHO_NORM}
    for cls in BRONCHOLC_CLASS_PRIORITY:
        if cls in classes:
            return cls
    return next(iter(sorted(classes)), None)


def _broncholc_labels(label_files: list[Path]) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for f in label_files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DatalistError(f"site {BRONCHOLC_SITE!r}: cannot read label file {f}: {err}") from err
        if not isinstance(data, list):
            raise DatalistError(f"site {BRONCHOLC_SITE!r}: {f} is not a list of {{object_id, label_name}} records")
        for rec in data:
            if isinstance(rec, dict) and "object_id" in rec and "label_name" in rec:
                labels.setdefault(str(rec["object_id"]), set()).add(str(rec["label_name"]))
    return labels


def build_broncholc(root: Path) -> list[dict]:
    """BM-BronchoLC lung-lesion entries, lesion class from the label files via :data:`BRONCHOLC_CLASS_MAP`.

    Images without a lesion mask (frames with landmarks only) are reported and left out. Validation groups
    are the image's folder (``<patient>/<video>`` in the official layout), so frames of one video stay together.
    """
    root = Path(root)
    site = BRONCHOLC_SITE
    folders: list[tuple[Path, Path]] = []  # (image folder, mask folder)
    label_files: list[Path] = []
    for base in (root, root / "BM-BronchoLC", root / "data"):
        groups = [base / g for g in BRONCHOLC_GROUPS if (base / g / "imgs").is_dir()]
        if groups:
            folders = [(g / "imgs", g / "masks_Lung_lesions") for g in groups]
            label_files = [base / BRONCHOLC_LABEL_FILES[0]] + [g / BRONCHOLC_LABEL_FILES[1] for g in groups]
            break
        split_root = first_dir(base, ("dataset/Lung_lesions", "Lung_lesions", "."))
        if split_root is None:
            continue
        splits = [split_root / s for s in ("train", "val", "test") if (split_root / s / "imgs").is_dir()]
        if splits:
            folders = [(s / "imgs", s / "masks") for s in splits]
            label_files = [base / BRONCHOLC_LABEL_FILES[0]]
            break
    else:
        raise DatalistError(
            f"site {site!r}: no BM-BronchoLC layout under {root}: expected Lung_cancer/imgs + "
            "Lung_cancer/masks_Lung_lesions (and/or Non_lung_cancer/...), or dataset/Lung_lesions/{train,val,test}/{imgs,masks}"
        )
    labels = _broncholc_labels([f for f in label_files if f.is_file()])
    if not labels:
        warn(
            f"site {site!r}: no lesion label file found ({' / '.join(BRONCHOLC_LABEL_FILES)}); every image gets "
            f"lesion_class {BRONCHOLC_DEFAULT_CLASS!r}"
        )
    entries: list[dict] = []
    unlabelled = 0
    for img_dir, mask_dir in folders:
        for img, msk in pair_by_stem(img_dir, mask_dir, site=site, recursive=True):
            cls = broncholc_class(labels.get(img.stem, ()))
            if cls is None:
                unlabelled += 1
                cls = BRONCHOLC_DEFAULT_CLASS
            rel = img.parent.relative_to(img_dir)
            group = f"{img_dir}/{rel}" if rel.parts else str(img)
            entries.append({"image": img, "label": msk, "site": site, "lesion_class": cls, "_group": group})
    if unlabelled and labels:
        warn(f"site {site!r}: {unlabelled} masked images have no known lesion label; given {BRONCHOLC_DEFAULT_CLASS!r}")
    return entries


# ----------------------------------------------------------------------------------------------- Laryngoscope8
LARYNGOSCOPE8_SITE = "Laryngoscope8"

#: Laryngoscope8's 8 published categories -> MCDRL lesion class. [ours] leukoplakia (a premalignant
#: plaque) -> tumor, granuloma and Reinke's oedema (inflammatory) -> inflammation; "Normal" -> no lesion.
LARYNGOSCOPE8_CLASS_MAP: dict[str, str] = {
    "Reinke's Edema": "inflammation",
    "Glottic Cancer": "tumor",
    "Granuloma": "inflammation",
    "Vocal Cord Leukoplakia": "tumor",
    "Vocal Cord Cyst": "cyst",
    "Vocal Cord Nodules": "nodule",
    "Vocal Cord Polyps": "polyp",
    "Normal": NO_LESION,
}

#: Folder (inside the Laryngoscope8 folder) where the user puts the masks the dataset does not publish.
LARYNGOSCOPE8_MASK_DIR = "masks"


def laryngoscope8_class(folder: str) -> str | None:
    """MCDRL class of a Laryngoscope8 category folder name (case, spaces, punctuation, a leading
    "Vocal Cord" and a plural "s" are ignored), None if it is not one of the 8 categories."""
    def forms(name: str) -> set[str]:
        n = _norm(name)
        short = n[len("vocalcord") :] if n.startswith("vocalcord") else n
        return {n, short, n.rstrip("s"), short.rstrip("s")}

    got = forms(folder)
    for name, cls in LARYNGOSCOPE8_CLASS_MAP.items():
        if got & forms(name):
            return check_lesion_class(cls)
    return None


def build_laryngoscope8(root: Path) -> list[dict]:
    """Laryngoscope8 entries, class from the category folder. Raises unless masks were supplied."""
    root = Path(root)
    site = LARYNGOSCOPE8_SITE
    base = root
    if not any(laryngoscope8_class(p.name) for p in root.iterdir() if p.is_dir()) and (root / "Laryngoscope8").is_dir():
        base = root / "Laryngoscope8"
    mask_dir = base / LARYNGOSCOPE8_MASK_DIR
    hint = (
        "Laryngoscope8 publishes image-level labels only; supply binary lesion masks as "
        f"{mask_dir}/[<category folder>/]<image stem>.png"
    )
    if not mask_dir.is_dir():
        raise DatalistError(f"site {site!r}: mask folder not found: looked in {mask_dir}. {hint}")
    masks = list_images(mask_dir, recursive=True)
    if not masks:
        raise DatalistError(f"site {site!r}: no mask files found: looked in {mask_dir}. {hint}")
    images, classes, bad = [], {}, Counter()
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and p.name != LARYNGOSCOPE8_MASK_DIR):
        cls = laryngoscope8_class(folder.name)
        found = list_images(folder, recursive=True)
        if cls is None:
            if found:
                bad[folder.name] += len(found)
            continue
        images += found
        classes.update({img: cls for img in found})
    loose = list_images(base)
    if bad or loose:
        raise DatalistError(
            f"site {site!r}: images outside the 8 category folders under {base} "
            f"(folders {sorted(bad)}, {len(loose)} loose files); expected folder names: {list(LARYNGOSCOPE8_CLASS_MAP)}"
        )
    if not images:
        raise DatalistError(f"site {site!r}: no images in category folders under {base}")
    pairs = pair_files(images, masks, site=site, image_dir=base, mask_dir=mask_dir)
    return [{"image": i, "label": m, "site": site, "lesion_class": classes[i]} for i, m in pairs]
