"""Loading a bare ``state_dict`` into a network built from a config, with a one-line error when they do not fit.

``load_state_dict(strict=True)`` lists every missing, unexpected and mis-shaped tensor (69 lines and a traceback for
``--intervention_layers 2`` against weights with 3 layers). :func:`load_fitting_weights` names the config key instead,
with both values and the file: ``model.pt: the weights do not fit the config: intervention_layers is 2 in the config,
3 in the weights``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import torch

from mcdrl.errors import ConfigError

__all__ = ["load_fitting_weights", "weights_mismatch"]


def _count(prefix: str) -> Callable[[Mapping[str, torch.Tensor]], int]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    return lambda state: len({m.group(1) for k in state if (m := pattern.match(k))})


def _out_channels(prefix: str, suffix: str) -> Callable[[Mapping[str, torch.Tensor]], list[int]]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(suffix)}$")

    def read(state):
        found = sorted((int(m.group(1)), int(v.shape[0])) for k, v in state.items() if (m := pattern.match(k)) and v.dim() > 0)
        return [c for _, c in found]

    return read


def _dim(key: str, axis: int) -> Callable[[Mapping[str, torch.Tensor]], int | None]:
    return lambda state: int(state[key].shape[axis]) if key in state and state[key].dim() > axis else None


def _unet_channels(state) -> list[int]:
    """The UNet head's widths: its encoder levels', then its bottleneck's ([] for the other head)."""
    bottom = state.get("head.bottleneck.conv.unit0.conv.weight")
    levels = _out_channels("head.pixel_encoder.", ".conv.unit0.conv.weight")(state)
    return levels + [int(bottom.shape[0])] if bottom is not None else []


def _backbone(state) -> tuple[int, ...]:
    return tuple(sorted(tuple(v.shape) for k, v in state.items() if k.startswith("backbone.")))


#: config key -> what it decides in the state_dict, in the order a mismatch is named (the first that differs wins).
STRUCTURAL_KEYS: dict[str, Callable[[Mapping[str, torch.Tensor]], object]] = {
    "embed_dim (from clip_model)": _dim("dictionary.confounders", 1),
    "num_confounders": _dim("dictionary.confounders", 0),
    "lesion_classes (count)": _dim("dictionary.class_embeddings", 0),
    "intervention_layers": _count("intervention.layers."),
    "the head (network_def#head, configs/unet_head.json)": lambda state: ("UNetHead" if any(k.startswith("head.bottleneck.") for k in state)
                                                                          else "SegmentationHead"),
    "unet_channels": _unet_channels,
    "decoder_channels": _out_channels("head.stages.", ".conv.weight"),
    "decoder_skip_channels": lambda state: (_out_channels("head.pixel_encoder.levels.", ".0.weight")(state)
                                            or _out_channels("head.pixel_encoder.levels.", ".conv.unit0.conv.weight")(state)),
    "decoder_skip_block": lambda state: (("residual" if any(".residual." in k for k in state if k.startswith("head.pixel_encoder."))
                                          else "conv") if any(k.startswith("head.pixel_encoder.") for k in state) else None),
    "decoder_classifier": lambda state: "text_queries" if "head.classifier.controller.weight" in state else "conv",
    "decoder_query_hidden": _dim("head.classifier.reduce.2.weight", 0),
}


def weights_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    """What makes ``found`` (a checkpoint) not fit ``expected`` (the network's ``state_dict()``), in one clause; None if
    every key and shape agrees.

    The config key is named when one of :data:`STRUCTURAL_KEYS` differs (``intervention_layers is 2 in the config, 3 in
    the weights``); a different CLIP backbone is named as ``clip_model``; anything else names the first differing
    tensor and the counts.
    """
    shapes_e = {k: tuple(v.shape) for k, v in expected.items()}
    shapes_f = {k: tuple(getattr(v, "shape", ())) for k, v in found.items()}
    if shapes_e == shapes_f:
        return None
    for key, read in STRUCTURAL_KEYS.items():
        a, b = read(expected), read(found)
        if a != b and b not in (None, [], 0):
            return f"{key} is {a} in the config, {b} in the weights"
    if _backbone(expected) != _backbone(found):
        n_e = sum(k.startswith("backbone.") for k in expected)
        n_f = sum(k.startswith("backbone.") for k in found)
        return f"clip_model builds a different CLIP than the weights were trained with ({n_e} backbone tensors in the config, {n_f} in the weights)"
    missing = sorted(shapes_e.keys() - shapes_f.keys())
    unexpected = sorted(shapes_f.keys() - shapes_e.keys())
    shaped = sorted(k for k in shapes_e.keys() & shapes_f.keys() if shapes_e[k] != shapes_f[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) of the config missing from the weights (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) in the weights the config does not build (e.g. {unexpected[0]})")
    if shaped:
        parts.append(f"{len(shaped)} of different shape (e.g. {shaped[0]}: {list(shapes_e[shaped[0]])} in the config, "
                     f"{list(shapes_f[shaped[0]])} in the weights)")
    return "; ".join(parts)


def load_fitting_weights(network: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> torch.nn.Module:
    """``network.load_state_dict(state, strict=True)``, or one :class:`~mcdrl.errors.ConfigError` line naming the file,
    the config key and both values when they do not fit.

    Args:
        network: the network built from the config (wrapped in DDP or not).
        state: the checkpoint's ``state_dict`` (name -> tensor).
        path: the checkpoint file, named in the error.

    Raises:
        ConfigError: e.g. ``"<path>: the weights do not fit the config: intervention_layers is 2 in the config, 3 in
            the weights; build the network the way the weights were trained, or use weights trained with this config"``.
    """
    net = getattr(network, "module", network)
    problem = weights_mismatch(net.state_dict(), state)
    if problem is not None:
        raise ConfigError(f"{path}: the weights do not fit the config: {problem}; build the network the way the weights were "
                          "trained, or use weights trained with this config")
    net.load_state_dict(state, strict=True)
    return network
