"""The head's pixel pathway made deeper, at a bounded cost, chosen on held-out *source* sites (issue 23, item 1, again).

After release 0.9.8 the presence decision no longer loses most at a new site; the segmentation of lesion frames does.
On the retrained model's reports, the MONAI UNet's Dice on lesion frames is ahead in domain as well as out of it
(validation 0.752 against 0.631, F 0.488 against 0.365, G 0.629 against 0.433), so the pathway itself is the
suspect, not only the shift. The shipped pixel encoder is one 3x3 conv per level, 8 / 12 / 24 / 48 channels at full,
1/2, 1/4 and 1/8 resolution, and the decoder's stages are 96 / 48 / 24 / 12 wide; the UNet is 16 to 256 wide, reaches
1/16, and has two residual units per level. The comparison is at equal wall time, so a variant may cost at most 1.3 x
the shipped training step (FLOPs, ``speed.py``): the UNet's widths everywhere (``WIDE``) cost 2.1 x, with residual
units 2.9 x, and are not run. Each variant is existing keys of ``train.json``, on top of the run-2 keys that ship
(``lambda_contrast`` 1.0, ``tau`` 0.07, written out so that the runs do not depend on which ``train.json`` is
checked out):

* ``residual``: each pixel-encoder level a MONAI ``ResidualUnit`` (two 3x3 convs and a shortcut; 0.9.2's tie on
  source validation, +0.7, here read on held-out sites): deeper pixel features, 1.13 x the FLOPs;
* ``deep``: a fifth, coarser level, 96 channels at 1/16, with its own decoder stage (``decoder_skip_channels``
  8 / 12 / 24 / 48 / 96, ``decoder_channels`` 96 / 96 / 48 / 24 / 12): pixel features with the UNet's reach, 1.05 x;
* ``deep_residual``: both, 1.22 x.

Each fold trains on four of A-E and reads the fifth, exactly as ``../presence_in_training/run.py`` does (that script's
``run_variants``, the shipped recipe, seed 0, 2 epochs); the baseline is that experiment's ``contrast_1_tau_0.07``
rows, the same keys on the same code. No frame of F, G or any other site is read. Writes ``runs.json`` beside this
file (finished folds are kept, so it resumes). The rule is in ``README.md``, committed before any fold ran.

    git show 29298f9:bundle/models/model.pt > /work/logs/pixel_pathway/model_0.9.2.pt
    PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/pixel_pathway/run.py \
        --scratch /work/logs/pixel_pathway --readout_from /work/logs/pixel_pathway/model_0.9.2.pt
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN2 = {"lambda_contrast": 1.0, "tau": 0.07}
DEEP = {"decoder_skip_channels": [8, 12, 24, 48, 96], "decoder_channels": [96, 96, 48, 24, 12]}
VARIANTS = {
    "residual": {**RUN2, "decoder_skip_block": "residual"},
    "deep": {**RUN2, **DEEP},
    "deep_residual": {**RUN2, **DEEP, "decoder_skip_block": "residual"},
}
#: the UNet's widths at the shipped depth: over the cost bound, so not run (``speed.py`` records their FLOPs)
WIDE = {"decoder_skip_channels": [16, 32, 64, 128], "decoder_channels": [128, 64, 32, 16]}
OVER_COST = {"wide": WIDE, "wide_residual": {**WIDE, "decoder_skip_block": "residual"}}


def _presence_in_training():
    spec = importlib.util.spec_from_file_location("presence_in_training_run", HERE.parent / "presence_in_training/run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", required=True, help="weights and logs of the runs (not kept in git)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--readout_from", required=True,
                   help="the model.pt whose confounder-readout buffers the presence reads borrow: the baseline's reads "
                        "used 0.9.2's (`git show 29298f9:bundle/models/model.pt > <file>`), so the variants use them too")
    args = p.parse_args(argv)
    _presence_in_training().run_variants({v: VARIANTS[v] for v in args.variants}, HERE / "runs.json", Path(args.scratch),
                                         args.epochs, Path(args.readout_from))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
