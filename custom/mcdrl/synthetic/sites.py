"""Named synthetic acquisition sites: distinct mixtures of confounders, device traits and lesions.

Every site has at least one *signature*: a confounder (probability >= 0.4, independent of the lesion) that every
other site has in at most 0.25 of its frames (the protocol below makes some of them common in frames with, or
without, a lesion elsewhere), and/or a device trait no other site uses. A domain-generalised model trained on some
sites must not rely on them to recognise lesions on a held-out site.

====  ========================  ===============================================================
site  title                     signature (rare or absent at every other site)
====  ========================  ===============================================================
A     Metro NBI centre          narrow-band imaging (0.55); neutral circle scope
B     Rural mobile unit         motion blur (0.55) + dark lighting (0.45); cropped-circle FOV,
                                soft optics, noisy sensor
C     Legacy video centre       imaging artifacts (0.55); strong magenta colour cast, burned-in
                                overlay text, grey border (only site with text/cast)
D     GI-bleeding referral      blood (0.55); rounded-octagon FOV (only octagon site)
E     Magnification lab         a near view (0.6) + bright lighting (0.45); full-frame rounded
                                rectangle FOV, cool cast, strong edge enhancement
F     Capsule clinic            mucus (0.55) + uneven lighting (0.5) + a far view (0.5); yellow
                                cast, bezel-ring border
====  ========================  ===============================================================

**Protocol confounding** (generator version 4): each centre's routine is another centre's signal. Endoscopists switch
on NBI and move in close to characterise a finding, biopsies make the mucosa bleed, and frames without a finding are
more often rushed (motion blur) or poorly prepared (mucus). So five confounders follow the lesion at every site where
they are not routine (:data:`PROTOCOL`; P(z | lesion) / P(z | no lesion)):

=====================  ===========  =================
confounder             routine at   protocol elsewhere
=====================  ===========  =================
narrow-band imaging    A            0.25 / 0.01
a near view            E            0.30 / 0.02
blood                  D            0.20 / 0.02
motion blur            B            0.05 / 0.30
mucus                  F            0.08 / 0.35
=====================  ===========  =================

At its routine site a confounder keeps its rate, independent of the lesion; C has no routine, so all five follow the
protocol there. A model trained on five sites can therefore learn "NBI means a lesion", and then meets A, where NBI
is on for every other frame. :meth:`SiteSpec.reversed_protocol` swaps a site's two conditional rates (the standard
test for such a shortcut), and :meth:`SiteSpec.protocol_off` draws the same marginal rates independent of the lesion.

:data:`GENERIC_MIXTURE` is not a site: every confounder at a moderate rate with a random neutral
device per case, for pre-training a CLIP on the confounder vocabulary. It has no protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from mcdrl.networks.prompts import CONFOUNDERS, LESION_CLASSES, NO_LESION

from ._ops import rng_for
from .confounders import EXCLUSIVE
from .device import DeviceTraits, random_device
from .render import Case, render_case


@dataclass(frozen=True, eq=False)
class SiteSpec:
    """A site (or mixture) from which cases are sampled.

    Attributes:
        name: short id, e.g. ``"A"`` (stored in :attr:`Case.site` and datalists).
        title: descriptive name, e.g. ``"Metro NBI centre"``.
        confounder_probs: independent per-frame probability of each confounder (missing = 0).
            Mutually exclusive pairs drawn together are resolved at random, weighted by probability.
        lesion_freqs: relative frequency of each lesion class and of ``"none"`` (normalised).
        device: the site's scope (jittered slightly per case); None = a random neutral device per case.
        signature: human-readable description of the traits that are rare/absent elsewhere.
        signature_confounders: confounders that are this site's signature.
        signature_device: device-trait names (fields of :class:`DeviceTraits`) unique to this site.
        confounder_probs_if_lesion: per-frame probability of a confounder in frames with a lesion (keyword only); a
            confounder missing here falls back to ``confounder_probs``.
        confounder_probs_if_none: the same for lesion-free frames.
    """

    name: str
    title: str
    confounder_probs: Mapping[str, float]
    lesion_freqs: Mapping[str, float]
    device: DeviceTraits | None = None
    signature: str = ""
    signature_confounders: tuple[str, ...] = ()
    signature_device: tuple[str, ...] = field(default=())
    confounder_probs_if_lesion: Mapping[str, float] = field(default_factory=dict, kw_only=True)
    confounder_probs_if_none: Mapping[str, float] = field(default_factory=dict, kw_only=True)

    def __post_init__(self) -> None:
        for table in (self.confounder_probs, self.confounder_probs_if_lesion, self.confounder_probs_if_none):
            for c, p in table.items():
                if c not in CONFOUNDERS:
                    raise ValueError(f"site {self.name}: unknown confounder {c!r}; known: {CONFOUNDERS}")
                if not 0.0 <= p <= 1.0:
                    raise ValueError(f"site {self.name}: probability of {c!r} must be in [0, 1], got {p}")
        known = LESION_CLASSES + [NO_LESION]
        for c in self.lesion_freqs:
            if c not in known:
                raise ValueError(f"site {self.name}: unknown lesion class {c!r}; known: {known}")
        if sum(self.lesion_freqs.values()) <= 0:
            raise ValueError(f"site {self.name}: lesion_freqs must have a positive sum")


    def confounder_probs_given(self, lesion: bool) -> dict[str, float]:
        """Each confounder's per-frame probability in a frame with (``lesion=True``) or without a lesion."""
        given = self.confounder_probs_if_lesion if lesion else self.confounder_probs_if_none
        return {c: float(given.get(c, self.confounder_probs.get(c, 0.0))) for c in CONFOUNDERS}

    @property
    def protocol_confounders(self) -> tuple[str, ...]:
        """The confounders whose rate depends on the lesion here, in :data:`CONFOUNDERS` order."""
        on, off = self.confounder_probs_given(True), self.confounder_probs_given(False)
        return tuple(c for c in CONFOUNDERS if on[c] != off[c])

    def reversed_protocol(self) -> SiteSpec:
        """The same site (name, scenes, devices) with P(z | lesion) and P(z | no lesion) swapped."""
        return replace(self, confounder_probs_if_lesion=dict(self.confounder_probs_if_none),
                       confounder_probs_if_none=dict(self.confounder_probs_if_lesion))

    def protocol_off(self) -> SiteSpec:
        """The same site with every confounder independent of the lesion, at its marginal rate over the site's frames
        (``confounder_probs``): the interventional and unconfounded references."""
        return replace(self, confounder_probs_if_lesion={}, confounder_probs_if_none={})


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 31-bit seed derived deterministically from ``seed`` and keys (e.g. site name, index)."""
    return int(rng_for(seed, "derive", *keys).integers(0, 2**31 - 1))


def draw_case_params(spec: SiteSpec, seed: int) -> tuple[str, list[str], DeviceTraits]:
    """The random *labels* of a case of ``spec`` (cheap; no rendering).

    Returns:
        ``(lesion_class, confounders, device)`` exactly as :func:`sample_case` renders them.
    """
    rng = rng_for(seed, "site-draw")
    classes = [c for c in LESION_CLASSES + [NO_LESION] if c in spec.lesion_freqs]
    p = np.array([spec.lesion_freqs[c] for c in classes], float)
    lesion_class = classes[int(rng.choice(len(classes), p=p / p.sum()))]
    probs = spec.confounder_probs_given(lesion_class != NO_LESION)
    u = rng.random(len(CONFOUNDERS))
    present = {c for c, x in zip(CONFOUNDERS, u) if x < probs[c]}
    for a, b in EXCLUSIVE:
        if a in present and b in present:
            pa, pb = probs[a], probs[b]
            present.discard(b if rng.random() < pa / (pa + pb) else a)
    device = spec.device.jittered(rng) if spec.device is not None else random_device(rng)
    return lesion_class, [c for c in CONFOUNDERS if c in present], device


def sample_case(spec: SiteSpec, seed: int, size: int = 224) -> Case:
    """Sample and render one case of site ``spec`` (deterministic given ``seed``).

    The render seed is derived from ``(seed, spec.name)`` so two sites never share a scene;
    it is stored in :attr:`Case.seed`.

    Returns:
        :class:`Case` with (size, size, 3) uint8 ``image`` and (size, size) uint8 ``mask``.
    """
    case_seed = derive_seed(seed, spec.name)
    lesion_class, confs, device = draw_case_params(spec, case_seed)
    return render_case(case_seed, lesion_class, confs, device, size, site=spec.name)


def _probs(**kw: float) -> dict[str, float]:
    names = {c.replace(" ", "_").replace("-", "_"): c for c in CONFOUNDERS}
    return {names[k]: v for k, v in kw.items()}


def _lesions(polyp, tumor, inflammation, nodule, cyst, none) -> dict[str, float]:
    return {"polyp": polyp, "tumor": tumor, "inflammation": inflammation, "nodule": nodule, "cyst": cyst,
            NO_LESION: none}


#: Protocol confounding [ours]: confounder -> (the site where it is routine, P(z | lesion), P(z | no lesion) elsewhere).
PROTOCOL: dict[str, tuple[str, float, float]] = {
    "narrow-band imaging": ("A", 0.25, 0.01),  # switched on to characterise a finding
    "a near view": ("E", 0.30, 0.02),  # moving in on a finding
    "blood": ("D", 0.20, 0.02),  # after a biopsy
    "motion blur": ("B", 0.05, 0.30),  # a quick pass with no finding
    "mucus": ("F", 0.08, 0.35),  # a poorly prepared, unexamined stretch
}


#: A stronger protocol [ours], for a benchmark where ERM must learn the shortcut (issue 22 allows strengthening the
#: protocol; ``results/experiments/README.md`` records why): the same routines and directions, each cue in most of the
#: frames of its kind (P(lesion | cue) stays about as high as in :data:`PROTOCOL`, but the cue is no longer rare).
PROTOCOL_STRONG: dict[str, tuple[str, float, float]] = {
    "narrow-band imaging": ("A", 0.60, 0.01),
    "a near view": ("E", 0.60, 0.02),
    "blood": ("D", 0.50, 0.02),
    "motion blur": ("B", 0.03, 0.70),
    "mucus": ("F", 0.03, 0.70),
}

#: the protocol tables by name: ``"issue"`` is the generator's own (every dataset, the shipped model's world)
PROTOCOLS: dict[str, Mapping[str, tuple[str, float, float]]] = {"issue": PROTOCOL, "strong": PROTOCOL_STRONG}


def with_protocol(spec: SiteSpec, protocol: Mapping[str, tuple[str, float, float]] = PROTOCOL) -> SiteSpec:
    """``spec`` with every confounder of ``protocol`` not routine there following the lesion at the protocol's rates;
    ``confounder_probs`` holds their marginal rate over the site's lesion mix, so that :meth:`SiteSpec.protocol_off`
    keeps each confounder as common as it is with the protocol."""
    p_lesion = 1.0 - spec.lesion_freqs.get(NO_LESION, 0.0) / sum(spec.lesion_freqs.values())
    rules = {c: (pl, pn) for c, (routine, pl, pn) in protocol.items() if routine != spec.name}
    return replace(spec, confounder_probs={**spec.confounder_probs,
                                           **{c: p_lesion * pl + (1 - p_lesion) * pn for c, (pl, pn) in rules.items()}},
                   confounder_probs_if_lesion={c: pl for c, (pl, _) in rules.items()},
                   confounder_probs_if_none={c: pn for c, (_, pn) in rules.items()})


#: the sites without a protocol (their routine rates); :data:`SITES` adds :data:`PROTOCOL`
_ROUTINE_SITES: tuple[SiteSpec, ...] = (
    SiteSpec(
        "A", "Metro NBI centre",
        _probs(motion_blur=0.05, imaging_artifacts=0.02, bright_lighting=0.08, dark_lighting=0.05,
               uneven_lighting=0.10, narrow_band_imaging=0.55, white_light_imaging=0.30, a_near_view=0.15,
               a_far_view=0.10, mucus=0.10, blood=0.05, specular_reflection=0.25),
        _lesions(0.40, 0.10, 0.10, 0.10, 0.10, 0.20),
        DeviceTraits("A: HD scope", (1.0, 1.0, 1.0), "circle", 0.47, "black", False, noise_sigma=0.006,
                     sharpness=0.3),
        "NBI routine (0.55, for every kind of frame)", ("narrow-band imaging",), ()),
    SiteSpec(
        "B", "Rural mobile unit",
        _probs(motion_blur=0.55, imaging_artifacts=0.05, bright_lighting=0.05, dark_lighting=0.45,
               uneven_lighting=0.10, narrow_band_imaging=0.0, white_light_imaging=0.10, a_near_view=0.05,
               a_far_view=0.15, mucus=0.15, blood=0.05, specular_reflection=0.20),
        _lesions(0.15, 0.10, 0.35, 0.10, 0.10, 0.20),
        DeviceTraits("B: portable scope", (1.04, 1.0, 0.95), "cropped_circle", 0.47, "black", False,
                     noise_sigma=0.018, sharpness=-0.5),
        "heavy motion blur (0.55) and dark lighting (0.45); cropped-circle FOV, soft optics, noisy sensor",
        ("motion blur", "dark lighting"), ("fov_shape", "noise_sigma")),
    SiteSpec(
        "C", "Legacy video centre",
        _probs(motion_blur=0.10, imaging_artifacts=0.55, bright_lighting=0.10, dark_lighting=0.15,
               uneven_lighting=0.10, narrow_band_imaging=0.02, white_light_imaging=0.05, a_near_view=0.10,
               a_far_view=0.15, mucus=0.10, blood=0.08, specular_reflection=0.20),
        _lesions(0.15, 0.35, 0.10, 0.10, 0.10, 0.20),
        DeviceTraits("C: legacy CCD", (1.15, 0.88, 1.10), "circle", 0.43, "gray", True, (120, 255, 120),
                     noise_sigma=0.012, sharpness=0.0, gamma=1.08),
        "imaging artifacts (0.55; <= 0.08 elsewhere); strong magenta colour cast, burned-in overlay text, "
        "grey border", ("imaging artifacts",), ("colour_cast", "overlay_text", "border")),
    SiteSpec(
        "D", "GI-bleeding referral",
        _probs(motion_blur=0.10, imaging_artifacts=0.05, bright_lighting=0.05, dark_lighting=0.10,
               uneven_lighting=0.10, narrow_band_imaging=0.05, white_light_imaging=0.15, a_near_view=0.10,
               a_far_view=0.15, mucus=0.10, blood=0.55, specular_reflection=0.40),
        _lesions(0.15, 0.25, 0.25, 0.05, 0.10, 0.20),
        DeviceTraits("D: therapeutic scope", (1.0, 0.98, 0.98), "octagon", 0.47, "black", False, noise_sigma=0.008),
        "blood routine (0.55); rounded-octagon FOV", ("blood",), ("fov_shape",)),
    SiteSpec(
        "E", "Magnification lab",
        _probs(motion_blur=0.05, imaging_artifacts=0.02, bright_lighting=0.45, dark_lighting=0.02,
               uneven_lighting=0.05, narrow_band_imaging=0.10, white_light_imaging=0.35, a_near_view=0.60,
               a_far_view=0.02, mucus=0.05, blood=0.05, specular_reflection=0.45),
        _lesions(0.30, 0.05, 0.05, 0.30, 0.10, 0.20),
        DeviceTraits("E: zoom scope", (0.95, 1.0, 1.07), "rect", 0.47, "black", False, noise_sigma=0.005,
                     sharpness=0.7),
        "near views (0.6) and bright lighting (0.45); full-frame rounded-rectangle FOV, cool cast, strong "
        "edge enhancement", ("a near view", "bright lighting"), ("fov_shape", "sharpness")),
    SiteSpec(
        "F", "Capsule clinic",
        _probs(motion_blur=0.10, imaging_artifacts=0.08, bright_lighting=0.05, dark_lighting=0.10,
               uneven_lighting=0.50, narrow_band_imaging=0.0, white_light_imaging=0.05, a_near_view=0.02,
               a_far_view=0.50, mucus=0.55, blood=0.08, specular_reflection=0.25),
        _lesions(0.15, 0.05, 0.20, 0.10, 0.30, 0.20),
        DeviceTraits("F: capsule camera", (1.04, 1.01, 0.92), "circle", 0.46, "bezel", False, noise_sigma=0.010,
                     sharpness=-0.2),
        "mucus (0.55), uneven lighting (0.5) and far views (0.5); yellow cast, bezel-ring border",
        ("mucus", "uneven lighting", "a far view"), ("border",)),
)

SITES: dict[str, SiteSpec] = {s.name: with_protocol(s) for s in _ROUTINE_SITES}


def sites_with_protocol(name: str = "issue") -> dict[str, SiteSpec]:
    """The sites under the protocol table ``name`` of :data:`PROTOCOLS` (``"issue"``: :data:`SITES` itself)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return SITES if name == "issue" else {s.name: with_protocol(s, PROTOCOLS[name]) for s in _ROUTINE_SITES}


#: Not a site: all confounders at moderate rates, random neutral device per case (CLIP pre-training).
GENERIC_MIXTURE = SiteSpec(
    "generic", "Generic mixture",
    _probs(motion_blur=0.2, imaging_artifacts=0.2, bright_lighting=0.15, dark_lighting=0.15, uneven_lighting=0.2,
           narrow_band_imaging=0.25, white_light_imaging=0.25, a_near_view=0.2, a_far_view=0.2, mucus=0.2,
           blood=0.2, specular_reflection=0.25),
    _lesions(0.16, 0.16, 0.16, 0.16, 0.16, 0.20),
    None, "none: every confounder at a moderate rate, random neutral device per case")
