#!/usr/bin/env python3
"""MONAI Label support: a separate virtual environment, and a monaibundle app that serves our bundle.

    python3 scripts/monailabel_setup.py env                 # make monailabel-env
    python3 scripts/monailabel_setup.py app [--output DIR]  # make monailabel-app (builds the env first if needed)

``env`` builds ``.venv-monailabel`` with monailabel 0.8.5 and its pins (pydicom<3, numpy 1.26), then installs our
package with ``--no-deps`` (so it cannot pull pydicom 3, numpy 2 or highdicom), runs ``pip check`` and checks that
every ``mcdrl`` module imports there without highdicom. Idempotent: a stamp file records the pins (and this
checkout) of a finished build.

pip resolves the CUDA build of torch 2.14.1 with its NVIDIA wheels (about 5.5 GB; it runs on the CPU as well). When
the project venv already holds exactly that torch and torchvision (``make install``), their files are hard-linked
into the MONAI Label venv instead of installed a second time (see :func:`share_torch`): no extra disk, and pip then
finds them installed. A disk that cannot hard-link (another filesystem) falls back to a plain install.

``app`` copies the monaibundle sample app out of the installed wheel (offline), places the bundle as
``<app>/model/<name>`` (the name must contain "segmentation": MONAI Label infers the task type from it), and prints
the exact ``start_server`` command (127.0.0.1, offline switches ``zoo_source ngc`` and ``sam2 false``). Two
adaptations for MONAI Label, both in the app's copies only: the app class gets
:class:`mcdrl.deploy.monailabel.ClientFriendlyApp` (failed requests answer an HTTP error with a message; /train
requests may omit the bundle's options, an unknown model is a 404 on every endpoint, a corrupt image a 422 that says
so), and the copied train.json starts every /train as a new fine-tuning run (see :func:`adapt_train_config`). The
app then runs every /train with ``configs/monailabel_finetune.json`` merged over train.json: Dice + CE, a fine-tuning
learning rate, and a guard that replaces ``models/model.pt`` only with an epoch that beats it on the validation
split, keeping the replaced weights in ``models/previous/``
(``python -m mcdrl.deploy.monailabel restore <app>/model/<name>`` swaps them back).

Standard library only, so it runs with any Python 3.10+ before any venv exists. Environment variables:
``MONAILABEL_VENV`` (default ``<repo>/.venv-monailabel``); ``MONAILABEL_SHARE_TORCH_FROM`` (the venv to take torch
from; default: the venv running this script, else ``<repo>/.venv``; ``none`` turns sharing off).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel"))
DEFAULT_OUTPUT = REPO / "build" / "monailabel"
DEFAULT_MODEL = "mcdrl_segmentation"

#: The pinned set (../shared/design/environment.md). torch and torchvision are a matched pair and are installed in
#: the same pip call as open_clip, so that pip cannot swap torch. monailabel 0.8.5 crashes with pydicom 3.
PINS = [
    "torch==2.14.1", "torchvision==0.29.1", "monai==1.6.1", "pydicom<3", "pynetdicom<3", "dicomweb-client<0.60",
    "itk", "monailabel==0.8.5", "open_clip_torch==3.3.0", "safetensors",
]
STAMP_NAME = ".mcdrl-monailabel-ready"

#: What must hold inside the venv: our package imports (pydicom 2, numpy 1) and pulls in no highdicom.
IMPORT_CHECK = r"""
import pkgutil, sys
import monai, monailabel, numpy, pydicom, torch
import mcdrl
names = [m.name for m in pkgutil.walk_packages(mcdrl.__path__, "mcdrl.") if not m.name.endswith("__main__")]
for name in names:
    __import__(name)
assert numpy.__version__.startswith("1."), "numpy " + numpy.__version__
assert pydicom.__version__.startswith("2."), "pydicom " + pydicom.__version__
assert "highdicom" not in sys.modules, "mcdrl imported highdicom at import time"
print(f"monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}, pydicom {pydicom.__version__}: all {len(names)} mcdrl modules import, highdicom not loaded")
"""

#: Files of the bundle folder that never go into the app (run outputs, MONAI Label's own multi-GPU config).
COPY_IGNORE = ("runs", "eval", "__pycache__", "*.pyc", "monailabel_train.json", ".ipynb_checkpoints")


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


ml_python = venv_python


def _run(cmd: list, **kw) -> None:
    shown = [c if i == 0 or str(cmd[i - 1]) != "-c" else "<import check>" for i, c in enumerate(cmd)]
    print("+", " ".join(shlex.quote(str(c)) for c in shown), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def _stamp_lines() -> list[str]:
    return [*PINS, f"mcdrl-editable={REPO}"]


def env_ready(venv: Path = DEFAULT_VENV) -> bool:
    """True when a finished build with the current pins, with mcdrl installed from this checkout, is at ``venv``."""
    stamp = Path(venv) / STAMP_NAME
    return venv_python(Path(venv)).exists() and stamp.is_file() and stamp.read_text().split("\n")[:-1] == _stamp_lines()


def _pip(cmd: list, env: dict) -> None:
    """Run pip, dropping its 'WARNING: Location ... is ignored' lines about local indexes that lack a package."""
    print("+", " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    proc = subprocess.run([str(c) for c in cmd], env=env, stderr=subprocess.PIPE, text=True)
    err = "".join(line for line in proc.stderr.splitlines(keepends=True) if not line.startswith("WARNING: Location"))
    sys.stderr.write(err)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, stderr=err)


#: The distributions that make up torch's CUDA build: torch and torchvision at the pinned versions, and every
#: distribution whose name starts with one of these prefixes (triton, the NVIDIA libraries).
SHARED_PINS = {"torch": "2.14.1", "torchvision": "0.29.1"}
SHARED_PREFIXES = ("triton", "nvidia-", "nvidia_", "cuda-", "cuda_")

#: Run by the donor venv's python: its site-packages and the files of the shared distributions (JSON on stdout).
_LIST_SHARED = r"""
import json, os, sys, sysconfig
from importlib import metadata
site = os.path.realpath(sysconfig.get_paths()["purelib"])
pins, prefixes = json.loads(sys.argv[1]), tuple(json.loads(sys.argv[2]))
dists = []
for d in metadata.distributions(path=[site]):
    name = (d.metadata["Name"] or "").lower()
    if name in pins or name.startswith(prefixes):
        paths = (os.path.realpath(os.path.join(site, f)) for f in d.files or [])
        files = [os.path.relpath(p, site) for p in paths if p.startswith(site + os.sep)]  # not ../../bin scripts
        scripts = [(e.name, e.value) for e in d.entry_points if e.group == "console_scripts"]
        dists.append({"name": name, "version": d.version, "files": files, "scripts": scripts})
print(json.dumps({"python": sys.version_info[:2], "site": site, "dists": dists}))
"""

_SCRIPT = """#!{python}
import re
import sys
from {module} import {attr}
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit({func}())
"""


def _donor_venv() -> Path | None:
    """The venv to share torch from: ``MONAILABEL_SHARE_TORCH_FROM``, else the running venv, else ``<repo>/.venv``."""
    chosen = os.environ.get("MONAILABEL_SHARE_TORCH_FROM")
    if chosen:
        return None if chosen.lower() == "none" else Path(chosen)
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix)
    return REPO / ".venv" if (REPO / ".venv").is_dir() else None


def _python_and_site(python: Path) -> tuple[list[int], Path]:
    """``python``'s (major, minor) version and its site-packages folder."""
    out = subprocess.run([str(python), "-c", "import json, sys, sysconfig; print(json.dumps([sys.version_info[:2], sysconfig.get_paths()['purelib']]))"],
                         check=True, capture_output=True, text=True).stdout
    version, site = json.loads(out)
    return version, Path(os.path.realpath(site))


def share_torch(venv: Path, donor: Path | None) -> int:
    """Hard-link the pinned torch, torchvision, triton and NVIDIA distributions of ``donor`` into ``venv``.

    Each distribution's files (its RECORD) are linked into ``venv``'s site-packages, its ``*.dist-info`` last, so
    that pip counts it as installed only once it is whole; its console scripts (``torchrun``) are written anew
    with ``venv``'s python. Nothing is shared unless the donor holds exactly the pinned torch and torchvision for the
    same Python version. Hard links share the bytes, not the names: pip in either venv replaces files by unlinking,
    so installing or removing a package in one venv never changes the other.

    Returns:
        The number of bytes shared (0 when nothing was shared, with the reason printed).
    """
    py = venv_python(venv)
    if donor is None or not venv_python(donor).exists():
        print(f"torch sharing: no project venv found ({donor}); pip installs torch", flush=True)
        return 0
    listing = subprocess.run([str(venv_python(donor)), "-c", _LIST_SHARED, json.dumps(SHARED_PINS), json.dumps(SHARED_PREFIXES)],
                             capture_output=True, text=True)
    if listing.returncode:
        print(f"torch sharing: could not list {donor}'s packages ({listing.stderr.strip()[-300:]}); pip installs torch", flush=True)
        return 0
    info = json.loads(listing.stdout)
    found = {d["name"]: d["version"] for d in info["dists"]}
    target_version, dst_site = _python_and_site(py)
    if any(found.get(n) != v for n, v in SHARED_PINS.items()) or target_version != info["python"]:
        print(f"torch sharing: {donor} holds {found.get('torch')}/{found.get('torchvision')} for Python {info['python']}, "
              f"not the pinned {SHARED_PINS} for {target_version}; pip installs torch", flush=True)
        return 0
    src_site = Path(info["site"])
    shared = 0
    try:
        for dist in info["dists"]:
            files = sorted(dist["files"], key=lambda f: ".dist-info" in Path(f).parts[0])  # dist-info last
            for rel in files:
                src, dst = src_site / rel, dst_site / rel
                if not src.is_file() or dst.exists():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
                shared += src.stat().st_size
            for name, value in dist["scripts"]:
                module, _, attr = value.partition(":")
                script = venv / "bin" / name
                script.write_text(_SCRIPT.format(python=py, module=module, attr=attr.split(".")[0], func=attr))
                script.chmod(0o755)
    except OSError as ex:  # another filesystem (EXDEV), or links not allowed: pip installs what is missing
        for info_dir in {Path(f).parts[0] for f in dist["files"] if Path(f).parts[0].endswith(".dist-info")}:
            shutil.rmtree(dst_site / info_dir, ignore_errors=True)  # never leave a half-linked distribution "installed"
        print(f"torch sharing: hard links from {src_site} failed ({ex}); pip installs torch", flush=True)
        return shared
    print(f"torch sharing: {len(info['dists'])} distributions ({shared / 2**30:.1f} GiB) hard-linked from {src_site}", flush=True)
    return shared


def build_env(venv: Path = DEFAULT_VENV, force: bool = False) -> Path:
    """Create (or complete) the MONAI Label venv; returns its python.

    With the project venv's torch shared (:func:`share_torch`), measured on the 2-core build machine: 3.5 min and
    3.0 GB beyond the project venv (without sharing: about 9 min and 8 GB).
    """
    venv = Path(venv)
    if env_ready(venv) and not force:
        print(f"monailabel env ready: {venv}")
        return venv_python(venv)
    (venv / STAMP_NAME).unlink(missing_ok=True)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1"}
    if not venv_python(venv).exists():
        _run([sys.executable, "-m", "venv", venv])
    py = venv_python(venv)
    share_torch(venv, _donor_venv())
    _pip([py, "-m", "pip", "install", "--quiet", *PINS], env=env)
    # Our package last and without dependencies: its own requirements (pydicom 3, highdicom) must not come in.
    _pip([py, "-m", "pip", "install", "--quiet", "--no-deps", "-e", REPO], env=env)
    _run([py, "-m", "pip", "check"], env=env)
    _run([py, "-c", IMPORT_CHECK], env=env, cwd=tempfile.gettempdir())
    tmp = venv / (STAMP_NAME + ".tmp")
    tmp.write_text("\n".join(_stamp_lines()) + "\n")
    os.replace(tmp, venv / STAMP_NAME)
    print(f"monailabel env ready: {venv}")
    return py


def start_command(python: Path, app: Path, studies: str | Path, model: str, port: int = 8000) -> list[str]:
    """The exact offline ``start_server`` command line for ``app`` serving ``model``."""
    return [
        str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
        "--conf", "models", model, "--conf", "zoo_source", "ngc", "--conf", "sam2", "false",
        "--host", "127.0.0.1", "--port", str(port),
    ]


def place_bundle(bundle: Path, app: Path, model: str = DEFAULT_MODEL) -> Path:
    """Copy ``bundle`` to ``<app>/model/<model>`` (replacing an older copy via a temporary folder); returns it.

    Raises:
        ValueError: ``model`` lacks "segmentation", or the bundle has no configs/inference.json or metadata.json.
    """
    bundle, app = Path(bundle).resolve(), Path(app)
    if "segmentation" not in model:
        raise ValueError(f"bundle folder name {model!r} must contain 'segmentation' (MONAI Label infers the task from it)")
    for f in ("configs/inference.json", "configs/metadata.json", "configs/train.json"):
        if not (bundle / f).is_file():
            raise ValueError(f"{bundle} is not a bundle folder: {f} is missing")
    dest = app / "model" / model
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle, tmp, ignore=shutil.ignore_patterns(*COPY_IGNORE))
    for change in adapt_train_config(tmp / "configs" / "train.json"):
        print(f"{dest.name}/configs/train.json: {change}")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def adapt_train_config(path: Path) -> list[str]:
    """Make the app's copy of train.json fit MONAI Label, where every /train is a new fine-tuning run of models/model.pt.

    * ``resume``: false. With ``"auto"`` a second /train would resume the first run's finished checkpoint and train
      nothing (or fail when it asks for fewer epochs than were done), leaving model.pt unchanged.
    * ``displayable_configs#causal_start_epoch``: 0, so that fine-tuning a trained model keeps the causal
      intervention on from the first epoch (the paper's 10 warm-up epochs are for training from scratch); it stays
      an option in the training panel.

    The shipped bundle keeps its defaults for the command line. Returns what was changed.
    """
    config = json.loads(path.read_text())
    changes = []
    if "resume" in config and config["resume"] is not False:
        changes.append(f"resume {config['resume']!r} -> false (each MONAI Label /train is a new run)")
        config["resume"] = False
    display = config.get("displayable_configs", {})
    if display.get("causal_start_epoch", 0) != 0:
        changes.append(f"displayable_configs#causal_start_epoch {display['causal_start_epoch']} -> 0 (fine-tuning)")
        display["causal_start_epoch"] = 0
    if changes:
        path.write_text(json.dumps(config, indent=4) + "\n")
    return changes


def bundle_warnings(dest: Path) -> list[str]:
    """What would make MONAI Label skip or misuse the placed bundle."""
    out = []
    pts = sorted(p.name for p in (dest / "models").glob("*.pt"))
    if "model.pt" not in pts:
        out.append(f"{dest}/models/model.pt is missing: MONAI Label skips a bundle without weights (train the bundle, or copy model.pt there)")
    if len(pts) > 1:
        out.append(f"{dest}/models holds several .pt files {pts}: MONAI Label lists each as a model choice; keep only model.pt")
    if not (dest / "models" / "confounder_dictionary.safetensors").is_file():
        out.append(f"{dest}/models/confounder_dictionary.safetensors is missing: run the dictionary workflow first")
    clip = json.loads((dest / "configs" / "train.json").read_text()).get("clip_weights")
    marker = "@bundle_root + '"
    if isinstance(clip, str) and marker in clip:
        rel = clip.split(marker, 1)[1].split("'")[0].lstrip("/")
        if not (dest / rel).is_file():
            out.append(f"{dest}/{rel} is missing: /train builds the network with these CLIP weights (inference does not need them)")
    return out


APP_CLASS = "class MyApp(MONAILabelApp):"
PATCHED_APP_CLASS = "class MyApp(ClientFriendlyApp, MONAILabelApp):"
PATCH_IMPORT = "from mcdrl.deploy.monailabel import ClientFriendlyApp  # added by scripts/monailabel_setup.py\n"


def patch_app(app: Path) -> None:
    """Mix :class:`mcdrl.deploy.monailabel.ClientFriendlyApp` into the sample app's class: a failed /infer answers
    an HTTP error that says why (MONAI Label 0.8.5 alone answers a bare 500), and a /train request without the
    bundle's displayable options gets their defaults (instead of a KeyError). Idempotent.

    Raises:
        ValueError: the app's main.py is not the monaibundle app of monailabel 0.8.5 (the class line is missing).
    """
    main = Path(app) / "main.py"
    text = main.read_text()
    if PATCHED_APP_CLASS in text:
        return
    if text.count(APP_CLASS) != 1:
        raise ValueError(f"{main}: expected one line {APP_CLASS!r} (the monaibundle app of monailabel 0.8.5)")
    text = text.replace(APP_CLASS, PATCHED_APP_CLASS).replace("\nlogger = logging.getLogger(__name__)\n", "\n" + PATCH_IMPORT + "\nlogger = logging.getLogger(__name__)\n", 1)
    if PATCH_IMPORT not in text:
        raise ValueError(f"{main}: could not place the import of ClientFriendlyApp")
    tmp = main.with_suffix(".py.tmp")
    tmp.write_text(text)
    os.replace(tmp, main)


def make_app(output: Path = DEFAULT_OUTPUT, bundle: Path = REPO / "bundle", model: str = DEFAULT_MODEL,
             venv: Path = DEFAULT_VENV, studies: str = "<studies folder>", port: int = 8000) -> tuple[Path, list[str]]:
    """Fetch the monaibundle app (offline, from the installed wheel) into ``output`` and place the bundle in it.

    Returns:
        (the app folder ``<output>/monaibundle``, the start_server command).
    """
    py = build_env(venv)
    output = Path(output).resolve()
    app = output / "monaibundle"
    if not (app / "main.py").is_file():
        _run([py, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle", "--output", output])
    patch_app(app)
    dest = place_bundle(bundle, app, model)
    for w in bundle_warnings(dest):
        print("WARNING:", w, file=sys.stderr)
    return app, start_command(py, app, studies, model, port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the MONAI Label virtual environment")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="build the MONAI Label venv (idempotent)")
    e.add_argument("--force", action="store_true", help="reinstall even if the venv is ready")
    a = sub.add_parser("app", help="build the monaibundle app holding our bundle; prints the start command")
    a.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the app goes to OUTPUT/monaibundle")
    a.add_argument("--bundle", type=Path, default=REPO / "bundle")
    a.add_argument("--name", default=DEFAULT_MODEL, help="bundle folder name under <app>/model (must contain 'segmentation')")
    a.add_argument("--studies", default="<studies folder>", help="the images folder to print in the command")
    a.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "env":
            build_env(args.venv, force=args.force)
        else:
            app, cmd = make_app(args.output, args.bundle, args.name, args.venv, args.studies, args.port)
            print(f"monaibundle app: {app}\nbundle: {app / 'model' / args.name}\nstart the server with:")
            print("  HF_HUB_OFFLINE=1 " + " ".join(shlex.quote(c) for c in cmd))
            print("weights a /train replaced are kept in models/previous/; put them back with:")
            print(f"  {shlex.quote(str(ml_python(args.venv)))} -m mcdrl.deploy.monailabel restore {shlex.quote(str(app / 'model' / args.name))}")
    except (ValueError, subprocess.CalledProcessError) as ex:
        print(f"error: {ex}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
