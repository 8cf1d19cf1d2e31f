"""Seeded train/val/test splits and k-fold by case: all samples of a case (slices of a volume, frames
of a patient) land on the same side. Stratified by the case's class where labels are known."""

from __future__ import annotations

import collections
import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from medloop.errors import ConfigError, DataError

__all__ = ["Split", "split_by_case", "kfold_by_case", "case_labels"]


@dataclasses.dataclass(frozen=True)
class Split:
    """Sample indices of each side (sorted)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def to_dict(self) -> dict[str, list[int]]:
        return {k: getattr(self, k).tolist() for k in ("train", "val", "test")}


def _cases_and_labels(data, labels) -> tuple[list[str], np.ndarray]:
    if hasattr(data, "case_ids"):
        case_ids, labels = data.case_ids, data.labels if labels is None else labels
    else:
        case_ids = list(data)
    labels = np.full(len(case_ids), -1) if labels is None else np.asarray(labels)
    if len(labels) != len(case_ids):
        raise ConfigError(f"got {len(labels)} labels for {len(case_ids)} samples; give one label per sample")
    return list(case_ids), labels


def case_labels(case_ids: Sequence[str], labels: np.ndarray) -> dict[str, int]:
    """The most frequent known label of each case (-1 when none of its samples has one)."""
    votes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for case, label in zip(case_ids, labels):
        votes[case][int(label)] += 0 if label < 0 else 1
    return {case: (max((c for c in cnt if c >= 0), key=lambda c: cnt[c], default=-1)) for case, cnt in votes.items()}


def _allocate(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` over strata proportionally to ``sizes`` (largest remainder), capped by size."""
    n = sum(sizes)
    exact = [total * s / n for s in sizes]
    out = [min(int(np.floor(e)), s) for e, s in zip(exact, sizes)]
    for i in sorted(range(len(sizes)), key=lambda i: exact[i] - out[i], reverse=True):
        if sum(out) >= total:
            break
        if out[i] < sizes[i]:
            out[i] += 1
    return out


def split_by_case(data, labels=None, *, val: float = 0.15, test: float = 0.15, seed: int = 0,
                  stratify: bool = True) -> Split:
    """Seeded, stratified train/val/test split by case.

    Args:
        data: a MedDataset, or a sequence of case ids (one per sample).
        labels: per-sample labels (-1 unknown); taken from the dataset when omitted.
        val, test: fractions of cases.
        seed: the split's seed; ``default_rng(seed)`` is the split's only random stream (kept unnamed so
            published splits stay as they were).
        stratify: keep class proportions (by each case's majority label) on every side.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"split fractions must satisfy 0 <= val, test and val + test < 1; got val={val}, test={test}")
    case_ids, labels = _cases_and_labels(data, labels)
    per_case = case_labels(case_ids, labels)
    cases = list(per_case)
    n = len(cases)
    n_test, n_val = int(round(test * n)), int(round(val * n))
    n_test = max(n_test, 1 if test > 0 else 0)
    n_val = max(n_val, 1 if val > 0 else 0)
    if n - n_test - n_val < 1:
        raise DataError(f"only {n} cases: too few for a train/val/test split of {1 - val - test:.2f}/{val}/{test}; "
                        "add cases or lower the val/test fractions")
    rng = np.random.default_rng(seed)
    strata: dict[int, list[str]] = collections.defaultdict(list)
    for case in cases:
        strata[per_case[case] if stratify else 0].append(case)
    keys = sorted(strata)
    groups = [list(rng.permutation(strata[k])) for k in keys]
    sizes = [len(g) for g in groups]
    test_counts = _allocate(n_test, sizes)
    val_counts = _allocate(n_val, [s - t for s, t in zip(sizes, test_counts)])
    side: dict[str, str] = {}
    for group, t, v in zip(groups, test_counts, val_counts):
        for i, case in enumerate(group):
            side[case] = "test" if i < t else "val" if i < t + v else "train"
    index = {k: np.array(sorted(i for i, c in enumerate(case_ids) if side[c] == k), dtype=np.int64) for k in ("train", "val", "test")}
    return Split(index["train"], index["val"], index["test"])


def kfold_by_case(data, labels=None, *, k: int = 5, seed: int = 0, stratify: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded k-fold cross-validation by case: ``[(train_idx, test_idx), ...]`` over samples.

    Uses scikit-learn's StratifiedGroupKFold when labels are known (GroupKFold otherwise).
    """
    case_ids, labels = _cases_and_labels(data, labels)
    n_cases = len(set(case_ids))
    if k < 2:
        raise ConfigError(f"k-fold needs k >= 2; got k={k}")
    if n_cases < k:
        raise DataError(f"only {n_cases} cases: cannot make {k} folds by case; lower k to at most {n_cases}")
    per_case = case_labels(case_ids, labels)
    group_of = {c: i for i, c in enumerate(dict.fromkeys(case_ids))}
    groups = np.array([group_of[c] for c in case_ids])
    y = np.array([per_case[c] for c in case_ids])
    known = (y >= 0).all() and len(set(y.tolist())) > 1
    x = np.zeros(len(case_ids))
    if stratify and known:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members"
            folds = list(splitter.split(x, y, groups))
    else:
        folds = list(GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y, groups))
    return [(np.sort(tr), np.sort(te)) for tr, te in folds]
