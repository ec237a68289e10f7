"""CLI: ``python -m mcdrl.datalists <name> <root> [--out FILE] [--val-fraction F] [--seed N] [--holdout SITE]``."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections import Counter
from pathlib import Path

from .catalog import CATALOG
from .core import SPLITS, DatalistError, DatalistWarning, describe_masks, write_datalist
from .registry import BUILDERS, LOSO5_SITES, build_datalist, canonical_name


def _parser() -> argparse.ArgumentParser:
    known = "\n".join(f"  {k:14s} {CATALOG[k].title}: {CATALOG[k].layout}" for k in BUILDERS)
    p = argparse.ArgumentParser(
        prog="python -m mcdrl.datalists",
        description="Write the MCDRL JSON datalist of a public dataset from its published folder layout.",
        epilog=f"datasets and expected layouts:\n{known}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help=f"dataset: {', '.join(BUILDERS)}")
    p.add_argument("root", type=Path, help="the dataset folder (or the folder containing it)")
    p.add_argument("--out", type=Path, default=None, help="output JSON (default: <root>/datalist_<name>.json)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of each training site")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation draw")
    p.add_argument(
        "--holdout",
        action="append",
        default=[],
        metavar="SITE",
        help="put every entry of SITE in 'test' (repeatable; loso5 also takes the letters A-E)",
    )
    p.add_argument(
        "--sites",
        default=",".join(LOSO5_SITES),
        help="loso5 only: comma-separated site letters to include (default: A,B,C,D,E)",
    )
    p.add_argument(
        "--include-seen-test",
        action="store_true",
        help="pranet only: also put TestDataset/Kvasir and TestDataset/CVC-ClinicDB in 'test'",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=DatalistWarning)  # already logged once by the logger
    try:
        name = canonical_name(args.name)
        options = {}
        if name == "loso5":
            options["sites"] = [s.strip() for s in args.sites.split(",") if s.strip()]
        if name == "pranet":
            options["include_seen_test"] = args.include_seen_test
        datalist = build_datalist(
            name, args.root, val_fraction=args.val_fraction, seed=args.seed, holdout=args.holdout, **options
        )
        out = args.out if args.out is not None else args.root / f"datalist_{name}.json"
        out = write_datalist(datalist, out, root=args.root)
    except DatalistError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    for split in SPLITS:
        counts = Counter(e["site"] for e in datalist[split])
        print(f"  {split:10s} {len(datalist[split]):6d}  " + ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())))
    print("  masks:")
    for site, report in datalist.get("masks", {}).items():
        print(f"    {site}: {describe_masks(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
