"""Leave-one-site-out (LOSO) benchmark on the synthetic world: the network the bundle ships, its baselines and ablations.

``python -m mcdrl.evaluation.loso --profile full`` (``--help`` lists the options) writes
``bundle/docs/results/loso.{json,md,png}`` and the per-image CSVs under ``loso_raw/``. Every number in those files is
computed by the command.

Protocol: for each held-out site of the synthetic world, train on the other sites' training split through the
bundle's own trainer (``train.json`` plus the method's variant file and overrides: the same modules, losses,
augmentation, model selection and post-processing as ``python -m monai.bundle run training``), pick the epoch and
the presence threshold by Dice on the *other sites'* validation split (the held-out site is never looked at), then
score every image of the held-out site at its original resolution. No shortcut: nothing is cached between runs.

Modules:

* :mod:`mcdrl.evaluation.loso.profiles`  profiles (smoke, quick, full): world size, seeds, epochs
* :mod:`mcdrl.evaluation.loso.methods`   the rows (Baseline, the paper's Baseline, UNet, paper-literal and shipped MCDRL) and ablations
* :mod:`mcdrl.evaluation.loso.world`     the synthetic multi-site dataset (generated once, cached)
* :mod:`mcdrl.evaluation.loso.run`       one run: the bundle's training with a site held out, then the held-out site scored
* :mod:`mcdrl.evaluation.loso.runner`    the run grid, worker processes, per-run result files (resumable)
* :mod:`mcdrl.evaluation.loso.report`    loso.json / loso.md / loso.png / CSVs and the target check
* :mod:`mcdrl.evaluation.loso.cli`       the command line
"""
