"""Overview figure of the synthetic world: example frames per site + each confounder alone."""

from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mcdrl.networks.prompts import CONFOUNDERS

from .export import atomic_write
from .render import render_case
from .sites import SITES, derive_seed, sample_case

_SHORT = {"motion blur": "blur", "imaging artifacts": "artifacts", "bright lighting": "bright",
          "dark lighting": "dark", "uneven lighting": "uneven", "narrow-band imaging": "NBI",
          "white light imaging": "WLI", "a near view": "near", "a far view": "far", "mucus": "mucus",
          "blood": "blood", "specular reflection": "specular"}


def _show(ax, image: np.ndarray, mask: np.ndarray | None, title: str) -> None:
    ax.imshow(image, interpolation="bilinear")
    if mask is not None and mask.any():
        ax.contour(mask, levels=[0.5], colors=["#39ff14"], linewidths=0.7)
    ax.set_title(title, fontsize=6.5, pad=2)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def make_site_figure(path: str | os.PathLike, sites: Sequence[str] | None = None, n_per_site: int = 6,
                     seed: int = 0, clean_seed: int = 11, size: int = 224, dpi: int = 110) -> Path:
    """Render the overview grid to a PNG at ``path`` (matplotlib Agg; written atomically).

    One row per site (``n_per_site`` samples, lesion contour in green, title = lesion class +
    confounders), then two rows with one clean polyp frame and each of the 12 confounders applied
    alone to that same frame. The PNG is palette-quantised to stay small (~1 MB).

    Returns:
        the written path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    sites = list(SITES) if sites is None else list(sites)
    ncols = n_per_site + 1
    conf_rows = int(np.ceil((len(CONFOUNDERS) + 1) / ncols))
    nrows = len(sites) + conf_rows
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.45 * ncols, 1.55 * nrows), squeeze=False)
    for r, name in enumerate(sites):
        spec = SITES[name]
        ax = axes[r, 0]
        ax.axis("off")
        protocol = "protocol: " + ", ".join(_SHORT[c] for c in spec.protocol_confounders) if spec.protocol_confounders else ""
        label = (f"Site {spec.name}\n{spec.title}\n\n" + "\n".join(textwrap.wrap(spec.signature, 26)[:4])
                 + ("\n" + "\n".join(textwrap.wrap(protocol, 26)) if protocol else ""))
        ax.text(0.0, 0.5, label, fontsize=6.5, va="center", ha="left", transform=ax.transAxes)
        for j in range(n_per_site):
            case = sample_case(spec, derive_seed(seed, "figure", name, j), size)
            conf = ", ".join(_SHORT[c] for c in case.confounders) or "clean"
            _show(axes[r, j + 1], case.image, case.mask, f"{case.lesion_class}\n{conf}")
    panels = [("clean (white light)", [])] + [(c, [c]) for c in CONFOUNDERS]
    for k, (title, confs) in enumerate(panels):
        case = render_case(clean_seed, "polyp", confs, size=size)
        _show(axes[len(sites) + k // ncols, k % ncols], case.image, case.mask if not confs else None, title)
    for k in range(len(panels), conf_rows * ncols):
        axes[len(sites) + k // ncols, k % ncols].axis("off")
    fig.suptitle("MCDRL synthetic world: sites (rows; green = lesion; 'protocol': confounders that follow the lesion there)\n"
                 "and the 12 confounders applied alone to one clean frame (last rows)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.985), h_pad=0.4, w_pad=0.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    im = im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    return atomic_write(path, lambda tmp: im.save(tmp, format="PNG", optimize=True))
