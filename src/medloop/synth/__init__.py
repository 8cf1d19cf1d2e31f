"""Synthetic samples: lung-mask perturbations, the generator's source view and rendering variants with a trained
mask-conditioned generator (Mahapatra et al. 2018). Training the generator is the job of training/cgan;
nothing here imports the training package."""

from medloop.synth.generator import GeneratedVariant, MaskConditionedSampler
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
from medloop.synth.views import noise_sigma, source_view, tv_denoise

__all__ = [
    "PERTURBATIONS",
    "BoundaryDisplacement",
    "Flip",
    "GeneratedVariant",
    "LungIntensity",
    "MaskConditionedSampler",
    "PerturbConfig",
    "Rotate",
    "Translate",
    "Variant",
    "affine_pair",
    "make_variants",
    "noise_sigma",
    "source_view",
    "tv_denoise",
]
