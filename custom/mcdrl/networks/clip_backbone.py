"""CLIP backbone: one way to build an open_clip model from a name plus a local weights path.

Everything that needs CLIP (stage 1, training, inference, the pretraining workflow, the benchmarks)
builds it through :func:`create_clip`, as open_clip's own ``factory.py`` does for its models. The
visual encoder is wrapped by :class:`CLIPVisualBackbone`, which reads out *dense* features in the joint
image-text space, following the projection rules of ``shared/design/mcdrl.md``:

* ViT, ``readout="proj"``: every patch token through ``ln_post`` and ``proj``.
* ViT, ``readout="maskclip"`` (default): the MaskCLIP value path. The last block's attention is replaced
  by its value and output projections (no q·k attention, no residual, no MLP), then ``ln_post`` and
  ``proj``. It localises better than the plain projection.
* ResNet (``ModifiedResNet``): ``attnpool``'s ``v_proj`` and ``c_proj`` applied at every position.

No code here ever reaches a model hub: hub names and pretrained tags are refused with a message that says
how to pass a local weights file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from mcdrl.errors import ConfigError, InputFileError

__all__ = ["MODEL_CONFIG_DIR", "CLIPVisualBackbone", "clip_embed_dim", "clip_image_size", "create_clip", "resolve_weights", "weights_sha256"]

#: Our own open_clip configs (the demo CLIP and the tiny test CLIPs). Registered on import.
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

logger = logging.getLogger(__name__)

_WEIGHT_FILE_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin")
_HOW_TO = (
    "This bundle never downloads weights. Download them on a connected machine and pass the local file, e.g. "
    "clip_model='ViT-B-16' clip_weights='/data/weights/ViT-B-16-openai.bin' (a .bin/.pt/.safetensors file or a "
    "folder holding open_clip_model.safetensors)."
)


def _check_model_name(model_name: str) -> None:
    if model_name.startswith(("hf-hub:", "hf_hub:")):
        raise ConfigError(f"CLIP model name {model_name!r} points at the Hugging Face hub. {_HOW_TO}")
    if model_name.startswith("local-dir:"):
        return
    if model_name not in open_clip.list_models():
        raise ConfigError(
            f"Unknown CLIP model name {model_name!r}. Use an open_clip config name such as 'ViT-B-16', 'ViT-L-14', "
            f"'RN50' or our 'mcdrl-demo-vit' (python -c 'import open_clip; print(open_clip.list_models())' lists them)."
        )


def resolve_weights(weights_path: str | os.PathLike | None) -> Path | None:
    """Return the weights file named by ``weights_path`` (a file, or a folder holding one), or None.

    Raises:
        ValueError: a pretrained tag such as ``'openai'`` or a URL was given instead of a path.
        FileNotFoundError: the path does not exist, or the folder holds no known weights file.
    """
    if weights_path is None or str(weights_path) == "":
        return None
    text = str(weights_path)
    if "://" in text or text.startswith("hf-hub:") or (os.sep not in text and "." not in text and not Path(text).exists()):
        raise ConfigError(f"clip_weights={text!r} is not a local path (a pretrained tag or URL?). {_HOW_TO}")
    path = Path(text).expanduser()
    if not path.exists():
        raise InputFileError(f"CLIP weights file not found: {path}. {_HOW_TO}")
    if path.is_dir():
        for name in _WEIGHT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise InputFileError(f"CLIP weights folder {path} holds none of {list(_WEIGHT_FILE_NAMES)}. {_HOW_TO}")
    return path


def weights_sha256(path: str | os.PathLike | None) -> str:
    """sha256 of a weights file, or ``"none"`` for randomly initialised weights."""
    if path is None:
        return "none"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _DropRandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... Model initialized randomly." (logged on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and "No pretrained weights loaded" in str(record.msg))


@contextlib.contextmanager
def _no_random_init_warning(active: bool):
    """Without a weights file the CLIP is built to receive a state_dict (``models/model.pt``, a checkpoint), which
    every caller loads right after, or raises without (``mcdrl.io.load_weights``). open_clip's warning that the model
    is "initialized randomly" would then be false, and alarms users at every inference run and server start."""
    if not active:
        yield
        return
    root, drop = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
    logger.debug("CLIP built without a weights file (clip_weights null): its weights come from the network's state_dict")


def create_clip(model_name: str, weights_path: str | os.PathLike | None = None) -> nn.Module:
    """Build an open_clip CLIP model by config name, with weights from a local file or folder.

    Args:
        model_name: an open_clip config name (``"ViT-B-16"``, ``"RN50"``, ``"mcdrl-demo-vit"``, ...).
        weights_path: a local ``.bin``/``.pt``/``.safetensors`` file (a training checkpoint's ``module.``
            prefix is stripped by open_clip), a folder holding ``open_clip_model.safetensors``, or None for
            random initialisation (tests, or when the weights come from a later state_dict load).

    Returns:
        The full open_clip model (visual and text towers), in eval mode, fp32.

    Example:
        >>> model = create_clip("mcdrl-tiny-vit", None)
    """
    _check_model_name(model_name)
    weights = resolve_weights(weights_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        with _no_random_init_warning(weights is None):
            model = open_clip.create_model(model_name, pretrained=str(weights) if weights is not None else None)
    except Exception as e:  # open_clip raises several types for a bad file; name the file in one message
        if weights is None:
            raise
        raise ConfigError(f"Could not load CLIP weights {weights} into {model_name!r} (wrong model name for this file, or a corrupt file): {e}") from e
    model.eval()
    return model


def clip_embed_dim(model_name: str) -> int:
    """The joint-space dimension ``d`` of an open_clip config (no model is built)."""
    _check_model_name(model_name)
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"No open_clip config for {model_name!r}")
    return int(cfg["embed_dim"])


class CLIPVisualBackbone(nn.Module):
    """The CLIP visual encoder with a dense read-out in the joint image-text space.

    The text tower is dropped after construction: inference never needs it (stage 1 stores the text
    embeddings). Input normalisation (CLIP mean and std) is held as buffers, so inputs are RGB in [0, 1].

    Args:
        model_name: open_clip config name.
        weights_path: local weights file or folder, or None (random init; weights then come from a state_dict).
        readout: ``"maskclip"`` (value path, default) or ``"proj"`` (plain patch projection). ResNets always use
            the attnpool v/c projections.
        clip: an already-built open_clip model to wrap instead of building one (its visual tower is shared, e.g.
            by the CLIP pretraining, which trains through this read-out).

    Shapes:
        input ``x``: (B, 3, S, S) with S = ``image_size``, values in [0, 1].
        ``forward(x)`` returns dense (B, d, h, w) and global (B, d), h = w = ``grid_size``.
    """

    def __init__(self, model_name: str, weights_path: str | os.PathLike | None = None, readout: str = "maskclip", clip: nn.Module | None = None):
        super().__init__()
        if readout not in ("maskclip", "proj"):
            raise ConfigError(f"readout must be 'maskclip' or 'proj', got {readout!r}")
        clip = clip if clip is not None else create_clip(model_name, weights_path)
        self.model_name = model_name
        self.weights_sha256 = weights_sha256(resolve_weights(weights_path))
        self.readout = readout
        self.visual = clip.visual
        self.is_vit = isinstance(self.visual, VisionTransformer)
        if not self.is_vit and not isinstance(self.visual, ModifiedResNet):
            raise ValueError(f"{model_name!r}: only ViT and ModifiedResNet visual towers are supported, got {type(self.visual).__name__}")
        size = self.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.grid_size = self.image_size // (int(self.visual.patch_size[0]) if self.is_vit else 32)
        self.embed_dim = int(clip.embed_dim if hasattr(clip, "embed_dim") else clip.text_projection.shape[1])
        mean = getattr(self.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(self.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if self.is_vit and (self.visual.attn_pool is not None or self.visual.proj is None):
            raise ValueError(f"{model_name!r}: ViTs with attentional pooling or no projection are not supported")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> CLIP-normalised."""
        return (x - self.pixel_mean) / self.pixel_std

    # ---- ViT -------------------------------------------------------------------------------------------
    def _vit_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering the last block, (B, 1 + h*w, width)."""
        v = self.visual
        x = v._embeds(x)
        for block in v.transformer.resblocks[:-1]:
            x = block(x)
        return x

    def _vit_dense(self, x_in: torch.Tensor) -> torch.Tensor:
        """Patch tokens of the last block's input -> dense joint-space features (B, h*w, d)."""
        v = self.visual
        last = v.transformer.resblocks[-1]
        if self.readout == "maskclip":
            attn = last.attn
            y = last.ln_1(x_in[:, 1:])
            dim = y.shape[-1]
            value = F.linear(y, attn.in_proj_weight[2 * dim :], attn.in_proj_bias[2 * dim :])
            tokens = last.ls_1(attn.out_proj(value))
        else:
            tokens = last(x_in)[:, 1:]
        return v.ln_post(tokens) @ v.proj

    def _vit_global(self, x_in: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.transformer.resblocks[-1](x_in)
        pooled, _ = v._pool(x)
        return pooled @ v.proj

    # ---- ResNet ----------------------------------------------------------------------------------------
    def _rn_features(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.stem(x)
        return v.layer4(v.layer3(v.layer2(v.layer1(x))))

    def _rn_dense(self, feat: torch.Tensor) -> torch.Tensor:
        pool = self.visual.attnpool
        tokens = feat.flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = tokens + pool.positional_embedding[1:].to(tokens.dtype)
        return pool.c_proj(pool.v_proj(tokens))

    # ---- public ----------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"CLIP backbone {self.model_name!r} expects {self.image_size}x{self.image_size} input, got {tuple(x.shape[-2:])}")

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Dense features only (the eval path): (B, 3, S, S) in [0, 1] -> (B, h*w, d) tokens, row-major."""
        x = self.normalize(x)
        if self.is_vit:
            return self._vit_dense(self._vit_tokens(x))
        return self._rn_dense(self._rn_features(x))

    def forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense tokens (B, h*w, d) and the global image embedding (B, d), sharing one trunk pass."""
        x = self.normalize(x)
        if self.is_vit:
            x_in = self._vit_tokens(x)
            return self._vit_dense(x_in), self._vit_global(x_in)
        feat = self._rn_features(x)
        return self._rn_dense(feat), self.visual.attnpool(feat)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> dense (B, d, h, w) and global (B, d)."""
        tokens, pooled = self.forward_tokens(x)
        b, n, d = tokens.shape
        return tokens.transpose(1, 2).reshape(b, d, self.grid_size, self.grid_size), pooled


def clip_image_size(model_name: str) -> int:
    """The input size S of an open_clip config's visual tower (no model is built)."""
    _check_model_name(model_name)
    size = open_clip.get_model_config(model_name)["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size)
