"""What a training run is, beyond its weights: the network's fingerprint and the RNG states of every source of randomness.

Used by :mod:`mcdrl.engines.checkpointing` (resume) and :mod:`mcdrl.engines.distributed` (replica checks). Everything here returns
tensors and plain Python values, so checkpoints holding them load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random

import numpy as np
import torch

from .handlers import unwrap

__all__ = ["capture_rng_state", "compare_fingerprints", "fingerprint_digest", "network_fingerprint", "random_states_of", "restore_rng_state", "state_dict_digest"]

logger = logging.getLogger("mcdrl.engines.checkpointing")
#: module attributes that change during training or name files, so they are not part of the network configuration
_VOLATILE = {"training", "intervention_active"}
_SCALARS = (bool, int, float, str)


# ---- network fingerprint ------------------------------------------------------------------------------------------
def network_fingerprint(network: torch.nn.Module) -> dict:
    """What identifies a network configuration: ``{"params": {key: [shape, dtype]}, "config": {module: {...}}}``.

    ``config`` holds, per submodule, its class name and its public scalar (or list-of-scalar) attributes, e.g.
    ``heads``, ``alpha``, ``readout``, ``in_features``; runtime switches and file paths/hashes are left out.
    DDP / DataParallel wrappers are unwrapped.
    """
    net = unwrap(network)
    params = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in net.state_dict().items()}
    config: dict[str, dict] = {}
    for name, module in net.named_modules():
        attrs: dict = {"class": type(module).__name__}
        for k, v in vars(module).items():
            if k.startswith("_") or k in _VOLATILE or "path" in k or "sha" in k:
                continue
            if isinstance(v, _SCALARS):
                attrs[k] = v
            elif isinstance(v, (list, tuple)) and all(isinstance(x, _SCALARS) for x in v):
                attrs[k] = list(v)
        config[name or "<network>"] = attrs
    return {"params": params, "config": config}


def fingerprint_digest(obj) -> str:
    """sha256 of a fingerprint's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def compare_fingerprints(saved: dict, current: dict, limit: int = 8) -> list[str]:
    """Human-readable differences between two :func:`network_fingerprint` results (empty if they match)."""
    diffs: list[str] = []
    sp, cp = saved.get("params", {}), current.get("params", {})
    only_saved = [k for k in sp if k not in cp]
    only_current = [k for k in cp if k not in sp]
    if only_saved:
        diffs.append(f"weights only in the checkpoint: {only_saved[:limit]}{' ...' if len(only_saved) > limit else ''}")
    if only_current:
        diffs.append(f"weights only in this network: {only_current[:limit]}{' ...' if len(only_current) > limit else ''}")
    for k in sp:
        if k in cp and sp[k] != cp[k]:
            diffs.append(f"{k}: checkpoint shape/dtype {sp[k]}, this network {cp[k]}")
    sc, cc = saved.get("config", {}), current.get("config", {})
    for m in sc:
        if m not in cc:
            continue
        for k in sorted(set(sc[m]) | set(cc[m])):
            a, b = sc[m].get(k, "<unset>"), cc[m].get(k, "<unset>")
            if a != b:
                diffs.append(f"{m}.{k}: checkpoint {a!r}, this network {b!r}")
    for m in [m for m in sc if m not in cc][:limit]:
        diffs.append(f"module {m} ({sc[m].get('class')}) only in the checkpoint")
    for m in [m for m in cc if m not in sc][:limit]:
        diffs.append(f"module {m} ({cc[m].get('class')}) only in this network")
    return diffs[: 3 * limit]


def state_dict_digest(network) -> str:
    """sha256 over every tensor of a ``state_dict`` (or of an unwrapped network's): names, dtypes, shapes and bytes."""
    state = network if isinstance(network, dict) else unwrap(network).state_dict()
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # reshape: 0-dim buffers too
    return h.hexdigest()


# ---- RNG states -----------------------------------------------------------------------------------------------------
def random_states_of(*roots) -> list[np.random.RandomState]:
    """Every ``RandomState`` (``.R``) of MONAI/mcdrl transforms reachable from ``roots`` (datasets, Compose), in a
    fixed order. MONAI random transforms draw from these, and with ``num_workers=0`` they carry over between epochs."""
    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def walk(obj, depth: int = 0) -> None:
        if id(obj) in seen or depth > 12:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for x in obj:
                walk(x, depth + 1)
            return
        mod = type(obj).__module__ or ""
        if not (mod.startswith(("monai.", "mcdrl.")) and hasattr(obj, "__dict__")):
            return
        r = getattr(obj, "R", None)
        if isinstance(r, np.random.RandomState) and id(r) not in seen:
            seen.add(id(r))
            found.append(r)
        for k, v in vars(obj).items():
            if k in ("data", "R") or k.startswith("__"):
                continue
            walk(v, depth + 1)

    for root in roots:
        walk(getattr(root, "transform", root))
    return found


def _np_state(state) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _np_state_back(d: dict):
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def capture_rng_state(random_states: list[np.random.RandomState] = ()) -> dict:
    """This process's RNG states as tensors and plain values (``weights_only``-loadable)."""
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state(np.random.get_state()),
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "transforms": [_np_state(r.get_state()) for r in random_states],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, random_states: list[np.random.RandomState] = ()) -> None:
    """Inverse of :func:`capture_rng_state`. A changed transform chain restores the global RNGs only (with a warning)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_np_state_back(state["numpy"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if len(state["transforms"]) != len(random_states):
        logger.warning("the train transforms hold %d random states, the checkpoint %d: transform RNGs not restored, so "
                       "augmentations after the resume differ from an uninterrupted run", len(random_states), len(state["transforms"]))
        return
    for r, s in zip(random_states, state["transforms"]):
        r.set_state(_np_state_back(s))
