"""Segmentation metrics via MONAI: Dice per class, Hausdorff distance (HD95 and max) per class."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

__all__ = ["segmentation_metrics", "mask_dice"]


def _nanmean(values: torch.Tensor) -> list[float]:
    arr = values.numpy().astype(np.float64)
    arr[~np.isfinite(arr)] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return [float(v) for v in np.nanmean(arr, axis=0)]


def segmentation_metrics(pred: torch.Tensor, target: torch.Tensor, label_names: dict[int, str]) -> dict:
    """Per-class Dice, HD95 and HD (max) of label maps ``pred``/``target [N, H, W]`` (background excluded).

    Images where a class is absent from both prediction and truth are left out of that class's mean
    (MONAI's NaN convention); Hausdorff distances are in pixels.
    """
    num_classes = max(label_names) + 1
    p = torch.nn.functional.one_hot(pred.long(), num_classes).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty prediction/ground truth; handled as NaN
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, t)
        hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(p, t)
        hdmax = HausdorffDistanceMetric(include_background=False, reduction="none")(p, t)
    names = [label_names.get(c, f"label {c}") for c in range(1, num_classes)]
    dice_c, hd95_c, hdmax_c = _nanmean(dice), _nanmean(hd95), _nanmean(hdmax)
    return {
        "dice": dict(zip(names, dice_c)),
        "dice_mean": float(np.nanmean(dice_c)) if not all(np.isnan(dice_c)) else float("nan"),
        "hd95": dict(zip(names, hd95_c)),
        "hd_max": dict(zip(names, hdmax_c)),
        "n": int(pred.shape[0]),
    }


def mask_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of binary masks per image, ``[N, ...] -> [N]`` (1 when both are empty)."""
    p, t = pred.flatten(1).float(), target.flatten(1).float()
    inter, total = (p * t).sum(1), p.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1e-8), torch.ones_like(total))
