"""Benchmarks of MCDRL against its CLIP backbone (``python -m mcdrl.evaluation.speed``; see ``bundle/docs/results/bench.md``).

* :mod:`mcdrl.evaluation.speed.models`  random-weight networks for timing
* :mod:`mcdrl.evaluation.speed.timing`  interleaved medians, per-module hooks, machine facts
* :mod:`mcdrl.evaluation.speed.runner`  the measurements (forward, training step, profile, options)
* :mod:`mcdrl.evaluation.speed.probe`   fresh-process probes: peak RSS of inference, thread settings
* :mod:`mcdrl.evaluation.speed.fast`    optional speed paths: bf16 :class:`~mcdrl.evaluation.speed.fast.AutocastInferer`, ``torch.compile``
* :mod:`mcdrl.evaluation.speed.report`  bench.json and bench.md
* :mod:`mcdrl.evaluation.speed.cli`     the command line (``python -m mcdrl.evaluation.speed --help``)
"""
