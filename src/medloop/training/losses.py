"""Heteroscedastic losses (Kendall & Gal, NeurIPS 2017).

Classification: the sampled-logit attenuated loss (their Eq. 12). Logits are corrupted by Gaussian noise
with the predicted variance, ``z_t = f + sigma * eps_t``, and the loss is
``-log (1/T sum_t softmax(z_t)_c)``: a sample the network cannot fit costs less when it admits a larger
variance, so the variance head learns the data's noise.

Segmentation: Dice + cross-entropy on the logits, plus a Gaussian log-likelihood term on the softmax
probabilities, ``0.5 exp(-s) (p - y)^2 + 0.5 s`` per pixel and class (s = predicted log variance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["heteroscedastic_ce", "heteroscedastic_seg_loss"]


def heteroscedastic_ce(logits: torch.Tensor, log_var: torch.Tensor | None, target: torch.Tensor,
                       n_samples: int = 10, weight: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Sampled-logit attenuated cross-entropy. ``logits, log_var [N, K]``, ``target [N]``; plain CE without log_var."""
    if log_var is None:
        return F.cross_entropy(logits, target, weight=weight)
    std = torch.exp(0.5 * log_var)
    eps = torch.randn((n_samples, *logits.shape), generator=generator, dtype=logits.dtype, device=logits.device)
    z = logits.unsqueeze(0) + std.unsqueeze(0) * eps  # [T, N, K]
    log_p = z.log_softmax(-1).gather(-1, target.view(1, -1, 1).expand(n_samples, -1, 1)).squeeze(-1)  # [T, N]
    nll = -(torch.logsumexp(log_p, 0) - math.log(n_samples))  # [N]
    if weight is None:
        return nll.mean()
    w = weight[target]
    return (nll * w).sum() / w.sum()


_DICE = DiceLoss(include_background=False, to_onehot_y=True, softmax=True)


def heteroscedastic_seg_loss(logits: torch.Tensor, log_var: torch.Tensor | None, target: torch.Tensor,
                             weight: torch.Tensor | None = None) -> torch.Tensor:
    """``logits, log_var [N, K, H, W]``, ``target [N, H, W]`` -> Dice + CE (+ Gaussian NLL on probabilities)."""
    loss = _DICE(logits, target.unsqueeze(1)) + F.cross_entropy(logits, target, weight=weight)
    if log_var is not None:
        probs = logits.softmax(1)
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        loss = loss + (0.5 * torch.exp(-log_var) * (probs - onehot).pow(2) + 0.5 * log_var).mean()
    return loss
