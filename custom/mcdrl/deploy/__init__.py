"""The ways out: exports (TorchScript, ONNX, deploy smoke), MONAI Label glue, the shipped binaries' check, packaging.

* :mod:`~mcdrl.deploy.export`      ``python -m mcdrl.deploy.export``: ONNX, equivalence checks, deploy smoke
* :mod:`~mcdrl.deploy.monailabel`  run-time options for MONAI Label and its client-facing errors
* :mod:`~mcdrl.deploy.shipped`     the shipped weights and their sha256 in ``bundle/large_files.yml``
* :mod:`~mcdrl.deploy.package`     ``python -m mcdrl.deploy.package``: the bundle as shared, with this package in ``scripts/``
"""

from mcdrl.utils import lazy_exports

__getattr__ = lazy_exports(__name__, {})
