"""The benchmark's synthetic world: generated once with :func:`mcdrl.synthetic.generate_dataset`, then cached.

A world is five datalists over the same sites (each ``<part>/datalist.json`` with its PNG images and labels), each
with ``training`` and ``validation`` splits per site:

================  ===================================================================================================
part              what, and what it serves
================  ===================================================================================================
``sampled``       every site as :data:`mcdrl.synthetic.SITES` defines it (its protocol on): the source sites'
                  training and plain validation frames; a held-out site's ``n_per_site`` frames (both splits) are
                  its test frames as sampled
``reversed``      the same seeds with each site's protocol reversed (:meth:`SiteSpec.reversed_protocol`): the same
                  scenes and lesions, the protocol confounders at the swapped rates: a held-out site's test frames,
                  reversed
``protocol_off``  the same seeds with every confounder independent of the lesion (:meth:`SiteSpec.protocol_off`):
                  its source-site ``validation`` split is the **interventional validation split** that selects every
                  run's epoch and presence threshold; its ``training`` split trains the unconfounded references
``oracle``        ``n_oracle`` other frames per site (another world seed: scenes disjoint from the test frames), as
                  sampled: the oracle's training frames of the held-out site
``oracle_off``    the same frames, protocol off: the oracle's (interventional) validation split
================  ===================================================================================================

Every entry carries ``confounders`` and ``protocol_confounders`` (those present whose rate depends on the lesion at
its site), which group the test frames. The folder ``<cache_dir>/world-<sites>-n<n>-s<seed>-<size>px-v<val>-g<generator
version>-o<n_oracle>/`` is written under a temporary name and renamed when complete, so a crash never leaves a half world.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mcdrl.synthetic import PROTOCOLS, derive_seed, generate_dataset, sites_with_protocol

__all__ = ["PARTS", "ensure_world", "oracle_seed", "world_name"]

#: the world's datalists (see the module doc)
PARTS = ("sampled", "reversed", "protocol_off", "oracle", "oracle_off")


def world_name(sites, n_per_site: int, seed: int, size: int, val_fraction: float, n_oracle: int, protocol: str = "issue") -> str:
    """The world's cache folder name; a protocol other than the generator's own (``"issue"``) is appended."""
    from mcdrl.synthetic import GENERATOR_VERSION

    return (f"world-{''.join(sites)}-n{n_per_site}-s{seed}-{size}px-v{val_fraction:g}-g{GENERATOR_VERSION}-o{n_oracle}"
            + ("" if protocol == "issue" else f"-p{protocol}"))


def oracle_seed(seed: int) -> int:
    """The seed of the oracle's frames: another world seed, so their scenes are not the test frames'."""
    return derive_seed(seed, "oracle")


def ensure_world(cache_dir: str | os.PathLike, sites, n_per_site: int, seed: int, size: int, val_fraction: float,
                 n_oracle: int, protocol: str = "issue") -> dict[str, Path]:
    """Generate the world if it is not cached yet; returns ``{part: its datalist.json}`` for every part of :data:`PARTS`.

    Args:
        sites: names of :data:`mcdrl.synthetic.SITES`.
        n_per_site: frames per site in ``sampled``, ``reversed`` and ``protocol_off`` (the same seeds in each).
        n_oracle: frames per site in ``oracle`` and ``oracle_off``.
        protocol: the protocol table, a name of :data:`mcdrl.synthetic.PROTOCOLS` (``"issue"``: the generator's own;
            ``"strong"``: the same cues in most frames of their kind).
        size: frame side in pixels. val_fraction: each site's validation share (a seeded split, the same in each part).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    specs = sites_with_protocol(protocol)
    unknown = [s for s in sites if s not in specs]
    if unknown:
        raise ValueError(f"the LOSO world has synthetic sites only: unknown {unknown}; known: {list(specs)}")
    folder = Path(cache_dir) / world_name(sites, n_per_site, seed, size, val_fraction, n_oracle, protocol)
    datalists = {part: folder / part / "datalist.json" for part in PARTS}
    if all(p.is_file() for p in datalists.values()):
        return datalists
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    split = (1.0 - val_fraction, val_fraction)
    variants = {"sampled": lambda s: s, "reversed": lambda s: s.reversed_protocol(), "protocol_off": lambda s: s.protocol_off()}
    try:
        for part, variant in variants.items():
            generate_dataset(tmp / part, [variant(specs[s]) for s in sites], n_per_site, seed=seed, split=split, size=size)
        for part, variant in (("oracle", variants["sampled"]), ("oracle_off", variants["protocol_off"])):
            generate_dataset(tmp / part, [variant(specs[s]) for s in sites], n_oracle, seed=oracle_seed(seed), split=split, size=size)
        if folder.exists():  # a concurrent generator won; identical bytes by construction
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return datalists
