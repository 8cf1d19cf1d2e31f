"""Classification metrics: accuracy, sensitivity, specificity, ROC AUC (scikit-learn), expected calibration error."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

__all__ = ["classification_metrics", "expected_calibration_error"]


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): confidence-binned |accuracy - confidence|, weighted by bin size."""
    conf = probs.max(1)
    correct = probs.argmax(1) == targets
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def classification_metrics(probs: np.ndarray, targets: np.ndarray, positive: int = 1) -> dict[str, float]:
    """Metrics of ``probs [N, K]`` against ``targets [N]``.

    Binary: sensitivity and specificity of class ``positive``; ROC AUC on its probability.
    Multi-class: macro one-vs-rest sensitivity, specificity and AUC.
    """
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    k = probs.shape[1]
    pred = probs.argmax(1)
    cm = confusion_matrix(targets, pred, labels=list(range(k)))
    tp = np.diag(cm).astype(float)
    fn = cm.sum(1) - tp
    fp = cm.sum(0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
    present = np.unique(targets)
    if len(present) < 2:
        auc = float("nan")  # undefined with one class in the targets
    elif k == 2:
        auc = float(roc_auc_score(targets, probs[:, positive]))
    else:
        auc = float(roc_auc_score(targets, probs, multi_class="ovr", average="macro", labels=list(range(k))))
    if k == 2:
        sensitivity, specificity = float(sens[positive]), float(spec[positive])
    else:
        sensitivity, specificity = float(np.nanmean(sens)), float(np.nanmean(spec))
    return {
        "accuracy": float((pred == targets).mean()),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "auc": auc,
        "ece": expected_calibration_error(probs, targets),
        "n": int(len(targets)),
    }
