"""Benchmarks of MCDRL against its CLIP backbone (``python -m mcdrl.bench``; see ``bundle/docs/results/bench.md``).

* :mod:`mcdrl.bench.models`  random-weight networks for timing
* :mod:`mcdrl.bench.timing`  interleaved medians, per-module hooks, machine facts
* :mod:`mcdrl.bench.runner`  the measurements (forward, training step, profile, options)
* :mod:`mcdrl.bench.probe`   fresh-process probes: peak RSS of inference, thread settings
* :mod:`mcdrl.bench.fast`    optional speed paths: bf16 :class:`~mcdrl.bench.fast.AutocastInferer`, ``torch.compile``
* :mod:`mcdrl.bench.report`  bench.json and bench.md
* :mod:`mcdrl.bench.cli`     the command line (``python -m mcdrl.bench --help``)
"""
