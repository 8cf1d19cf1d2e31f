"""Synthetic samples: lung-mask perturbations and mask-conditioned generation (Mahapatra et al. 2018)."""

from medloop.synth.perturb import (
    PERTURBATIONS,
    BoundaryDisplacement,
    Flip,
    LungIntensity,
    PerturbConfig,
    Rotate,
    Translate,
    Variant,
    affine_pair,
    make_variants,
)

__all__ = [
    "PERTURBATIONS",
    "BoundaryDisplacement",
    "Flip",
    "LungIntensity",
    "PerturbConfig",
    "Rotate",
    "Translate",
    "Variant",
    "affine_pair",
    "make_variants",
]
