"""MONAI Label glue: run-time options for a network built once, and error messages that reach the client.

MONAI Label instantiates ``network_def`` once, at server start, and re-parses only ``preprocessing``, ``inferer``
and ``postprocessing`` per request (after writing the user's option values into ``displayable_configs``). So an
option that changes the network (MTRS ``alpha``, ``use_intervention``) must be applied by the inferer, per call:
:class:`RuntimeOptionsInferer` does that. In the bundle's own workflows it sets the values the network was built
with, so it changes nothing there.

:class:`ClientFriendlyApp` is mixed into the monaibundle app class by ``scripts/monailabel_setup.py``. It fixes two
things of MONAI Label 0.8.5 for clients: any exception in ``/infer`` became a bare ``500 Internal Server Error``
(the message stayed in the server log); a ``/train`` request that lacks one of the bundle's ``displayable_configs``
keys failed with ``KeyError`` (curl and other clients may send only max_epochs); and 3D Slicer's empty ``run_id``
field reached ``monai.bundle.run(run_id="")``, which makes MONAI's ConfigWorkflow parse the *whole* train.json,
evaluating every item, e.g. the unreferenced ``train#datalist`` (which fails on a datalist file MONAI Label never
uses). Nothing here imports MONAI Label at import time.
"""

from __future__ import annotations

import logging
import os

import torch
from monai.inferers import SimpleInferer

from mcdrl.engines.handlers import unwrap
from mcdrl.utils import as_bool

__all__ = ["ClientFriendlyApp", "RuntimeOptionsInferer", "as_bool", "http_error"]

logger = logging.getLogger(__name__)

class RuntimeOptionsInferer(SimpleInferer):
    """``SimpleInferer`` that first sets MTRS ``alpha`` and ``use_intervention`` on the (MCDRL) network.

    Args:
        alpha: fraction of positions MTRS keeps, in (0, 1]; None leaves the network's value.
        use_intervention: apply the causal intervention (False is the "w/o CDRL" ablation); None leaves it.

    Values may arrive as strings (``"0.3"``, ``"false"``) from annotation clients; a bad value is a ``ValueError``
    naming the option. Networks without these attributes (e.g. TorchScript) run unchanged, with a warning when an
    option was asked for.

    Shapes: ``inputs`` (B, 3, H, W) -> logits (B, 2, H, W), as the network's eval forward.
    """

    def __init__(self, alpha: float | str | None = None, use_intervention: bool | str | None = None):
        super().__init__()
        self.alpha = None
        if alpha is not None:
            try:
                self.alpha = float(alpha)
            except (TypeError, ValueError):
                raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}") from None
            if not 0.0 < self.alpha <= 1.0:
                raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self.use_intervention = None if use_intervention is None else as_bool(use_intervention, "use_intervention")

    def apply(self, network: torch.nn.Module) -> None:
        """Write the options into ``network`` (wrapped or not)."""
        net = unwrap(network)
        selector = getattr(net, "selector", None)
        if self.alpha is not None:
            if selector is not None and hasattr(selector, "alpha") and not isinstance(net, torch.jit.ScriptModule):
                selector.alpha = self.alpha
            else:
                logger.warning("alpha=%s ignored: the network has no MTRS selector to set", self.alpha)
        if self.use_intervention is not None:
            if hasattr(net, "use_intervention") and not isinstance(net, torch.jit.ScriptModule):
                net.use_intervention = self.use_intervention
            else:
                logger.warning("use_intervention=%s ignored: the network has no such switch", self.use_intervention)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        self.apply(network)
        return super().__call__(inputs, network, *args, **kwargs)


def http_error(exc: BaseException, request: dict, unknown_image: str | None = None) -> tuple[int, str]:
    """(status, message) for an exception raised while serving ``request``.

    404: unknown model or an image id not in the datastore; 400: other invalid requests; 422: an image that cannot
    be read or used (our transforms raise ValueError naming the file and the problem); 500: anything else.
    """
    if unknown_image is not None:
        return 404, f"image {unknown_image!r} is not in the datastore (the --studies folder); GET /datastore/ lists the image ids"
    name = type(exc).__name__
    if name == "MONAILabelException":
        msg = str(getattr(exc, "msg", exc))
        return (404 if "no model" in msg.lower() else 400), msg
    text = str(exc)
    if isinstance(exc, (ValueError, OSError)) or (isinstance(exc, RuntimeError) and "cannot find a suitable reader" in text):
        return 422, f"model {request.get('model')!r}, image {request.get('image')!r}: {name}: {text}"
    return 500, f"model {request.get('model')!r}, image {request.get('image')!r}: {name}: {text}"


class ClientFriendlyApp:
    """``MONAILabelApp`` mixin (``class MyApp(ClientFriendlyApp, MONAILabelApp)``).

    * ``infer``: a failure becomes ``fastapi.HTTPException`` with the status and message of :func:`http_error`, so
      that 3D Slicer, OHIF or curl show why a request failed. The server keeps serving.
    * ``train``: options of the bundle's ``displayable_configs`` missing from the request get the bundle's defaults
      (MONAI Label reads ``request[key]`` for each of them), and an empty ``run_id`` becomes ``"run"``. Runs in the
      training subprocess, which builds the app too.
    """

    def train(self, request):
        if not request.get("run_id"):
            request = {**request, "run_id": "run"}
        task = getattr(self, "_trainers", {}).get(request.get("model"))
        parser = getattr(task, "bundle_config", None)
        if parser is not None and parser.get("displayable_configs"):
            defaults = parser.get_parsed_content("displayable_configs", instantiate=True)
            missing = {k: v for k, v in defaults.items() if k not in request}
            if missing:
                logger.info("train request without %s: using the bundle's defaults %s", sorted(missing), missing)
                request = {**request, **missing}
        return super().train(request)

    def infer(self, request, datastore=None):
        from fastapi import HTTPException

        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except Exception as e:
            unknown = None if type(e).__name__ == "MONAILabelException" else self._unknown_image(request, datastore)
            status, msg = http_error(e, request, unknown)
            logger.warning("infer failed (HTTP %d): %s", status, msg)
            raise HTTPException(status_code=status, detail=msg) from e

    def _unknown_image(self, request: dict, datastore=None) -> str | None:
        """The image id of ``request`` when it is neither a file nor an image of the datastore, else None."""
        image = request.get("image")
        if not isinstance(image, str) or not image or os.path.exists(image):
            return None
        try:
            known = image in (datastore or self.datastore()).list_images()
        except Exception:  # a datastore that cannot list: do not guess
            return None
        return None if known else image
