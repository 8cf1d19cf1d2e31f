"""Uncertainty measures from T stochastic passes, shared by every query strategy.

All take ``mc_probs [N, T, C, *spatial]`` (softmax outputs of T MC-dropout passes) and return one value
per sample (classification) or per pixel (segmentation), ``[N, *spatial]``, **higher = more uncertain**.

References: Kendall & Gal, NeurIPS 2017 (epistemic/aleatoric split); Mahapatra et al., MICCAI 2018,
Eq. 6 (combined score); Houlsby et al. 2011 / Gal et al. 2017 (BALD); Freeman 1965 (variation ratio).
"""

from __future__ import annotations

import torch

__all__ = [
    "MEASURES",
    "epistemic",
    "aleatoric",
    "combined",
    "predictive_entropy",
    "bald",
    "margin",
    "variation_ratio",
    "all_measures",
    "reduce_map",
    "REDUCTIONS",
]

_EPS = 1e-12


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(_EPS))).sum(dim)


def epistemic(mc_probs: torch.Tensor) -> torch.Tensor:
    """Variance of the predictions over passes, ``mean_t p_t^2 - (mean_t p_t)^2``, summed over classes."""
    return (mc_probs.pow(2).mean(1) - mc_probs.mean(1).pow(2)).clamp_min(0).sum(1)


def aleatoric(mc_probs: torch.Tensor, mc_log_var: torch.Tensor | None) -> torch.Tensor:
    """Mean predicted variance over passes, ``mean_t sigma_t^2``, summed over classes.

    The network predicts a variance on its logits; it is carried to probability space to first order
    (delta method): with ``J = diag(p) - p p^T``, ``Var[p_c] = sum_k J_ck^2 sigma_k^2
    = p_c^2 (sum_k p_k^2 sigma_k^2 + sigma_c^2 (1 - 2 p_c))``. Zero when the model has no variance head.
    """
    if mc_log_var is None:
        return torch.zeros_like(mc_probs[:, 0, 0])
    var = mc_log_var.exp()
    p2 = mc_probs.pow(2)
    s = (p2 * var).sum(2, keepdim=True)
    prob_var = (p2 * (s + var * (1 - 2 * mc_probs))).clamp_min(0)
    return prob_var.mean(1).sum(1)


def combined(mc_probs: torch.Tensor, mc_log_var: torch.Tensor | None) -> torch.Tensor:
    """Eq. 6 of Mahapatra et al.: ``Var(y) ~ mean(y_t^2) - mean(y_t)^2 + mean(sigma_t^2)``."""
    return epistemic(mc_probs) + aleatoric(mc_probs, mc_log_var)


def predictive_entropy(mc_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean prediction, ``H[mean_t p_t]``."""
    return _entropy(mc_probs.mean(1), 1)


def bald(mc_probs: torch.Tensor) -> torch.Tensor:
    """Mutual information between prediction and weights: ``H[mean_t p_t] - mean_t H[p_t]``."""
    return (predictive_entropy(mc_probs) - _entropy(mc_probs, 2).mean(1)).clamp_min(0)


def margin(mc_probs: torch.Tensor) -> torch.Tensor:
    """``1 - (p_(1) - p_(2))`` of the mean prediction (top two classes)."""
    top2 = mc_probs.mean(1).topk(2, dim=1).values
    return 1 - (top2[:, 0] - top2[:, 1])


def variation_ratio(mc_probs: torch.Tensor) -> torch.Tensor:
    """``1 - (passes voting for the modal class) / T``; a pass votes for its most probable class (the first of
    tied ones, as ``argmax``). Votes are counted without an argmax over the class axis, which is strided in
    ``[N, T, C, *S]`` and cost twice the rest (16 slices at 128 px, T = 10, 3 classes: 0.28 s -> 0.12 s)."""
    is_max = mc_probs == mc_probs.amax(2, keepdim=True)
    votes = is_max & (is_max.cumsum(2) == 1)  # [N, T, C, *S]: one vote per pass
    return 1 - votes.sum(1, dtype=torch.int32).amax(1).float() / mc_probs.shape[1]


MEASURES = {
    "epistemic": lambda p, v: epistemic(p),
    "aleatoric": aleatoric,
    "combined": combined,
    "entropy": lambda p, v: predictive_entropy(p),
    "bald": lambda p, v: bald(p),
    "margin": lambda p, v: margin(p),
    "variation_ratio": lambda p, v: variation_ratio(p),
}


def all_measures(mc_probs: torch.Tensor, mc_log_var: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every measure, ``{name: [N, *spatial]}``."""
    return {name: fn(mc_probs, mc_log_var) for name, fn in MEASURES.items()}


def _top_q_mean(m: torch.Tensor, q: float) -> torch.Tensor:
    flat = m.flatten(1)
    k = max(1, int(round(q * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(1)


REDUCTIONS = ("mean", "max", "foreground_sum", "top_q_mean")


def reduce_map(umap: torch.Tensor, how: str, foreground: torch.Tensor | None = None, q: float = 0.05) -> torch.Tensor:
    """Reduce a per-pixel map ``[N, *spatial]`` to one score per image ``[N]``.

    Args:
        how: ``mean``; ``max``; ``foreground_sum`` (sum over the predicted foreground, ``foreground [N, *spatial]``
            bool: the area the model claims, where its doubt costs an annotator time); ``top_q_mean`` (mean of the
            top ``q`` fraction of pixels: a large uncertain region scores higher than a few noisy pixels).
    """
    if how == "mean":
        return umap.flatten(1).mean(1)
    if how == "max":
        return umap.flatten(1).max(1).values
    if how == "foreground_sum":
        if foreground is None:
            raise ValueError("reduction 'foreground_sum' needs the predicted foreground mask")
        return (umap * foreground).flatten(1).sum(1)
    if how == "top_q_mean":
        return _top_q_mean(umap, q)
    raise ValueError(f"unknown reduction '{how}'; choose one of {', '.join(REDUCTIONS)}")
