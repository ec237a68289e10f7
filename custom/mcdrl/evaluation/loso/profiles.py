"""Benchmark profiles: the synthetic world, seeds and the training budget every method gets.

The recipe itself (losses, augmentation, optimiser, presence decision, post-processing) is the bundle's
``train.json`` (or a method's variant file); a profile sets only what makes the CPU budget fit, the same for every
method: the world's size, the epochs, and the intervention's start at the paper's 10/50 of the epochs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["PROFILES", "Profile", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """One benchmark size.

    Attributes:
        name: ``"smoke"`` (tests: mechanics only), ``"quick"`` (iteration, <= 15 min) or ``"full"`` (the published
            table, <= 120 min on 2 cores).
        sites: the world's sites; each is held out once.
        n_per_site: images generated per site; ``val_fraction`` of them form its validation split, used only while
            the site is a source site. Held out, all ``n_per_site`` images are test images.
        image_size: side of the generated frames (metrics at this, the original, resolution).
        world_seed: seed of the synthetic world.
        seeds: training seeds; every (method, held-out site) cell is run once per seed.
        unet_seeds: seeds of the UNet row (fewer when its cost forces that; the table says so).
        epochs: training epochs of every method; the intervention comes on after ``round(0.2 * epochs)`` of them.
        workers: parallel worker processes (each runs whole runs with ``threads`` torch threads).
        overrides: extra ``--key value`` pairs for every run (e.g. a smaller decoder in the smoke profile).
        methods: the rows run when ``--methods`` is not given (None: every row and ablation).
    """

    name: str
    sites: tuple[str, ...]
    n_per_site: int
    image_size: int
    val_fraction: float
    world_seed: int
    seeds: tuple[int, ...]
    epochs: int
    unet_seeds: tuple[int, ...] | None = None
    workers: int = 2
    threads: int = 1
    overrides: tuple[tuple[str, object], ...] = ()
    methods: tuple[str, ...] | None = None

    @property
    def causal_start(self) -> int:
        """Epochs without the intervention: the paper's 10 of 50, at least 1 and at most epochs - 1."""
        return max(1, min(self.epochs - 1, int(round(self.epochs * 0.2))))

    def seeds_of(self, which: str | None) -> tuple[int, ...]:
        return tuple(getattr(self, which) or self.seeds) if which else self.seeds

    def replace(self, **changes) -> "Profile":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def budget_overrides(self) -> dict:
        """The keys every run of this profile sets after its method's own."""
        return {"max_epochs": self.epochs, "displayable_configs#causal_start_epoch": self.causal_start, **dict(self.overrides)}

    def budget_notes(self) -> list[str]:
        return [
            f"World: {self.n_per_site} images per site ({self.image_size} px), sites {', '.join(self.sites)}, validation fraction "
            f"{self.val_fraction} per source site; a held-out site's {self.n_per_site} images are all test images.",
            f"Every method: {self.epochs} epochs through the bundle's own trainer (train.json [+ the method's file]), the intervention "
            f"on after epoch {self.causal_start} (the paper's 10/50), the epoch chosen on source-site validation (presence threshold "
            "too, where the method has one), the bundle's post-processing. Nothing is cached: each run is the bundle's training.",
        ] + ([f"Every run also sets {dict(self.overrides)}."] if self.overrides else [])


PROFILES: dict[str, Profile] = {
    "smoke": Profile(name="smoke", sites=("A", "B", "C"), n_per_site=8, image_size=96, val_fraction=0.25, world_seed=7, seeds=(0,),
                     epochs=2, workers=2, overrides=(("batch_size", 4),)),
    "quick": Profile(name="quick", sites=("A", "B", "C", "D", "E", "F"), n_per_site=24, image_size=224, val_fraction=0.2, world_seed=2026,
                     seeds=(0,), epochs=3, unet_seeds=(0,), workers=2, methods=("baseline", "mcdrl")),
    # the quick world and budget, on 3 seeds (the UNet's too) and every row: about 65 min on the 2 cores
    "full": Profile(name="full", sites=("A", "B", "C", "D", "E", "F"), n_per_site=24, image_size=224, val_fraction=0.2, world_seed=2026,
                    seeds=(0, 1, 2), epochs=3, unet_seeds=(0, 1, 2), workers=2),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(PROFILES)}")
    return PROFILES[name]
