"""CLI: ``python -m mcdrl.synthetic --out DIR --sites A B C --n 20 --seed 0 [--formats png dicom nifti] [--figure PATH]``."""

from __future__ import annotations

import argparse
import sys
import time

from .export import FORMATS, generate_dataset
from .figure import make_site_figure
from .sites import GENERIC_MIXTURE, SITES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcdrl.synthetic", description=__doc__)
    p.add_argument("--out", help="output folder for images/, labels/ and datalist.json")
    p.add_argument("--sites", nargs="+", default=list(SITES),
                   help=f"site names, from {list(SITES) + [GENERIC_MIXTURE.name]} (default: all sites)")
    p.add_argument("--n", type=int, default=20, help="cases per site")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--formats", nargs="+", default=["png"], choices=FORMATS)
    p.add_argument("--split", nargs="+", type=float, default=[0.8, 0.2], help="train val [test] fractions")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--extra_training", type=int, default=0,
                   help="further cases per site, all training (the first --n cases and their split are unchanged)")
    p.add_argument("--figure", help="also write the overview figure PNG here")
    a = p.parse_args(argv)
    if not a.out and not a.figure:
        p.error("give --out and/or --figure")
    if a.out:
        t = time.perf_counter()
        path = generate_dataset(a.out, a.sites, a.n, a.seed, a.formats, a.split, a.size, progress=True, extra_training=a.extra_training)
        n = (a.n + a.extra_training) * len(a.sites)
        print(f"wrote {n} cases, {path} ({(time.perf_counter() - t) / max(n, 1) * 1000:.1f} ms/case incl. I/O)")
    if a.figure:
        print(f"figure: {make_site_figure(a.figure, seed=a.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
