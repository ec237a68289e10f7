"""Leave-one-site-out (LOSO) benchmark on the synthetic world: the network the bundle ships, ERM, each causal part, references.

``python -m mcdrl.evaluation.loso --profile full`` (``--help`` lists the options) writes
``bundle/docs/results/loso.{json,md,png}`` and the per-image CSVs under ``loso_raw/``. Every number in those files is
computed by the command.

Protocol: for each held-out site of the synthetic world, train on the other sites' training split through the
bundle's own trainer (``train.json`` plus the row's variant file and overrides: the same modules, losses,
augmentation, model selection and post-processing as ``python -m monai.bundle run training``), pick the epoch and
the presence threshold on the **interventional validation split** (the other sites' validation frames with their
protocol off, so that a shortcut earns nothing there; the held-out site is never looked at), then score every frame of
the held-out site at its original resolution twice: as sampled, and with its protocol reversed (the same scenes).
The report gives Dice, worst-group Dice over (lesion / no lesion) x (protocol confounder present / absent), false
alarms, both validation scores, the oracle's ceiling and whether ERM learnt the shortcut. No shortcut in the
benchmark itself: nothing is cached between runs.

Modules:

* :mod:`mcdrl.evaluation.loso.profiles`  profiles (smoke, quick, full): world size, seeds, epochs, time estimate
* :mod:`mcdrl.evaluation.loso.methods`   the rows (ERM, the shipped configuration, each causal part on ERM, paper, UNets, references)
* :mod:`mcdrl.evaluation.loso.world`     the synthetic world: as sampled, reversed, protocol off, oracle (generated once, cached)
* :mod:`mcdrl.evaluation.loso.run`       one run: the bundle's training with a site held out, then the held-out site scored
* :mod:`mcdrl.evaluation.loso.runner`    the run grid, worker processes, per-run result files (resumable)
* :mod:`mcdrl.evaluation.loso.report`    loso.json / loso.md / loso.png / CSVs and the target check
* :mod:`mcdrl.evaluation.loso.cli`       the command line

Each module imports only those above it in this list (``cli`` imports ``runner``, which imports ``run``, ...); no
module of the package imports one below it (tests/test_layout.py checks the package for import cycles).
"""
