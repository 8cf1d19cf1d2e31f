"""The discriminator as quality control: its plausibility calibrated to a predicted Dice.

A score a user can act on is a Dice, not a plausibility: ``DiceCalibration`` fits per-slice Dice against per-slice
plausibility by least squares on slices an expert has labeled (their label maps against the model's prediction
made before the model trained on them: no test labels), and predicts the Dice of any other slice, clipped to
[0, 1]. A pseudo-label whose predicted Dice falls below a threshold is flagged for review. ``qc_metrics`` says how
good the prediction is where the truth is known: mean absolute error, and the AUROC of the predicted Dice for
flagging slices whose true Dice is below the threshold (the bars of cardiac MR quality control: Robinson et al.
2018 report a predicted Dice's mean absolute error of 0.03-0.14).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from medloop.metrics import mask_dice

__all__ = ["DiceCalibration", "slice_dice", "qc_metrics"]


def slice_dice(pred: torch.Tensor, masks: torch.Tensor, num_classes: int) -> np.ndarray:
    """Per-slice Dice ``[N]`` of label maps ``pred`` against ``masks`` (``[N, H, W]``): the mean over the foreground
    classes present in either map; 1 for a slice where both are empty."""
    classes = range(1, num_classes)
    dice = torch.stack([mask_dice(pred == c, masks == c) for c in classes], 1)  # [N, K-1]
    present = torch.stack([((pred == c) | (masks == c)).flatten(1).any(1) for c in classes], 1)
    per_slice = torch.where(present.any(1), (dice * present).sum(1) / present.sum(1).clamp_min(1),
                            torch.ones(len(dice)))
    return per_slice.numpy().astype(np.float64)


@dataclasses.dataclass(frozen=True)
class DiceCalibration:
    """``dice ~ intercept + slope * plausibility``, fitted on ``n`` expert-labeled slices whose plausibility spans
    ``[lo, hi]``; with fewer than 3 slices, a constant plausibility, or a fit that says a more plausible map is a
    worse one (slope < 0: a handful of slices, all at one end), the slope is 0 and every slice gets their mean
    Dice."""

    slope: float
    intercept: float
    n: int
    lo: float
    hi: float

    @classmethod
    def fit(cls, plausibility: Sequence[float], dice: Sequence[float]) -> "DiceCalibration":
        x, y = np.asarray(plausibility, dtype=np.float64), np.asarray(dice, dtype=np.float64)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"calibration needs as many Dice values as plausibility scores, at least one; "
                             f"got {len(x)} and {len(y)}")
        if len(x) < 3 or np.ptp(x) == 0:
            return cls(0.0, float(y.mean()), len(x), float(x.min()), float(x.max()))
        slope, intercept = np.polyfit(x, y, 1)
        if slope < 0:
            return cls(0.0, float(y.mean()), len(x), float(x.min()), float(x.max()))
        return cls(float(slope), float(intercept), len(x), float(x.min()), float(x.max()))

    def predict(self, plausibility: Sequence[float]) -> np.ndarray:
        return np.clip(self.intercept + self.slope * np.asarray(plausibility, dtype=np.float64), 0.0, 1.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiceCalibration":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def qc_metrics(predicted: Sequence[float], true: Sequence[float], threshold: float = 0.7) -> dict:
    """``mae`` of the predicted Dice; ``auroc`` of the predicted Dice (lower = flag) for the slices whose true Dice
    is below ``threshold`` (``None`` when all or none are); ``flag_precision`` / ``flag_recall`` of flagging at the
    threshold itself; counts."""
    from sklearn.metrics import roc_auc_score

    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    bad, flagged = t < threshold, p < threshold
    auroc = float(roc_auc_score(bad, -p)) if 0 < bad.sum() < len(bad) else None
    return {"mae": float(np.abs(p - t).mean()) if len(t) else None, "auroc": auroc, "n": int(len(t)),
            "n_below": int(bad.sum()), "n_flagged": int(flagged.sum()),
            "flag_precision": float(bad[flagged].mean()) if flagged.any() else None,
            "flag_recall": float(flagged[bad].mean()) if bad.any() else None, "threshold": threshold}
