"""Benchmark profiles: the synthetic world, seeds and the training budget every method gets, and their time estimate.

The recipe itself (losses, augmentation, optimiser, presence decision, post-processing) is the bundle's
``train.json`` (or a method's variant file); a profile sets only what makes the CPU budget fit, the same for every
method: the world's size, the epochs, and the intervention's start at the paper's 10/50 of the epochs. Every profile
that measures the intervention gives it at least 10 epochs (issue 22: 3 epochs gave it about 24 steps).

**Time estimate** (:meth:`Profile.estimate_minutes`; the CLI prints it before it starts). One run of a row costs

    SECONDS_PER_RUN + epochs * (F_train * cost * SECONDS_PER_TRAIN_FRAME + F_val * SECONDS_PER_SCORED_FRAME)
                    + F_scored * SECONDS_PER_SCORED_FRAME

with ``F_train = (sites - 1) * round((1 - val_fraction) * n_per_site)`` training frames (the oracle trains on as many
of its own), ``F_val = (sites - 1) * round(val_fraction * n_per_site)`` interventional validation frames scored every
epoch, ``F_scored = F_val`` (plain validation) ``+ F_val`` (interventional, once more with the selected weights)
``+ 2 * n_per_site`` (the held-out site as sampled and reversed), and ``cost`` the row's training cost per frame
relative to the shipped network (:attr:`mcdrl.evaluation.loso.methods.Method.cost`). The runs are spread over
``workers`` processes.

The constants come from the per-run times the runner logs (``wall_s`` of each run record; ``min/run`` in
``loso.md``). The published 0.7.0 run (``bundle/docs/results/loso.json``, 2 workers x 1 thread on the 2 cores) took
0.79 min per run of the Baseline: 3 epochs over 95 training frames, 3 x 25 validation and 24 test frames scored.
With 0.04 s per scored frame and 8 s of set-up that is (47.6 - 8 - 99 * 0.04) / 285 = 0.125 s per training frame, at
the CLIP's 160 px. Issue 23 trains at 224 px (the head decodes at the input size): one training step of the shipped
network took 1.7x as long at 224 px as at 160 px on this machine (2.5 s against 1.45 s per batch of 8, 1 thread), and
scoring 1.7x too. Hence 0.21 s per training frame, 0.07 s per scored frame; we round the set-up up to 10 s.

Budget of ``full`` (150 min at most on the 2 cores, nothing cached), by that estimate: 6 sites, ``n_per_site`` 12 with
``val_fraction`` 0.25 (9 training and 3 validation frames per site: F_train = 45, F_val = 15 per run; the held-out
site's 12 frames, twice), 10 epochs:

* one run: 10 + 10 * (45 * cost * 0.21 + 15 * 0.07) + (2 * 15 + 2 * 12) * 0.07 = 24.3 + 94.5 * cost seconds, i.e.
  118.8 s for the shipped network (cost 1), 175.5 s with the counterfactual term (1.6), 166.0 s for ``paper`` (1.5),
  99.9 s for a UNet (0.8);
* the five rows that the issue's targets compare on 3 seeds (erm, mcdrl, erm_cdrl, erm_unconfounded,
  mcdrl_unconfounded): 5 x 6 sites x 3 seeds = 90 runs x 118.8 s = 178.2 run-minutes;
* the seven other rows on seed 0 only (mcdrl_cdrl, erm_text, erm_counterfactual, paper, unet, unet_doz, oracle):
  6 sites x (118.8 + 118.8 + 175.5 + 166.0 + 99.9 + 99.9 + 118.8) s = 89.8 run-minutes;
* (178.2 + 89.8) / 2 workers = 134.0 min, plus about half a minute to generate the world (936 frames).

All twelve rows on 3 seeds would take 224 min at this size, and at ``n_per_site`` 16 (12 training frames
per site) the same grid takes 175 min. Hence the seven rows outside the five run on seed 0 only (the targets on
mcdrl_cdrl and unet_doz are then checked on one seed). The quick profile is the same world and budget (erm and mcdrl, seed 0: 12 runs, 11.9 min), so its runs
are reused by ``full``.

:meth:`Profile.estimate_minutes` recomputes these numbers; a test holds ``full`` to 150 min by it. The estimate assumes the
2 cores to ourselves: the machine shared with other jobs runs slower (the CLI prints each run's time and an ETA).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PROFILES", "Profile", "SECONDS_PER_RUN", "SECONDS_PER_SCORED_FRAME", "SECONDS_PER_TRAIN_FRAME", "get_profile"]

#: one training frame (forward + backward) of the shipped network at 224 px, 1 torch thread, 2 workers on 2 cores
SECONDS_PER_TRAIN_FRAME = 0.21
#: one frame scored (validation, test) at 224 px
SECONDS_PER_SCORED_FRAME = 0.07
#: building the workflow, loading the CLIP and the datasets, writing the record
SECONDS_PER_RUN = 10.0


@dataclass(frozen=True)
class Profile:
    """One benchmark size.

    Attributes:
        name: ``"smoke"`` (tests: mechanics only), ``"quick"`` (iteration, <= 15 min) or ``"full"`` (the published
            table, <= 150 min on 2 cores).
        sites: the world's sites; each is held out once.
        n_per_site: frames per site; ``val_fraction`` of them form its validation split, used only while the site is
            a source site. Held out, all ``n_per_site`` frames are test frames (as sampled, and again reversed).
        image_size: side of the generated frames; it must equal the configuration's ``train_size`` (checked by
            :func:`mcdrl.evaluation.loso.runner.prepare`), so that no run resamples its training frames.
        world_seed: seed of the synthetic world.
        seeds: training seeds; every (row, held-out site) cell is run once per seed.
        epochs: training epochs of every row; the intervention comes on after ``round(0.2 * epochs)`` of them.
        row_seeds: rows run on other seeds than ``seeds``: ``((row, (seed, ...)), ...)``.
        n_oracle: the oracle's frames per site; None = ``(len(sites) - 1) * n_per_site``, so the oracle trains on as
            many frames as a LOSO run.
        workers: parallel worker processes (each runs whole runs with ``threads`` torch threads).
        overrides: extra ``--key value`` pairs for every run (e.g. a smaller ``train_size`` in the smoke profile).
        methods: the rows run when ``--methods`` is not given (None: every row).
        protocol: the world's protocol table (:data:`mcdrl.synthetic.PROTOCOLS`): ``"issue"``, the generator's own, or
            ``"strong"``, the same cues in most frames of their kind.
    """

    name: str
    sites: tuple[str, ...]
    n_per_site: int
    image_size: int
    val_fraction: float
    world_seed: int
    seeds: tuple[int, ...]
    epochs: int
    row_seeds: tuple[tuple[str, tuple[int, ...]], ...] = ()
    n_oracle: int | None = None
    workers: int = 2
    threads: int = 1
    overrides: tuple[tuple[str, object], ...] = ()
    methods: tuple[str, ...] | None = None
    protocol: str = "issue"

    @property
    def causal_start(self) -> int:
        """Epochs without the intervention: the paper's 10 of 50, at least 1 and at most epochs - 1."""
        return max(1, min(self.epochs - 1, int(round(self.epochs * 0.2))))

    @property
    def oracle_frames(self) -> int:
        return self.n_oracle if self.n_oracle is not None else (len(self.sites) - 1) * self.n_per_site

    def seeds_of(self, row: str) -> tuple[int, ...]:
        """The seeds ``row`` runs on."""
        return tuple(dict(self.row_seeds).get(row, self.seeds))

    def replace(self, **changes) -> "Profile":
        """A copy with the changes that are not None (``seeds`` given: every row on those seeds)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "seeds" in changes:
            changes.setdefault("row_seeds", ())
        return dataclasses.replace(self, **changes)

    def budget_overrides(self) -> dict:
        """The keys every run of this profile sets after its method's own."""
        return {"max_epochs": self.epochs, "displayable_configs#causal_start_epoch": self.causal_start, **dict(self.overrides)}

    def run_seconds(self, cost: float = 1.0) -> float:
        """The estimated time of one run of a row with training cost ``cost`` (see the module doc)."""
        n_train = (len(self.sites) - 1) * round((1 - self.val_fraction) * self.n_per_site)
        n_val = (len(self.sites) - 1) * round(self.val_fraction * self.n_per_site)
        scored = 2 * n_val + 2 * self.n_per_site
        return (SECONDS_PER_RUN + self.epochs * (n_train * cost * SECONDS_PER_TRAIN_FRAME + n_val * SECONDS_PER_SCORED_FRAME)
                + scored * SECONDS_PER_SCORED_FRAME)

    def estimate_minutes(self, costs: Mapping[str, float]) -> float:
        """Estimated wall time of the rows ``{row: cost}`` with nothing cached: run-minutes over the workers."""
        runs = sum(len(self.seeds_of(row)) * len(self.sites) * self.run_seconds(cost) for row, cost in costs.items())
        return runs / 60 / max(1, self.workers)

    def budget_notes(self) -> list[str]:
        return [
            f"World: protocol table {self.protocol!r}, {self.n_per_site} frames per site ({self.image_size} px), sites {', '.join(self.sites)}, validation fraction "
            f"{self.val_fraction} per source site; a held-out site's {self.n_per_site} frames are all test frames, scored as sampled "
            f"and again with its protocol reversed (the same scenes). The oracle: {self.oracle_frames} frames of the held-out site "
            "(other scenes), split the same way.",
            f"Every row: {self.epochs} epochs through the bundle's own trainer (train.json [+ the row's file]), the intervention "
            f"on after epoch {self.causal_start} (the paper's 10/50), the epoch and the presence threshold chosen on the "
            "interventional validation split (the source sites' validation frames with their protocol off), the bundle's "
            "post-processing. Nothing is cached: each run is the bundle's training.",
        ] + ([f"Every run also sets {dict(self.overrides)}."] if self.overrides else []) + \
            ([f"Rows on other seeds: {dict((k, list(v)) for k, v in self.row_seeds)}."] if self.row_seeds else [])


#: the rows the issue's targets compare, on every seed of ``full``; the other rows run on seed 0 there
_COMPARED = ("erm", "mcdrl", "erm_cdrl", "erm_unconfounded", "mcdrl_unconfounded")
_ON_SEED_0 = ("mcdrl_cdrl", "erm_text", "erm_counterfactual", "paper", "unet", "unet_doz", "oracle")

PROFILES: dict[str, Profile] = {
    "smoke": Profile(name="smoke", sites=("A", "B", "C"), n_per_site=8, image_size=96, val_fraction=0.25, world_seed=7, seeds=(0,),
                     epochs=2, n_oracle=8, workers=2, overrides=(("batch_size", 4), ("train_size", 96))),
    # the full world and budget, erm and mcdrl on seed 0: about 12 min on the 2 cores (module doc)
    "quick": Profile(name="quick", sites=("A", "B", "C", "D", "E", "F"), n_per_site=12, image_size=224, val_fraction=0.25, world_seed=2026,
                     seeds=(0,), epochs=10, workers=2, methods=("erm", "mcdrl")),
    # every row, the compared ones on 3 seeds: about 134 min on the 2 cores (module doc)
    "full": Profile(name="full", sites=("A", "B", "C", "D", "E", "F"), n_per_site=12, image_size=224, val_fraction=0.25, world_seed=2026,
                    seeds=(0, 1, 2), epochs=10, row_seeds=tuple((row, (0,)) for row in _ON_SEED_0), workers=2),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(PROFILES)}")
    return PROFILES[name]
