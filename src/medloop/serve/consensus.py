"""The consensus of several reads of one image: a majority vote per pixel and per image class.

Ties go to the smaller value, so the consensus is the same whatever order the reads came in: background (0)
before any structure, structure 1 before structure 2, class 0 before class 1. With two readers the consensus mask
keeps a pixel where both painted the same structure; a pixel only one painted is background (not taken on faith),
and one the two painted with different structures goes to the smaller structure value (the tie rule). Where the two
chose different image classes the consensus is the run's first class; such images
head the agreement report's list of disagreements, for a third reader or a discussion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CONSENSUS_RULE", "consensus", "majority"]

CONSENSUS_RULE = ("majority vote per pixel and per image class; a tie goes to the smaller value (background before "
                  "a structure, the lower class index first)")


def majority(values: np.ndarray) -> np.ndarray:
    """The most frequent value along axis 0 of non-negative integers ``[R, ...] -> [...]``; the smallest of the
    most frequent on a tie."""
    values = np.asarray(values, dtype=np.int64)
    counts = np.stack([(values == v).sum(0) for v in range(int(values.max()) + 1)])  # [V, ...]
    return counts.argmax(0)  # argmax takes the first (smallest) value among equal counts


def consensus(masks: Sequence[np.ndarray], classes: Sequence[int | None]) -> tuple[np.ndarray, int | None]:
    """The consensus label map ``[H, W]`` (uint8) and image class (``None`` when the reads have none) of the
    reads ``masks[i]``, ``classes[i]``."""
    mask = majority(np.stack([np.asarray(m) for m in masks])).astype(np.uint8)
    known = [c for c in classes if c is not None]
    cls = int(majority(np.asarray(known))) if known else None
    return mask, cls
