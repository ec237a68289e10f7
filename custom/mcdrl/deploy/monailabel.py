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
uses). It also answers a request for an unknown model (``/train``, ``/batch/infer``, ``/scoring``, ``/activelearning``,
``/wsi_infer``) with an immediate 404 (MONAI Label alone answers 200 SUBMITTED and fails later in the background), and
a corrupt image with a 422 that says so (MONAI Label alone tells the user to install reader libraries).

Safe fine-tuning: every ``/train`` runs ``train.json`` with ``configs/monailabel_finetune.json`` merged over it
(Dice + CE, a fine-tuning learning rate, and :class:`FineTuneGuard`). The guard scores the served ``models/model.pt``
on the request's validation split before the first epoch, lets an epoch replace it only when it scores higher, puts
the served file back byte for byte otherwise, and keeps the replaced weights in ``models/previous/`` (a sub-folder,
so MONAI Label still sees one ``.pt`` in ``models/``). ``python -m mcdrl.deploy.monailabel restore BUNDLE`` swaps
them back (run it again to undo). Nothing here imports MONAI Label at import time.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import torch
from monai.inferers import SimpleInferer

from mcdrl.engines.handlers import unwrap
from mcdrl.errors import ConfigError
from mcdrl.utils import as_bool, atomic_path

__all__ = ["FINETUNE_CONFIG", "ClientFriendlyApp", "FineTuneGuard", "RuntimeOptionsInferer", "as_bool", "http_error", "list_previous", "restore_previous",
           "train_request_problem"]

logger = logging.getLogger(__name__)

#: The override file merged over train.json for every MONAI Label /train (in the bundle's configs/ folder).
FINETUNE_CONFIG = "monailabel_finetune.json"
#: Where the guard keeps replaced weights, relative to the bundle (models/ must hold exactly one .pt: model.pt).
PREVIOUS_DIR = "models/previous"

class RuntimeOptionsInferer(SimpleInferer):
    """``SimpleInferer`` that first sets MTRS ``alpha`` and ``use_intervention`` on the (MCDRL) network, then runs it
    on the chosen engine.

    Args:
        alpha: fraction of positions MTRS keeps, in (0, 1]; None leaves the network's value.
        use_intervention: apply the causal intervention (False is the "w/o CDRL" ablation); None leaves it.
        engine: ``torch`` (default), or ``onnxruntime`` / ``onnxruntime-int8``: the network's exported graph
            (:mod:`mcdrl.deploy.onnx_engine`), checked against ``model_path`` before every call.
        model_path: the weights the graph comes from (``models/model.pt``); needed by the onnxruntime engines.
        site_profile: a ``site_profile.json`` (``inference.json``'s ``site_profile`` key) whose presence threshold
            the network uses (:func:`mcdrl.io.site_profile.apply_site_profile`); None leaves the model's.

    Values may arrive as strings (``"0.3"``, ``"false"``) from annotation clients; a bad value is a ``ValueError``
    naming the option. Networks without these attributes (e.g. TorchScript) run unchanged, with a warning when an
    option was asked for.

    Shapes: ``inputs`` (B, 3, H, W) -> logits (B, 2, H, W), as the network's eval forward.
    """

    def __init__(self, alpha: float | str | None = None, use_intervention: bool | str | None = None, engine: str = "torch",
                 model_path: str | os.PathLike | None = None, site_profile: str | os.PathLike | None = None):
        super().__init__()
        from .onnx_engine import check_engine

        self.engine, self.model_path = check_engine(engine), model_path
        if self.engine != "torch" and not model_path:
            raise ConfigError(f"engine {engine}: pass model_path, the weights its ONNX graph is exported from")
        self.site_profile = None if site_profile in (None, "", "null", "none") else str(site_profile)
        if self.site_profile is not None:
            if self.engine != "torch":
                raise ConfigError(f"site_profile {self.site_profile}: a site profile applies to the torch engine only (engine {engine} "
                                  "bakes the model's presence threshold into its graph)")
            from mcdrl.io.site_profile import load_site_profile

            load_site_profile(self.site_profile)  # a missing or malformed file fails when the config is parsed
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
        if self.site_profile is not None:
            from mcdrl.io.site_profile import apply_site_profile

            apply_site_profile(net, self.site_profile)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        self.apply(network)
        if self.engine != "torch":
            from .onnx_engine import engine_network

            network = engine_network(unwrap(network), self.model_path, self.engine)
        return super().__call__(inputs, network, *args, **kwargs)


_NO_READER = re.compile(r"cannot find a suitable reader for file: (.*?)\.\n")


def unreadable_image_reason(path: str | os.PathLike) -> str:
    """Why ``path`` cannot be read as an image, in words for the user (the file, and what is wrong with it)."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name}: the file does not exist"
    if path.stat().st_size == 0:
        return f"{path.name}: the file is empty (0 bytes)"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            kind = im.format
            im.load()  # decodes: a truncated or corrupt body fails here
    except UnidentifiedImageError:
        return f"{path.name}: not an image file of a type this model reads (PNG, JPEG, BMP, TIFF), or a corrupt one"
    except (OSError, SyntaxError, ValueError) as e:
        return f"{path.name}: a corrupt or truncated {kind} file ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
    return f"{path.name}: the file opens as {kind} but the bundle's reader failed on it"


def http_error(exc: BaseException, request: dict, unknown_image: str | None = None, image_path: str | None = None) -> tuple[int, str]:
    """(status, message) for an exception raised while serving ``request``.

    404: unknown model or an image id not in the datastore; 400: other invalid requests; 422: an image that cannot
    be read or used (our transforms raise ValueError naming the file and the problem; a file no reader could open is
    named with what is wrong with it, see :func:`unreadable_image_reason`); 500: anything else.
    """
    if unknown_image is not None:
        return 404, f"image {unknown_image!r} is not in the datastore (the --studies folder); GET /datastore/ lists the image ids"
    name = type(exc).__name__
    if name == "MONAILabelException":
        msg = str(getattr(exc, "msg", exc))
        return (404 if "no model" in msg.lower() or "not initialized" in msg.lower() else 400), msg
    text = str(exc)
    where = f"model {request.get('model')!r}, image {request.get('image')!r}"
    if isinstance(exc, RuntimeError) and "cannot find a suitable reader" in text:
        found = _NO_READER.search(text)
        path = image_path or (found.group(1) if found else None)
        reason = unreadable_image_reason(path) if path else "the file is not a readable image"
        return 422, f"{where}: cannot read the image: {reason}. Replace or re-export the file"
    if isinstance(exc, (ValueError, OSError)):
        return 422, f"{where}: {name}: {text}"
    return 500, f"{where}: {name}: {text}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file and a rename (``dst`` is never half-written)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class FineTuneGuard:
    """Trainer handler for MONAI Label fine-tuning: ``models/model.pt`` is replaced only by an epoch that scores
    higher on the validation split than the weights it replaces, and those are kept.

    * ``STARTED`` (after MONAI Label's ``CheckpointLoader``): copies the served ``model_path`` to ``backup_dir``, loads
      it into the network, and runs the validator once: the score of the served weights becomes the key-metric
      saver's best, so an epoch writes ``model.pt`` only when it beats it. The network then continues from the
      weights it started with. No validation data is an error (the guard could not tell better from worse).
    * ``COMPLETED``: if an epoch beat the served weights, ``model.pt`` holds the best epoch and the served weights
      stay in ``backup_dir`` (newest ``keep`` kept); otherwise the served file is put back byte for byte (even if a
      reset of the model selection, ``select_after_causal_start``, let a worse epoch write it) and the copy goes.
    * A report (baseline, every epoch's score, the decision, the validation images) goes to ``report_path``.

    Args:
        validator: the evaluator of ``validate#evaluator`` (its key metric selects the weights).
        network: the trained network (wrapped or not).
        model_path: the served weights (``models/model.pt``).
        backup_dir: where the replaced weights go (``models/previous``: a sub-folder, so that ``models/`` still holds
            exactly one ``.pt``). keep: how many replaced weight files to keep (oldest removed first).
        report_path: JSON report of the last fine-tuning (None: no report).

    Only rank 0 touches files; every rank runs the baseline validation (a distributed evaluator needs all ranks).
    """

    def __init__(self, validator, network, model_path: str | os.PathLike, backup_dir: str | os.PathLike | None = None, keep: int = 3,
                 report_path: str | os.PathLike | None = None):
        self.validator = validator
        self.network = network
        self.model_path = Path(model_path)
        self.backup_dir = Path(backup_dir) if backup_dir else self.model_path.parent / "previous"
        self.keep = max(int(keep), 1)
        self.report_path = Path(report_path) if report_path else None
        self.baseline: float | None = None
        self.backup: Path | None = None
        self.scores: list[dict] = []
        self._in_baseline = False
        self._trainer = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        self._trainer = engine
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._record)

    def _metric(self) -> float:
        state = self.validator.state
        return float(state.metrics[state.key_metric_name])

    def _record(self, _validator) -> None:
        if not self._in_baseline and self._trainer is not None:
            self.scores.append({"epoch": int(self._trainer.state.epoch), "score": self._metric()})

    def started(self, engine) -> None:
        if not self.model_path.is_file():
            logger.warning("fine-tuning guard: no served weights at %s; the first epoch's weights will be written as usual", self.model_path)
            return
        if len(self.validator.data_loader) == 0:
            raise ConfigError("fine-tuning needs validation images to decide whether the new weights are better than the served "
                              f"{self.model_path.name}, and this /train has none: send val_split > 0 (MONAI Label's default is 0.2)")
        net = unwrap(self.network)
        if _rank() == 0:
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            self.backup = self.backup_dir / f"{self.model_path.stem}-{stamp}.pt"
            _copy_atomic(self.model_path, self.backup)
        start = copy.deepcopy(net.state_dict())
        device = next(net.parameters()).device
        net.load_state_dict(torch.load(self.model_path, map_location=device, weights_only=True), strict=True)
        active = getattr(net, "intervention_active", None)
        if active is not None:
            net.intervention_active = True  # as served
        self._in_baseline = True
        try:
            self.validator.run(max(int(engine.state.epoch), 1))
        finally:
            self._in_baseline = False
            if active is not None:
                net.intervention_active = active
            net.load_state_dict(start, strict=True)
        self.baseline = self._metric()
        logger.info("fine-tuning guard: the served %s scores %s = %.4f on %d validation image(s); an epoch replaces it only "
                    "if it scores higher", self.model_path.name, self.validator.state.key_metric_name, self.baseline,
                    len(self.validator.data_loader.dataset))

    def completed(self, engine) -> None:
        if self.baseline is None or _rank() != 0:
            return
        best = float(self.validator.state.best_metric)
        replaced = best > self.baseline and any(s["score"] == best for s in self.scores)
        name = self.validator.state.key_metric_name
        if replaced:
            kept = self._prune()
            logger.info("fine-tuning guard: %s replaced (%s %.4f -> %.4f); the previous weights are kept as %s "
                        "(restore: python -m mcdrl.deploy.monailabel restore %s)", self.model_path.name, name, self.baseline, best,
                        self.backup, self.model_path.parent.parent)
        else:
            _copy_atomic(self.backup, self.model_path)  # byte for byte what was served before this /train
            self.backup.unlink(missing_ok=True)
            kept = list_previous(self.backup_dir)
            top = max((s["score"] for s in self.scores), default=None)
            logger.info("fine-tuning guard: %s kept: no fine-tuned epoch beat the served weights (%s %.4f; best epoch %s)",
                        self.model_path.name, name, self.baseline, "none" if top is None else f"{top:.4f}")
        if self.report_path is not None:
            report = {
                "metric": name, "baseline": self.baseline, "epochs": self.scores, "best": best if replaced else self.baseline,
                "replaced": replaced, "model": str(self.model_path), "previous": str(self.backup) if replaced else None,
                "kept_previous": [str(p) for p in kept],
                "validation_images": [str(d.get("image")) for d in getattr(self.validator.data_loader.dataset, "data", [])],
                "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            self.report_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.report_path) as tmp:
                Path(tmp).write_text(json.dumps(report, indent=1) + "\n")

    def _prune(self) -> list[Path]:
        kept = list_previous(self.backup_dir)
        for old in kept[: max(len(kept) - self.keep, 0)]:
            old.unlink(missing_ok=True)
        return list_previous(self.backup_dir)


def list_previous(backup_dir: str | os.PathLike) -> list[Path]:
    """The kept weight files of ``backup_dir``, oldest first (their names carry the UTC time they were replaced)."""
    folder = Path(backup_dir)
    return sorted(folder.glob("*.pt")) if folder.is_dir() else []


def restore_previous(bundle: str | os.PathLike, name: str | None = None) -> tuple[Path, Path]:
    """Swap ``<bundle>/models/model.pt`` with kept weights of ``<bundle>/models/previous/`` (the newest by default).

    The current ``model.pt`` is kept in their place (as the newest), so running this again undoes it. Both files are
    written through temporary names and renames. A running MONAI Label server serves the restored file from its next
    request (it reloads ``model.pt`` when the file changes).

    Returns:
        (the kept file that was restored, where the replaced model.pt is kept now).

    Raises:
        ConfigError: no kept weights (or no file ``name``) in ``models/previous``.
    """
    bundle = Path(bundle)
    model, folder = bundle / "models" / "model.pt", bundle / PREVIOUS_DIR
    kept = list_previous(folder)
    if name:
        chosen = folder / Path(name).name
        if chosen not in kept:
            raise ConfigError(f"no kept weights {name!r} in {folder}; kept: {[p.name for p in kept] or 'none'}")
    elif kept:
        chosen = kept[-1]
    else:
        raise ConfigError(f"no kept weights in {folder}: a MONAI Label /train keeps the weights it replaces there, and none has replaced {model} yet")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = folder / f"model-{stamp}.pt"
    if model.is_file():
        _copy_atomic(model, aside)
    _copy_atomic(chosen, model)
    chosen.unlink()
    return chosen, aside


def main(argv: list[str] | None = None) -> int:
    """``python -m mcdrl.deploy.monailabel {list,restore} BUNDLE``: the weights MONAI Label fine-tuning kept."""
    ap = argparse.ArgumentParser(prog="python -m mcdrl.deploy.monailabel", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd, text in (("list", "list the kept weights, oldest first"), ("restore", "swap models/model.pt with kept weights (the newest by default); run again to undo")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("bundle", type=Path, help="the bundle folder MONAI Label serves (<app>/model/<name>)")
        if cmd == "restore":
            p.add_argument("--name", help="a file name from 'list' (default: the newest)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            for p in list_previous(args.bundle / PREVIOUS_DIR):
                print(p)
            return 0
        restored, aside = restore_previous(args.bundle, args.name)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.bundle / 'models' / 'model.pt'} <- {restored.name} (restored); the weights it replaced are kept as {aside}")
    return 0


class ClientFriendlyApp:
    """``MONAILabelApp`` mixin (``class MyApp(ClientFriendlyApp, MONAILabelApp)``).

    * ``infer``: a failure becomes ``fastapi.HTTPException`` with the status and message of :func:`http_error`, so
      that 3D Slicer, OHIF or curl show why a request failed. The server keeps serving.
    * ``train``: options of the bundle's ``displayable_configs`` missing from the request get the bundle's defaults
      (MONAI Label reads ``request[key]`` for each of them), and an empty ``run_id`` becomes ``"run"``. Runs in the
      training subprocess, which builds the app too.
    * Every trainer of a bundle with ``configs/monailabel_finetune.json`` runs train.json with that file merged over
      it (the displayable options, the /info panel and multi-GPU training included).
    * A ``/train`` that could not train anything is refused before it is queued, naming the problem
      (:func:`train_request_problem`): an unknown option (400), ``max_epochs`` < 1 or ``val_split`` outside (0, 1) (400), no
      labelled images, or a split that leaves no training or validation image (422). The training subprocess checks the
      data again, so a run that trained nothing fails instead of reporting DONE.
    * An unknown model, scoring method or strategy is a 404 before anything is queued: ``/train/<model>``,
      ``/batch/infer/<model>`` and ``/scoring/<method>`` are checked in the server process (MONAI Label queues them
      and answers 200 SUBMITTED); ``/activelearning`` and ``/wsi_infer`` answer 404 instead of 500.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._use_finetune_configs()
        _check_requests_before_queueing()
        _serialise_local_datastore()

    def _use_finetune_configs(self) -> None:
        for name, task in getattr(self, "_trainers", {}).items():
            bundle, first = getattr(task, "bundle_path", None), getattr(task, "bundle_config_path", None)
            if not bundle or not isinstance(first, str):
                continue
            override = os.path.join(bundle, "configs", FINETUNE_CONFIG)
            if os.path.isfile(override):
                task.bundle_config_path = [first, override]  # monai.bundle.run merges a list of config files in order
                task.bundle_config = task._load_bundle_config(bundle, task.bundle_config_path)
                logger.info("trainer %s: train.json with %s merged over it (safe fine-tuning)", name, FINETUNE_CONFIG)

    def next_sample(self, request):
        strategy = request.get("strategy") or "random"
        known = getattr(self, "_strategies", {})
        if strategy not in known:
            from fastapi import HTTPException

            raise HTTPException(status_code=404, detail=f"no active learning strategy {strategy!r}: this server has {sorted(known)}")
        return super().next_sample(request)

    def infer_wsi(self, request, datastore=None):
        _require_known("infer", request.get("model"), getattr(self, "_infers", {}), "/infer/wsi")
        return super().infer_wsi(request, datastore)

    def train(self, request):
        if not request.get("run_id"):
            request = {**request, "run_id": "run"}
        problem = _train_problem(self, request, check_keys=False)
        if problem is not None:  # checked in the server before queueing; the datastore may have changed since
            raise ConfigError(problem[1])
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
            status, msg = http_error(e, request, unknown, self._image_path(request, datastore))
            logger.warning("infer failed (HTTP %d): %s", status, msg)
            raise HTTPException(status_code=status, detail=msg) from e

    def _image_path(self, request: dict, datastore=None) -> str | None:
        """The file of the request's image (an uploaded file's path, or the datastore's file of an image id)."""
        image = request.get("image")
        if not isinstance(image, str) or not image:
            return None
        if os.path.exists(image):
            return image
        try:
            return (datastore or self.datastore()).get_image_uri(image) or None
        except Exception:  # an id the datastore does not know: answered as 404 elsewhere
            return None

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


#: Keys MONAI Label 0.8.5's BundleTrainTask reads from a /train request besides those its ``config()`` lists.
TRAIN_REQUEST_EXTRA_KEYS = ("model", "force_multi_gpu", "tracking_run_name", "bundle_path")


def train_request_problem(request: dict, options: dict, n_labelled: int, check_keys: bool = True) -> tuple[int, str] | None:
    """(HTTP status, message) for a ``/train`` request that cannot train anything, or None when it can.

    Checked, in this order: unknown keys (400; ``options`` are the trainer's ``config()``, i.e. its training panel,
    plus :data:`TRAIN_REQUEST_EXTRA_KEYS`); ``max_epochs`` not a whole number >= 1 (400); ``val_split`` not a number in
    (0, 1) (400: the fine-tuning guard needs validation images, and -1, "the bundle's own validation list", has no
    datalist in an app); no labelled images (422); a ``val_split`` that leaves no training or no validation image of
    the ``n_labelled`` (422; split as MONAI Label splits, :func:`monai.data.partition_dataset`).

    Args:
        request: the request's options (the user's JSON body and ``model``).
        options: the trainer's options (``BundleTrainTask.config()``).
        n_labelled: the number of images with a final label in the datastore.
        check_keys: check for unknown keys (off in the training subprocess, whose request also holds the app's config).
    """
    import difflib

    if check_keys:
        known = set(options) | set(TRAIN_REQUEST_EXTRA_KEYS)
        unknown = sorted(k for k in request if k not in known)
        if unknown:
            hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else repr(k) for k in unknown]
            return 400, f"/train: unknown option(s) {', '.join(hints)}; this trainer takes {sorted(known - {'bundle_path'})}"
    epochs = request.get("max_epochs", 50)
    try:
        whole = not isinstance(epochs, bool) and float(epochs).is_integer() and float(epochs) >= 1
    except (TypeError, ValueError):
        whole = False
    if not whole:
        return 400, f"/train: max_epochs must be a whole number >= 1, got {epochs!r} (0 epochs would train nothing)"
    split = request.get("val_split", 0.2)
    try:
        split = float(split)
    except (TypeError, ValueError):
        return 400, f"/train: val_split must be a number in (0, 1), got {request.get('val_split')!r}"
    if not 0.0 < split < 1.0:
        return 400, (f"/train: val_split must be in (0, 1), got {request.get('val_split')!r}: fine-tuning keeps the new weights only if they "
                     "score higher than the served model.pt on the validation images, so it needs some (MONAI Label's default is 0.2)")
    if n_labelled == 0:
        return 422, ("/train: no labelled images: the datastore (the --studies folder) has no image with a final label, so there is "
                     "nothing to train on. Save labels first (e.g. from 3D Slicer or OHIF, or masks in <studies>/labels/final)")
    from monai.data import partition_dataset

    train, val = partition_dataset(list(range(n_labelled)), ratios=[1 - split, split], shuffle=False)
    if not train or not val:
        return 422, (f"/train: val_split {split:g} of {n_labelled} labelled image(s) leaves {len(train)} for training and {len(val)} for "
                     "validation; fine-tuning needs at least one of each (label more images, or change val_split)")
    return None


def _train_problem(app, request: dict, check_keys: bool) -> tuple[int, str] | None:
    """:func:`train_request_problem` for ``request`` on ``app`` (its trainer's options and its datastore)."""
    task = getattr(app, "_trainers", {}).get(request.get("model"))
    if task is None or not hasattr(task, "config"):
        return None
    datastore = app.datastore()
    if hasattr(datastore, "refresh"):  # the files on disk, now: with auto-reload the watcher catches up only later
        datastore.refresh()
    labelled = [d for d in datastore.datalist() if d]
    return train_request_problem(request, task.config(), len(labelled), check_keys=check_keys)


def _require_known(kind: str, name, known: dict, endpoint: str) -> None:
    """404 (fastapi.HTTPException) when ``name`` is given and is not one of ``known``."""
    if name and name not in known:
        from fastapi import HTTPException

        raise HTTPException(status_code=404, detail=f"{endpoint}: no {kind} model {name!r} on this server; it has {sorted(known)} (GET /info/ lists them)"
                            if kind != "scoring" else f"{endpoint}: no scoring method {name!r} on this server; it has {sorted(known)}")


def _check_requests_before_queueing() -> None:
    """Wrap MONAI Label's ``AsyncTask.run`` (what ``/train``, ``/batch/infer`` and ``/scoring`` call in the server
    process before queueing the task) so that an unknown model or method is a 404 at once. Idempotent; does nothing
    outside a MONAI Label installation."""
    try:
        from monailabel.interfaces.utils.app import app_instance
        from monailabel.utils.async_tasks.task import AsyncTask
    except ImportError:
        return
    original = AsyncTask.run
    if getattr(original, "_mcdrl_checked", False):
        return

    def run(method, request=None, params=None, force_sync=False, enqueue=False):
        app = app_instance()
        request = request or {}
        if method == "train":
            _require_known("trainable", request.get("model"), getattr(app, "_trainers", {}), "/train")
            problem = _train_problem(app, {**request, **(params or {})}, check_keys=True)
            if problem is not None:
                from fastapi import HTTPException

                logger.warning("/train refused (HTTP %d): %s", *problem)
                raise HTTPException(status_code=problem[0], detail=problem[1])
        elif method == "batch_infer":
            _require_known("infer", request.get("model"), getattr(app, "_infers", {}), "/batch/infer")
        elif method == "scoring":
            _require_known("scoring", request.get("method"), getattr(app, "_scoring_methods", {}), "/scoring")
        return original(method, request=request, params=params, force_sync=force_sync, enqueue=enqueue)

    run._mcdrl_checked = True  # type: ignore[attr-defined]
    AsyncTask.run = staticmethod(run)


#: LocalDatastore methods that read or change its index: with one lock around them, the auto-reload watcher's refresh
#: and a request's (the /train check above, a DELETE or PUT of a label) take turns
_DATASTORE_INDEX_METHODS = ("_reconcile_datastore", "datalist", "save_label", "remove_label", "add_image", "remove_image")


def _serialise_local_datastore() -> None:
    """Make MONAI Label's ``LocalDatastore`` safe against its own file watcher.

    With auto-reload (MONAI Label's default) a watchdog thread re-reads the studies folder after every file event,
    iterating the index while a request thread changes it. MONAI Label 0.8.5 has no lock there: when a request refreshed
    at the same moment, one of them failed with "dictionary changed size during iteration". In the request thread that
    was an HTTP 500; in the watcher thread it ended the thread, and the server stopped noticing files written to the
    studies folder. This wraps the methods of :data:`_DATASTORE_INDEX_METHODS` in one re-entrant lock. Idempotent;
    does nothing outside a MONAI Label installation.
    """
    try:
        from monailabel.datastore.local import LocalDatastore
    except ImportError:
        return
    if getattr(LocalDatastore, "_mcdrl_serialised", False):
        return
    import functools
    import threading

    lock = threading.RLock()

    def locked(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            with lock:
                return method(self, *args, **kwargs)

        return call

    for name in _DATASTORE_INDEX_METHODS:
        setattr(LocalDatastore, name, locked(getattr(LocalDatastore, name)))
    LocalDatastore._mcdrl_serialised = True


if __name__ == "__main__":
    sys.exit(main())
