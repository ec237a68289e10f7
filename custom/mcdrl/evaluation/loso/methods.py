"""The rows of the leave-one-site-out table, as config variants of the bundle's own ``train.json``.

Every method trains through the bundle's trainer (:func:`mcdrl.evaluation.loso.run.run_one`) with the same data,
epochs, schedule shape, seeds and model selection (source-site validation); a method is only the extra config files
and ``--key value`` overrides below:

===================  ==========================================  =================================================
method               files                                       overrides
===================  ==========================================  =================================================
baseline             train.json                                  the causal parts off: no intervention, no
                                                                 L_causal, no counterfactual term, no text-guided
                                                                 projection (same augmentation, presence decision
                                                                 and post-processing as the shipped model)
paper_baseline       train.json + paper.json                     the paper's Baseline: CLIP + head, L_seg only,
                                                                 flips (no intervention, no L_causal/L_contrast)
unet                 train.json + unet.json                      a MONAI UNet from scratch (same augmentation)
paper_mcdrl          train.json + paper.json                     MCDRL as the paper describes it
mcdrl                train.json                                  the shipped configuration
wo_mtrs              train.json                                  ``alpha`` 1.0
wo_cdrl              train.json                                  no intervention and no L_causal
wo_counterfactual    train.json                                  ``lambda_counterfactual`` 0
wo_text              train.json                                  ``deconfounding`` "none"
===================  ==========================================  =================================================

The ablations are taken from the shipped configuration (each turns one part off). A part the shipped configuration
does not use (its ablation would be ``mcdrl`` itself) is measured the other way round, as an addition to the shipped
configuration (``with_cdrl``, ``with_counterfactual``, ``with_text``: the part switched on), so that every part still gets a row;
:func:`ablation_rows` makes that choice from ``train.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ABLATIONS", "ADDITIONS", "CAUSAL_OFF", "METHODS", "Method", "ablation_rows", "all_methods"]

#: the causal parts of MCDRL, switched off
CAUSAL_OFF = {"use_intervention": False, "lambda_causal": 0.0, "lambda_counterfactual": 0.0, "deconfounding": "none"}


@dataclass(frozen=True)
class Method:
    """One row: extra config files (after ``train.json``) and overrides.

    Attributes:
        name: row id. description: what it is, in the paper's terms.
        files: config files of ``bundle/configs`` applied after ``train.json``.
        overrides: ``--key value`` pairs applied after the files (and before the profile's budget keys).
        kind: ``"method"`` (the main table) or ``"ablation"``.
        seeds: None = the profile's seeds; else the profile's ``unet_seeds`` etc. (see :mod:`.profiles`).
    """

    name: str
    description: str
    files: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict)
    kind: str = "method"
    seeds: str | None = None


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("baseline", "Baseline: everything MCDRL ships except the causal parts (same augmentation, presence decision, "
           "post-processing; no intervention, L_causal, counterfactual term or text-guided projection)", overrides=dict(CAUSAL_OFF)),
    Method("paper_baseline", "the paper's Baseline: CLIP + head, L_seg (cross-entropy) only, flips",
           ("paper.json",), {**CAUSAL_OFF, "lambda_contrast": 0.0}),
    Method("unet", "a MONAI UNet trained from scratch (the model a user would pick instead; same data and augmentation)",
           ("unet.json",), {}, seeds="unet_seeds"),
    Method("paper_mcdrl", "MCDRL as the paper describes it (its head, losses, lr and flips)", ("paper.json",)),
    Method("mcdrl", "MCDRL as the bundle ships it (train.json)"),
]}

ABLATIONS: dict[str, Method] = {m.name: m for m in [
    Method("wo_mtrs", "shipped MCDRL without MTRS (alpha = 1: every position is a selected region for what acts on the "
           "regions: the projection, the intervention and the region embedding of L_causal, where the configuration has them)",
           overrides={"alpha": 1.0}, kind="ablation"),
    Method("wo_cdrl", "shipped MCDRL without CDRL (no intervention, no L_causal)", overrides={"use_intervention": False, "lambda_causal": 0.0}, kind="ablation"),
    Method("wo_counterfactual", "shipped MCDRL without the counterfactual consistency term", overrides={"lambda_counterfactual": 0.0}, kind="ablation"),
    Method("wo_text", "shipped MCDRL without the text-guided de-confounding projection", overrides={"deconfounding": "none"}, kind="ablation"),
]}


#: the parts the shipped configuration may leave off, switched on (same settings as the experiments that tried them)
ADDITIONS: dict[str, Method] = {m.name: m for m in [
    Method("with_counterfactual", "shipped MCDRL plus the counterfactual consistency term (lambda_counterfactual 0.5)",
           overrides={"lambda_counterfactual": 0.5}, kind="ablation"),
    Method("with_text", "shipped MCDRL plus the text-guided de-confounding projection on the MTRS regions (deconfounding "
           "regions, the better placement on source-site validation: bundle/docs/results/experiments/deconfounding_0.6)",
           overrides={"deconfounding": "regions"}, kind="ablation"),
    Method("with_cdrl", "shipped MCDRL plus the paper's causal intervention (CDRL: 3 cross-attention layers from the MTRS "
           "regions to the confounder dictionary, L_causal 0.5)", overrides={"use_intervention": True, "lambda_causal": 0.5}, kind="ablation"),
]}

#: each ablation and the addition that replaces it when the shipped configuration does not use the part
_PAIRS = {"wo_cdrl": "with_cdrl", "wo_counterfactual": "with_counterfactual", "wo_text": "with_text"}


def all_methods() -> dict[str, Method]:
    """The main rows, then the ablations, then the additions."""
    return {**METHODS, **ABLATIONS, **ADDITIONS}


def ablation_rows(configs_dir) -> list[str]:
    """The ablation rows for the shipped configuration: ``wo_X`` where ``train.json`` uses part X, else ``with_X``."""
    from .runner import effective_key

    rows = []
    for name, m in ABLATIONS.items():
        if name in _PAIRS and not effective_key(m, configs_dir)["overrides"]:
            rows.append(_PAIRS[name])
        else:
            rows.append(name)
    return rows
