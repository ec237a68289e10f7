"""The compared methods and the ablation grid, as settings of one network and one loss.

Every method uses the same backbone, head, data, views, batches, steps and epoch-selection rule; only these
settings differ:

=============  ================  =============  ===============  =====  ======================================
method         use_intervention  lambda_causal  lambda_contrast  alpha  augmentation
=============  ================  =============  ===============  =====  ======================================
baseline       no                0              0                --     flips
baseline_gin   no                0              0                --     GIN (random convolutions) on the flips
wo_mtrs        yes               0.5            0.1              1.0    flips
wo_cdrl        no                0              0.1              --     flips
mcdrl          yes               0.5            0.1              0.5    flips
=============  ================  =============  ===============  =====  ======================================

Experiments (not in the published table; ``--methods mcdrl_prior``): ``mcdrl_prior`` weights the confounders by the
uniform prior P(z) instead of by attention.

Ablations of the full method (each changes one setting of ``mcdrl``): dictionary size M in 3, 6, (12), 15;
intervention depth 1, (3), 5; alpha 0.25, (0.5), 0.75. The value in parentheses is ``mcdrl`` itself.

Dictionary subsets [ours]: the 12 confounders ordered round-robin over their five families (view quality,
lighting, imaging technology, distance, surface interference), so that M = 3 keeps one prompt of each of three
families, M = 6 covers every family; M = 15 adds three prompts for acquisition traits the synthetic world
renders but the 12 do not name (colour cast, burned-in overlay text, sensor noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcdrl.networks.prompts import CONFOUNDER_FAMILIES, CONFOUNDERS

__all__ = ["ABLATIONS", "EXPERIMENTS", "EXTRA_CONFOUNDERS", "METHODS", "Method", "dictionary_prompts"]

#: [ours] the three extra prompts of the 15-entry dictionary.
EXTRA_CONFOUNDERS: list[str] = ["a strong colour cast", "burned-in overlay text", "sensor noise"]


def _round_robin() -> list[str]:
    families = list(CONFOUNDER_FAMILIES.values())
    out: list[str] = []
    for i in range(max(len(f) for f in families)):
        out += [f[i] for f in families if i < len(f)]
    return out


def dictionary_prompts(size: int) -> list[str]:
    """The confounder phrases of the size-``size`` dictionary (3, 6, 12 or 15 [ours]; 12 = the bundle's own list)."""
    if size == len(CONFOUNDERS):
        return list(CONFOUNDERS)
    if size == len(CONFOUNDERS) + len(EXTRA_CONFOUNDERS):
        return list(CONFOUNDERS) + EXTRA_CONFOUNDERS
    if 1 <= size < len(CONFOUNDERS):
        return _round_robin()[:size]
    raise ValueError(f"dictionary size must be 1..{len(CONFOUNDERS)} or {len(CONFOUNDERS) + len(EXTRA_CONFOUNDERS)}, got {size}")


@dataclass(frozen=True)
class Method:
    """Settings of one compared method (``None`` = the profile's default from train.json)."""

    name: str
    description: str
    use_intervention: bool = True
    lambda_causal: float | None = None
    lambda_contrast: float | None = None
    alpha: float | None = None
    depth: int | None = None
    dictionary_size: int | None = None  # None = the --dictionary_path artifact (12 confounders)
    augmentation: str = "flip"  # "flip" or "gin"
    weighting: str | None = None  # None = the paper's attention weighting (see mcdrl.networks.intervention.InterventionBlock)
    tags: dict = field(default_factory=dict)

    def settings(self, defaults: dict) -> dict:
        """The resolved settings, given the profile's train.json defaults."""
        return {
            "use_intervention": self.use_intervention,
            "lambda_causal": defaults["lambda_causal"] if self.lambda_causal is None else self.lambda_causal,
            "lambda_contrast": defaults["lambda_contrast"] if self.lambda_contrast is None else self.lambda_contrast,
            "alpha": defaults["alpha"] if self.alpha is None else self.alpha,
            "depth": defaults["intervention_layers"] if self.depth is None else self.depth,
            "dictionary_size": self.dictionary_size,
            "augmentation": self.augmentation,
            # only when set, so that the settings (and run ids) of every other method stay what they were
            **({"weighting": self.weighting} if self.weighting else {}),
        }


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("baseline", "CLIP + head, L_seg only", use_intervention=False, lambda_causal=0.0, lambda_contrast=0.0),
    Method("baseline_gin", "Baseline + GIN random-convolution intensity augmentation (Ouyang et al., TMI 2022)",
           use_intervention=False, lambda_causal=0.0, lambda_contrast=0.0, augmentation="gin"),
    Method("wo_mtrs", "MCDRL without MTRS (alpha = 1: every position goes through the intervention)", alpha=1.0),
    Method("wo_cdrl", "MCDRL without CDRL (no intervention, no L_causal; L_seg + L_contrast)", use_intervention=False, lambda_causal=0.0),
    Method("mcdrl", "full MCDRL (alpha 0.5, 3 intervention layers, 12 confounders)"),
]}

ABLATIONS: dict[str, Method] = {m.name: m for m in [
    Method("dict_3", "dictionary size 3", dictionary_size=3, tags={"group": "dictionary size", "value": 3}),
    Method("dict_6", "dictionary size 6", dictionary_size=6, tags={"group": "dictionary size", "value": 6}),
    Method("dict_15", "dictionary size 15", dictionary_size=15, tags={"group": "dictionary size", "value": 15}),
    Method("depth_1", "intervention depth 1", depth=1, tags={"group": "intervention depth", "value": 1}),
    Method("depth_5", "intervention depth 5", depth=5, tags={"group": "intervention depth", "value": 5}),
    Method("alpha_0.25", "alpha 0.25", alpha=0.25, tags={"group": "alpha", "value": 0.25}),
    Method("alpha_0.75", "alpha 0.75", alpha=0.75, tags={"group": "alpha", "value": 0.75}),
]}

#: Methods outside the published table, run only when named in ``--methods`` (their results go to
#: ``bundle/docs/results/experiments/``).
EXPERIMENTS: dict[str, Method] = {m.name: m for m in [
    Method("mcdrl_prior", "MCDRL with the confounders weighted by the uniform prior P(z) instead of attention", weighting="prior"),
]}

#: where full MCDRL sits in each ablation group (its runs are reused, not repeated)
ABLATION_REFERENCE = {"dictionary size": 12, "intervention depth": 3, "alpha": 0.5}
