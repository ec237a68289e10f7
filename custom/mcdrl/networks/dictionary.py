"""Stage 1b: the confounder dictionary Z and the text embeddings MCDRL needs, built once with the text tower.

:func:`build_dictionary` encodes three prompt sets with a CLIP text tower and writes **one artifact**
(a ``.safetensors`` file) holding:

* ``class_embeddings`` (K, d): e_k of "A {class} in an endoscopic image";
* ``confounders`` (M, d): Z, of "An endoscopy image with {domain}";
* ``class_anchors`` (K, d): t_bar_k, the mean over the M domains of "A {class} with {domain}";
* ``background_embedding`` (d,): "Normal mucosa in an endoscopic image" (MTRS background scoring);

plus, as metadata, the prompt strings, the CLIP model name and the sha256 of its weights. All embeddings are
L2-normalised. :class:`ConfounderDictionary` carries them as buffers inside the network, so inference needs
no text tower, and checks that an artifact matches the network it is loaded into.

The artifact is not a ``.pt`` file on purpose: MONAI Label offers every ``*.pt`` in ``models/`` as a model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mcdrl.errors import ConfigError, InputFileError
from mcdrl.utils import atomic_path

from .clip_backbone import create_clip, resolve_weights, weights_sha256
from .prompts import ANCHOR_TEMPLATE, BACKGROUND_PROMPT, CLASS_TEMPLATE, CONFOUNDER_TEMPLATE, CONFOUNDERS, LESION_CLASSES

__all__ = ["ConfounderDictionary", "DictionaryBuilder", "build_dictionary", "load_artifact"]

logger = logging.getLogger(__name__)
_TENSORS = ("class_embeddings", "confounders", "class_anchors", "background_embedding")
_REGENERATE = "Rebuild it with: python -m monai.bundle run build_dictionary --config_file bundle/configs/dictionary.json"


@torch.no_grad()
def _encode(model: nn.Module, tokenizer, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, len(prompts), batch_size):
        out.append(model.encode_text(tokenizer(prompts[i : i + batch_size])).float())
    return F.normalize(torch.cat(out), dim=-1)


def build_dictionary(
    model_name: str,
    weights_path: str | os.PathLike | None,
    output_path: str | os.PathLike,
    lesion_classes: list[str] = LESION_CLASSES,
    confounders: list[str] = CONFOUNDERS,
    class_template: str = CLASS_TEMPLATE,
    confounder_template: str = CONFOUNDER_TEMPLATE,
    anchor_template: str = ANCHOR_TEMPLATE,
    background_prompt: str = BACKGROUND_PROMPT,
    model: nn.Module | None = None,
) -> Path:
    """Encode the prompt sets with the CLIP text tower and write the stage-1 artifact (atomically).

    Args:
        model_name, weights_path: the CLIP, as for :func:`mcdrl.networks.clip_backbone.create_clip`.
        output_path: where the ``.safetensors`` artifact goes.
        lesion_classes: the K class names. confounders: the M domain phrases.
        *_template: the prompt templates, with ``{cls}`` and ``{domain}`` fields.
        model: an already-built CLIP to reuse (its identity is still recorded from ``model_name``/``weights_path``).

    Returns:
        The artifact path.
    """
    import open_clip

    if not lesion_classes or not confounders:
        raise ValueError("lesion_classes and confounders must be non-empty lists")
    for name, values in (("lesion_classes", lesion_classes), ("confounders", confounders)):
        if len(set(values)) != len(values):
            raise ValueError(f"{name} has duplicates: {values}")
    weights = resolve_weights(weights_path)
    model = model if model is not None else create_clip(model_name, weights)
    tokenizer = open_clip.get_tokenizer(model_name)
    class_prompts = [class_template.format(cls=c) for c in lesion_classes]
    domain_prompts = [confounder_template.format(domain=z) for z in confounders]
    anchor_prompts = [anchor_template.format(cls=c, domain=z) for c in lesion_classes for z in confounders]
    tensors = {
        "class_embeddings": _encode(model, tokenizer, class_prompts),
        "confounders": _encode(model, tokenizer, domain_prompts),
        "background_embedding": _encode(model, tokenizer, [background_prompt])[0],
    }
    anchors = _encode(model, tokenizer, anchor_prompts).view(len(lesion_classes), len(confounders), -1)
    tensors["class_anchors"] = F.normalize(anchors.mean(dim=1), dim=-1)
    metadata = {
        "format": "mcdrl-dictionary/1",
        "clip_model": model_name,
        "clip_weights_sha256": weights_sha256(weights),
        "lesion_classes": json.dumps(list(lesion_classes)),
        "confounders": json.dumps(list(confounders)),
        "class_prompts": json.dumps(class_prompts),
        "confounder_prompts": json.dumps(domain_prompts),
        "anchor_template": anchor_template,
        "background_prompt": background_prompt,
    }
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    logger.info("wrote confounder dictionary %s: K=%d classes, M=%d confounders, d=%d", output_path, len(lesion_classes), len(confounders), tensors["confounders"].shape[1])
    return output_path


class DictionaryBuilder:
    """Config-friendly wrapper of :func:`build_dictionary` (the stage-1 bundle workflow's ``builder``)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def run(self) -> Path:
        return build_dictionary(**self.kwargs)


def load_artifact(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an artifact: (tensors, metadata with the JSON lists decoded). Clear errors for missing or bad files."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"Confounder dictionary artifact not found: {path}. {_REGENERATE}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:
        raise ConfigError(f"Confounder dictionary artifact {path} is unreadable ({e}). {_REGENERATE}") from e
    missing = [k for k in _TENSORS if k not in tensors]
    if missing or meta.get("format") != "mcdrl-dictionary/1":
        raise ConfigError(f"{path} is not an MCDRL dictionary artifact (missing {missing or 'format tag'}). {_REGENERATE}")
    for key in ("lesion_classes", "confounders", "class_prompts", "confounder_prompts"):
        meta[key] = json.loads(meta[key])
    return tensors, meta


class ConfounderDictionary(nn.Module):
    """The frozen text side of MCDRL, as buffers: Z (M, d), e_k (K, d), t_bar_k (K, d) and e_bg (d,).

    Args:
        path: the stage-1 artifact, or None to create zero buffers of the declared size (the values then come
            from ``model.pt``; used when a state_dict always follows, e.g. MONAI Label).
        embed_dim: d expected by the network (the CLIP joint-space dimension).
        num_confounders: M expected by the network.
        lesion_classes: the K class names the network is trained with; must equal the artifact's, in order.

    Raises:
        ValueError: naming both numbers (or names) when the artifact does not match.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        embed_dim: int,
        num_confounders: int = 12,
        lesion_classes: list[str] = LESION_CLASSES,
    ):
        super().__init__()
        k, m, d = len(lesion_classes), int(num_confounders), int(embed_dim)
        self.lesion_classes = list(lesion_classes)
        self.confounder_names: list[str] = [f"confounder {i}" for i in range(m)]
        self.register_buffer("confounders", torch.zeros(m, d))
        self.register_buffer("class_embeddings", torch.zeros(k, d))
        self.register_buffer("class_anchors", torch.zeros(k, d))
        self.register_buffer("background_embedding", torch.zeros(d))
        self.meta: dict = {}
        if path is None:
            return
        tensors, meta = load_artifact(path)
        got_m, got_d = tensors["confounders"].shape
        if got_d != d:
            raise ConfigError(f"Dictionary artifact {path} has embedding dimension {got_d}, but the network's CLIP has {d}. {_REGENERATE} with the same clip_model.")
        if got_m != m:
            raise ConfigError(f"Dictionary artifact {path} has {got_m} confounders, but the network expects num_confounders={m}. Set num_confounders={got_m} or rebuild the dictionary.")
        if meta["lesion_classes"] != self.lesion_classes:
            raise ConfigError(f"Dictionary artifact {path} was built for classes {meta['lesion_classes']}, the network for {self.lesion_classes}.")
        for name in _TENSORS:
            getattr(self, name).copy_(tensors[name])
        self.confounder_names = list(meta["confounders"])
        self.meta = meta
        self.path = str(path)

    def check_clip_identity(self, model_name: str, weights_sha: str) -> None:
        """Refuse an artifact built with another CLIP: the model name must match, and the weights hash too when
        the network loads CLIP weights from a file (``weights_sha != "none"``)."""
        if not self.meta:
            return
        if self.meta["clip_model"] != model_name:
            raise ConfigError(f"Dictionary artifact {self.path} was built with CLIP {self.meta['clip_model']!r}, the network uses {model_name!r}. {_REGENERATE}")
        if weights_sha != "none" and self.meta["clip_weights_sha256"] != weights_sha:
            raise ConfigError(
                f"Dictionary artifact {self.path} was built from CLIP weights sha256 {self.meta['clip_weights_sha256'][:12]}..., "
                f"the network loads weights with sha256 {weights_sha[:12]}.... {_REGENERATE}"
            )

    def prompt_logits(self, image_embedding: torch.Tensor, tau: float, with_background: bool = True) -> torch.Tensor:
        """cos(F_vis, e_k) / tau over the K class prompts [+ "normal mucosa" as class K]: (B, d) -> (B, K [+ 1])."""
        prompts = torch.cat([self.class_embeddings, self.background_embedding[None]], dim=0) if with_background else self.class_embeddings
        return F.normalize(image_embedding.float(), dim=-1) @ F.normalize(prompts.float(), dim=-1).t() / tau

    @property
    def num_confounders(self) -> int:
        return int(self.confounders.shape[0])

    def extra_repr(self) -> str:
        return f"K={self.class_embeddings.shape[0]}, M={self.confounders.shape[0]}, d={self.confounders.shape[1]}"
