"""Speed of the network that ships (``python -m mcdrl.evaluation.speed``; ``make bench``; ``bundle/docs/results/bench.md``).

* :mod:`~mcdrl.evaluation.speed.timing`  interleaved rounds, per-round ratios, time in the network's parts, peak RSS
* :mod:`~mcdrl.evaluation.speed.runner`  the measurements and the command line
* :mod:`~mcdrl.evaluation.speed.report`  targets, bench.json and bench.md
"""
