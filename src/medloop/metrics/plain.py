"""Metrics as plain JSON values: NaN and infinity become ``null``, NumPy scalars become Python numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plain"]


def plain(metrics: Any) -> Any:
    """A JSON-safe copy of a (nested) metrics dict; ``None`` stays ``None``."""
    if isinstance(metrics, dict):
        return {k: plain(v) for k, v in metrics.items()}
    if isinstance(metrics, (list, tuple)):
        return [plain(v) for v in metrics]
    if isinstance(metrics, (np.floating, float)):
        return float(metrics) if np.isfinite(metrics) else None
    if isinstance(metrics, (np.integer, np.bool_)):
        return metrics.item()
    return metrics
