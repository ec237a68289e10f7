"""Synthetic multi-site endoscopy world for MCDRL (domain-generalised lesion segmentation).

Procedural 224x224 RGB endoscopy frames (mucosa, vessels, folds, lumen, FOV mask) with at most
one lesion of the classes of :data:`mcdrl.networks.prompts.LESION_CLASSES` (pixel mask = rendered footprint,
placed uniformly over the field of view), any subset of the 12 confounders of
:data:`mcdrl.networks.prompts.CONFOUNDERS` rendered as image effects, and per-site device traits.

Public API::

    render_case(seed, lesion_class, confounders, device=None, size=224, *, site=None) -> Case
    Case(image (H,W,3) uint8, mask (H,W) uint8 {0,1}, lesion_class, confounders, caption, site, seed, device)
    DeviceTraits(name, colour_cast, fov_shape, fov_radius, border, overlay_text, text_colour,
                 noise_sigma, sharpness, gamma)
    SITES: dict[str, SiteSpec]   ("A".."F")      GENERIC_MIXTURE: SiteSpec      PROTOCOL (protocol confounding)
    SiteSpec.reversed_protocol() / .protocol_off() / .confounder_probs_given(lesion)
    sample_case(spec, seed, size=224) -> Case    draw_case_params(spec, seed) -> (class, confounders, device)
    generate_dataset(out_dir, sites, n_per_site, seed=0, formats=("png",), split=(0.8, 0.2)) -> Path
    write_dicom_rgb(path, image=None, *, frames=None, series_uid=None, study_uid=None, ...) -> Path
    make_site_figure(path, ...) -> Path
    CLI: python -m mcdrl.synthetic --out DIR --sites A B C --n 20 --seed 0 [--formats png dicom nifti] [--figure PATH]

The confounder effects (:mod:`.confounders`) are functions of any (3, H, W) frame: the generator passes its scene's
exact layers (:meth:`.frames.Scene.layers`), and :class:`mcdrl.transforms.RandConfounder` applies the same functions
to real frames with the layers estimated from the pixels (:mod:`.layers`)::

    confounders.EFFECTS[name](img, rng, layers=None) -> img      confounders.GEOMETRY[name](img, rng, label, fov)
    confounders.apply_confounders(img, names, seed, label=None) -> (img, label)

Determinism: same arguments -> identical bytes on one machine (every stage has its own seeded random stream). Across
CPUs numpy's SIMD kernels (AVX-512 against AVX2) may round a float differently, which flips a uint8 value here and
there; masks and labels are exact everywhere.
Speed: ~11 ms per clean 224 px frame, ~15 ms with a typical confounder mix, on one CPU core
(numpy + PIL only; measured by ``tests/test_synthetic.py::test_speed_report``). The output is pinned by
``tests/test_synthetic.py::test_generator_is_pinned``: masks and labels exactly, images within a tolerance that a
1% change to one effect exceeds.
"""

from .device import DeviceTraits
from .export import generate_dataset, write_dicom_rgb, write_nifti, write_png
from .figure import make_site_figure
from .render import Case, make_caption, render_case
from .sites import (GENERIC_MIXTURE, PROTOCOL, PROTOCOL_STRONG, PROTOCOLS, SITES, SiteSpec, derive_seed, draw_case_params,
                    sample_case, sites_with_protocol)

#: Bumped whenever the same arguments render different pixels (caches of generated worlds include it).
#: 2: lesion centres anywhere in the whole FOV (1: FOV shrunk to 0.88).
#: 3: motion blur 16-28 px at 224 px (2: 10-18 px, too weak a cue for the demo CLIP to learn).
#: 4: protocol confounding: five confounders follow the lesion at the sites where they are not routine (sites.PROTOCOL;
#:    a site's draws of other confounders, its scenes and the generic mixture are unchanged).
GENERATOR_VERSION = 4

__all__ = [
    "GENERATOR_VERSION", "Case", "DeviceTraits", "GENERIC_MIXTURE", "PROTOCOL", "PROTOCOLS", "PROTOCOL_STRONG", "SITES", "SiteSpec", "derive_seed", "draw_case_params",
    "generate_dataset", "make_caption", "make_site_figure", "render_case", "sample_case", "sites_with_protocol", "write_dicom_rgb",
    "write_nifti", "write_png",
]
