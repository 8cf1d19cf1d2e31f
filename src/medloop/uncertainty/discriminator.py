"""Discriminator uncertainty (Ravanbakhsh et al.): how plausible the PatchGAN finds (image, predicted label map).

``plausibility_map`` brings the patch outputs (sigmoid of the logits: 1 = judged real) to image size by
bilinear interpolation: low plausibility = unreliable prediction. ``slice_score`` reduces a map to one number
per slice, **higher = less plausible = query first**:

- ``mean``: mean implausibility ``1 - p`` over the slice (default);
- ``low_q``: mean implausibility of the ``q`` fraction of least plausible pixels (a small wrong region counts
  even on a mostly right slice);
- ``foreground``: mean implausibility near the predicted structures (within ``margin`` pixels of the predicted
  foreground; the whole slice when nothing is predicted), so a small structure's errors are not diluted by
  the background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["plausibility_map", "slice_score", "SLICE_REDUCTIONS", "discriminator_scores"]

SLICE_REDUCTIONS = ("mean", "low_q", "foreground")


def plausibility_map(patch_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, 1, h, w]`` patch logits -> ``[N, H, W]`` plausibility in [0, 1]."""
    return F.interpolate(torch.sigmoid(patch_logits), size=size, mode="bilinear", align_corners=False)[:, 0]


def slice_score(plausibility: torch.Tensor, reduction: str = "mean", q: float = 0.1,
                pred: torch.Tensor | None = None, margin: int = 3) -> torch.Tensor:
    """``[N, H, W]`` plausibility -> ``[N]`` implausibility score (see module docstring); ``foreground`` needs
    the predicted label maps ``pred [N, H, W]``."""
    bad = (1.0 - plausibility).flatten(1)
    if reduction == "mean":
        return bad.mean(1)
    if reduction == "low_q":
        k = max(1, int(round(q * bad.shape[1])))
        return bad.topk(k, dim=1).values.mean(1)
    if reduction == "foreground":
        if pred is None:
            raise ValueError("the 'foreground' slice reduction needs the predicted label maps")
        near = F.max_pool2d((pred > 0).float()[:, None], 2 * margin + 1, stride=1, padding=margin).flatten(1)
        has = near.sum(1) > 0
        weights = torch.where(has[:, None], near, torch.ones_like(near))
        return (bad * weights).sum(1) / weights.sum(1)
    raise ValueError(f"unknown slice reduction {reduction!r}; use one of {SLICE_REDUCTIONS}")


@torch.no_grad()
def discriminator_scores(generator, discriminator, images: torch.Tensor, batch_size: int = 16,
                         reduction: str = "mean", q: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predict and judge ``images [N, C, H, W]``: returns (scores ``[N]``, plausibility maps ``[N, H, W]``,
    predicted label maps ``[N, H, W]``), dropout off."""
    generator.eval()
    discriminator.eval()
    device = next(generator.parameters()).device
    scores, maps, preds = [], [], []
    for chunk in images.split(batch_size):
        x = chunk.to(device)
        probs = generator(x)[0].softmax(1)
        judge = getattr(discriminator, "judge", None) or discriminator
        pmap = plausibility_map(judge(x, probs), tuple(x.shape[-2:]))
        pred = probs.argmax(1)
        scores.append(slice_score(pmap, reduction, q, pred).cpu())
        maps.append(pmap.cpu())
        preds.append(pred.cpu())
    return torch.cat(scores), torch.cat(maps), torch.cat(preds)
