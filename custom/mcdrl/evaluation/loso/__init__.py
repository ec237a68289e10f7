"""Leave-one-site-out (LOSO) benchmark on the synthetic world, with baselines and ablations.

``python -m mcdrl.evaluation.loso --profile full`` (``--help`` lists the options) writes
``bundle/docs/results/loso.{json,md,png}``, the per-image CSVs under ``loso_raw/`` and, with ``--ablations``,
``ablations.{json,md,png}``. Every number in those files is computed by the command.

Protocol: for each held-out site of the synthetic world, train on the other sites' training split, pick the
epoch by Dice on the *other sites'* validation split (the held-out site is never looked at), then score every
image of the held-out site at its original resolution with :func:`mcdrl.evaluation.metrics.per_image_metrics`.

Budget [ours]: the CLIP visual encoder is frozen up to its last transformer block; the tokens entering that
block are computed once per image and view and cached. Every run trains the last ViT block (at the backbone
learning-rate scale, so L_contrast acts on it), the intervention and the head, from those cached tokens through
MCDRLNet's own read-out, region selection, intervention and decoder (:mod:`mcdrl.evaluation.loso.model`). All methods get
the same cached views, the same number of steps, the same batches and the same epoch-selection rule.

Modules:

* :mod:`mcdrl.evaluation.loso.profiles`  profiles (smoke, full), hyperparameters mirrored from train.json
* :mod:`mcdrl.evaluation.loso.methods`   the compared methods and the ablation grid
* :mod:`mcdrl.evaluation.loso.world`     the synthetic multi-site dataset (generated once, cached)
* :mod:`mcdrl.evaluation.loso.gin`       GIN random-convolution intensity augmentation (Ouyang et al., TMI 2022)
* :mod:`mcdrl.evaluation.loso.features`  the frozen-encoder token cache
* :mod:`mcdrl.evaluation.loso.model`     network assembly and the forward from cached tokens
* :mod:`mcdrl.evaluation.loso.train`     one run: train, select on source validation, test on the held-out site
* :mod:`mcdrl.evaluation.loso.runner`    the run grid, worker processes, per-run result files (resumable)
* :mod:`mcdrl.evaluation.loso.report`    loso.json / loso.md / loso.png / CSVs and the ablation report
* :mod:`mcdrl.evaluation.loso.cli`       the command line
"""
