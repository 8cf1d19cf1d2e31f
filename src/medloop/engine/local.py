"""The in-process engine: one process reads and scores the pool in batches, holding only the scores.

The same ``BatchScorer`` as each Ray worker, over the same entries, so the two engines give the same columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medloop.engine.pool import BatchScorer, ScoreSpec, scan_pool
from medloop.progress import track

__all__ = ["score_local"]


def score_local(spec: ScoreSpec, progress: bool = True) -> dict[str, Any]:
    """Score the pool of ``spec`` in this process, streaming: at most one batch of images is in memory.

    Returns the columns of ``BatchScorer`` for the whole pool (ids, scores, ``embedding [N, F]`` float16), in
    the layout's order, and ``skipped`` (the DataErrors of entries left out under ``on_error: skip``).
    """
    entries, skipped = scan_pool(spec)
    scorer = BatchScorer(spec)
    parts: dict[str, list[np.ndarray]] = {}
    starts = range(0, len(entries), spec.batch_size)
    for start in track(starts, f"MC scoring (T={spec.n_mc_samples}, in process)", enabled=progress):
        for key, value in scorer(entries[start:start + spec.batch_size]).items():
            parts.setdefault(key, []).append(value)
    columns: dict[str, Any] = {k: np.concatenate(v) for k, v in parts.items()}
    columns["skipped"] = skipped + scorer.skipped
    return columns
