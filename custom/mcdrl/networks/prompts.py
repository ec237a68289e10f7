"""Default prompt vocabulary of MCDRL: lesion classes, confounders and templates.

These are the *defaults* only. Every list here is also a top-level key of the bundle configs
(``lesion_classes``, ``confounders``, ...), so a user edits prompts in config, never in code.
The synthetic world (:mod:`mcdrl.synthetic`) renders exactly these confounders as image effects.
"""

from __future__ import annotations

#: [paper] The five lesion types of the evaluation. Index order = class index in datalists and losses.
LESION_CLASSES: list[str] = ["polyp", "tumor", "inflammation", "nodule", "cyst"]

#: Value of ``lesion_class`` in a datalist entry whose image has no lesion (an empty mask).
NO_LESION = "none"

#: [paper] 12 confounders in 5 families. [ours] exact strings reconstructed from the paper's examples.
CONFOUNDER_FAMILIES: dict[str, list[str]] = {
    "view quality": ["motion blur", "imaging artifacts"],
    "lighting": ["bright lighting", "dark lighting", "uneven lighting"],
    "imaging technology": ["narrow-band imaging", "white light imaging"],
    "distance": ["a near view", "a far view"],
    "surface interference": ["mucus", "blood", "specular reflection"],
}
CONFOUNDERS: list[str] = [c for family in CONFOUNDER_FAMILIES.values() for c in family]

#: [paper] prompt templates.
CLASS_TEMPLATE = "A {cls} in an endoscopic image"
CONFOUNDER_TEMPLATE = "An endoscopy image with {domain}"
ANCHOR_TEMPLATE = "A {cls} with {domain}"
#: [ours] the background prompt used by the "max over classes minus normal mucosa" MTRS scoring.
BACKGROUND_PROMPT = "Normal mucosa in an endoscopic image"


def family_of(confounder: str) -> str:
    """Return the family name of a confounder string (KeyError if it is not one of :data:`CONFOUNDERS`)."""
    for family, members in CONFOUNDER_FAMILIES.items():
        if confounder in members:
            return family
    raise KeyError(f"unknown confounder {confounder!r}; known: {CONFOUNDERS}")
