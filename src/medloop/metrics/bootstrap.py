"""Bootstrap intervals for test AUCs and for the area between two learning curves (placeholder)."""

from __future__ import annotations

import numpy as np

__all__ = ["stored_probs"]


def stored_probs(probs: np.ndarray) -> list:
    """Test probabilities as stored in a round record: ``[N]`` of the positive class for two classes, else
    ``[N][K]``; rounded to 5 decimals."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.round(probs[:, 1] if probs.shape[1] == 2 else probs, 5).tolist()
