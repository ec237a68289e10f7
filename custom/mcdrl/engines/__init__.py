"""How a run trains: the bundle's ignite glue, handlers, resumable checkpoints, distributed training, CLIP pretraining.

* :mod:`~mcdrl.engines.training`       datalists, parameter groups, batch preparation (referenced by train.json)
* :mod:`~mcdrl.engines.handlers`       the intervention schedule and per-term loss logging
* :mod:`~mcdrl.engines.checkpointing`  full, atomic, resumable checkpoints
* :mod:`~mcdrl.engines.run_state`      random states and network fingerprints of a run
* :mod:`~mcdrl.engines.distributed`    DDP set-up, samplers, rank-0 handlers (multi_gpu_train.json)
* :mod:`~mcdrl.engines.pretrain`       pretraining the demo CLIP on the synthetic world (pretrain_clip.json)

Depends on :mod:`mcdrl.networks`, never on :mod:`mcdrl.evaluation` or :mod:`mcdrl.deploy` (``tests/test_layout.py``).
"""

from mcdrl.utils import lazy_exports

__getattr__ = lazy_exports(__name__, {})
