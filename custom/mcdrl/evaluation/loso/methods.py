"""The rows of the leave-one-site-out table, as config variants of the bundle's own ``train.json``.

Every method trains through the bundle's trainer (:func:`mcdrl.evaluation.loso.run.run_one`) with the same data,
epochs, schedule shape, seeds and model selection (the interventional validation split, :mod:`.world`); a method is
only the extra config files, the ``--key value`` overrides and the world it trains on:

====================  ======================  ===========================================  =========================
method                files                   overrides                                    trains on
====================  ======================  ===========================================  =========================
erm                   train.json              :data:`ERM`: the causal parts off and        the source sites
                                              ``confounder_augmentation_prob`` 0 (flips +
                                              photometric; no use of the dictionary)
mcdrl                 train.json              none: the shipped configuration              the source sites
erm_cdrl              + cdrl.json             :data:`ERM` except the intervention's keys   the source sites
mcdrl_cdrl            + cdrl.json             none (the shipped do(z) + the intervention)  the source sites
erm_text              train.json              :data:`ERM` + ``deconfounding`` regions      the source sites
erm_counterfactual    train.json              :data:`ERM` + ``lambda_counterfactual`` 0.5  the source sites
paper                 + paper.json            none: MCDRL as the paper describes it        the source sites
unet                  + unet.json             ``confounder_augmentation_prob`` 0           the source sites
unet_doz              + unet.json             none (do(z) as train.json)                   the source sites
oracle                train.json              none                                         the held-out site's own
                                                                                           training frames
erm_unconfounded      train.json              :data:`ERM`                                  the source sites, every
                                                                                           protocol off
mcdrl_unconfounded    train.json              none                                         the source sites, every
                                                                                           protocol off
====================  ======================  ===========================================  =========================

``kind``: ``"method"`` (a row of the comparison) or ``"reference"`` (the oracle and the unconfounded references,
which train on frames no method may see).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CAUSAL_OFF", "ERM", "METHODS", "TRAIN_WORLDS", "Method", "all_methods"]

#: the causal parts of MCDRL, switched off
CAUSAL_OFF = {"use_intervention": False, "lambda_causal": 0.0, "lambda_counterfactual": 0.0, "deconfounding": "none"}

#: ERM: the shipped recipe with no use of the confounder dictionary (augmentation = flips + photometric)
ERM = {**CAUSAL_OFF, "confounder_augmentation_prob": 0.0}

#: ERM without the intervention's own keys, for the rows whose variant file switches the intervention on
_ERM_BUT_INTERVENTION = {k: v for k, v in ERM.items() if k not in ("use_intervention", "lambda_causal")}

#: what a run trains on: the world's part (:mod:`.world`) and whose sites
TRAIN_WORLDS = {"sampled": "the source sites as sampled", "protocol_off": "the source sites with every protocol off",
                "oracle": "the held-out site's own training frames (disjoint from its test frames)"}


@dataclass(frozen=True)
class Method:
    """One row: extra config files (after ``train.json``), overrides and the training world.

    Attributes:
        name: row id. description: what it is.
        files: config files of ``bundle/configs`` applied after ``train.json``.
        overrides: ``--key value`` pairs applied after the files (and before the profile's budget keys).
        kind: ``"method"`` or ``"reference"`` (oracle, unconfounded references).
        world: the key of :data:`TRAIN_WORLDS` this row trains on.
        cost: training time per frame relative to the shipped network, for the time estimate only
            (:mod:`.profiles`; from the min/run of the published 0.7.0 run, the UNet's scaled to 224 px).
    """

    name: str
    description: str
    files: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict)
    kind: str = "method"
    world: str = "sampled"
    cost: float = 1.0

    def __post_init__(self) -> None:
        if self.world not in TRAIN_WORLDS:
            raise ValueError(f"method {self.name}: unknown training world {self.world!r}; known: {list(TRAIN_WORLDS)}")
        if self.kind not in ("method", "reference"):
            raise ValueError(f"method {self.name}: kind must be 'method' or 'reference', got {self.kind!r}")


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("erm", "ERM: the shipped recipe with no use of the confounder dictionary (flips + photometric augmentation; the "
           "shipped head, losses, presence decision and post-processing; no intervention, L_causal, counterfactual term, "
           "projection or confounder augmentation)", overrides=dict(ERM)),
    Method("mcdrl", "the shipped configuration (train.json): ERM + the dictionary as a pixel-space do(z) (RandConfounderd)"),
    Method("erm_cdrl", "ERM + the feature-space intervention (CDRL) of cdrl.json", ("cdrl.json",), dict(_ERM_BUT_INTERVENTION)),
    Method("mcdrl_cdrl", "ERM + both: the shipped do(z) and the feature-space intervention of cdrl.json", ("cdrl.json",)),
    Method("erm_text", "ERM + the text-guided de-confounding projection on the MTRS regions (deconfounding regions)",
           overrides={**ERM, "deconfounding": "regions"}),
    Method("erm_counterfactual", "ERM + the counterfactual consistency term (lambda_counterfactual 0.5)",
           overrides={**ERM, "lambda_counterfactual": 0.5}, cost=1.6),
    Method("paper", "MCDRL as the paper describes it (paper.json: its head, losses, lr, flips, intervention)", ("paper.json",), cost=1.5),
    Method("unet", "a MONAI UNet from scratch with ERM augmentation (flips + photometric)", ("unet.json",),
           {"confounder_augmentation_prob": 0.0}, cost=0.8),
    Method("unet_doz", "a MONAI UNet from scratch with the shipped do(z) augmentation", ("unet.json",), cost=0.8),
    Method("oracle", "the shipped configuration trained on the held-out site's own training frames: the ceiling",
           kind="reference", world="oracle"),
    Method("erm_unconfounded", "ERM trained on the source sites with every protocol switched off", overrides=dict(ERM),
           kind="reference", world="protocol_off"),
    Method("mcdrl_unconfounded", "the shipped configuration trained on the source sites with every protocol switched off",
           kind="reference", world="protocol_off"),
]}


def all_methods() -> dict[str, Method]:
    """Every row, in table order."""
    return dict(METHODS)
