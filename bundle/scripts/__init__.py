"""The bundle's code: ``scripts/mcdrl`` is the MCDRL package, copied in when the bundle is packaged.

``monai.bundle`` (when a workflow runs), the model zoo's checks and MONAI Label put the bundle folder on ``sys.path``;
the configs' first import, ``$import scripts``, then runs this file, which puts this folder on ``sys.path`` so that
their ``$import mcdrl`` and ``mcdrl....`` targets resolve to the bundle's own copy. In a source checkout this folder
holds no ``mcdrl`` and nothing changes: the installed package is used.
"""

import os
import sys
import warnings

_HERE = os.path.dirname(os.path.abspath(__file__))

if os.path.isfile(os.path.join(_HERE, "mcdrl", "__init__.py")):
    if _HERE not in sys.path:
        sys.path.insert(0, _HERE)
    _loaded = sys.modules.get("mcdrl")
    _file = getattr(_loaded, "__file__", None) or ""
    if _loaded is not None and not os.path.abspath(_file).startswith(_HERE + os.sep):
        warnings.warn(f"mcdrl was already imported from {_file}; this bundle's own copy in {_HERE} is not used", stacklevel=2)
