"""Uncertainty: MC sampling, the Kendall-Gal epistemic/aleatoric split, entropy, BALD, margin, variation ratio."""

from medloop.uncertainty.mc import PoolScores, mc_forward, naive_mc_forward, score_pool
from medloop.uncertainty.measures import (
    MEASURES,
    REDUCTIONS,
    aleatoric,
    all_measures,
    bald,
    combined,
    epistemic,
    margin,
    predictive_entropy,
    reduce_map,
    variation_ratio,
)

__all__ = [
    "MEASURES",
    "REDUCTIONS",
    "PoolScores",
    "aleatoric",
    "all_measures",
    "bald",
    "combined",
    "epistemic",
    "margin",
    "mc_forward",
    "naive_mc_forward",
    "predictive_entropy",
    "reduce_map",
    "score_pool",
    "variation_ratio",
]
