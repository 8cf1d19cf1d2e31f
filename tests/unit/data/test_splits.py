"""Seeded, stratified splits by case: no case on two sides, class proportions kept, k-fold covers all."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.data import kfold_by_case, split_by_case
from medloop.errors import ConfigError, DataError


def _volumes(n_cases=10, slices=5):
    case_ids = [f"v{c:02d}" for c in range(n_cases) for _ in range(slices)]
    return case_ids


def test_split_never_puts_one_case_on_two_sides():
    case_ids = _volumes()
    split = split_by_case(case_ids, val=0.2, test=0.2, seed=0)
    sides = [{case_ids[i] for i in getattr(split, s)} for s in ("train", "val", "test")]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sum(len(getattr(split, s)) for s in ("train", "val", "test")) == len(case_ids)
    assert [len(s) for s in sides] == [6, 2, 2]


def test_split_is_seeded():
    case_ids = _volumes()
    a, b, c = (split_by_case(case_ids, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.test, b.test) and not np.array_equal(a.test, c.test)


def test_split_is_stratified_by_class():
    case_ids = [f"c{i}" for i in range(100)]
    labels = np.array([1] * 20 + [0] * 80)
    split = split_by_case(case_ids, labels, val=0.2, test=0.2, seed=3)
    for side in (split.val, split.test):
        assert labels[side].sum() == 4 and len(side) == 20  # 20% of each class


def test_split_too_few_cases_is_an_error():
    with pytest.raises(DataError, match=r"only 2 cases: too few for a train/val/test split"):
        split_by_case(["a", "b"], val=0.3, test=0.3)
    with pytest.raises(ConfigError, match="val \\+ test < 1"):
        split_by_case(["a", "b"], val=0.6, test=0.5)


def test_kfold_by_case_covers_every_sample_once_and_keeps_cases_whole():
    case_ids = _volumes(n_cases=10, slices=3)
    folds = kfold_by_case(case_ids, k=5, seed=0)
    assert len(folds) == 5
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(len(case_ids)))
    for tr, te in folds:
        assert not ({case_ids[i] for i in tr} & {case_ids[i] for i in te})


def test_kfold_stratifies_with_labels_and_rejects_too_many_folds():
    case_ids = [f"c{i}" for i in range(20)]
    labels = np.array([0, 1] * 10)
    for _, te in kfold_by_case(case_ids, labels, k=5, seed=0):
        assert labels[te].sum() == 2
    with pytest.raises(DataError, match="only 20 cases: cannot make 30 folds"):
        kfold_by_case(case_ids, k=30)


def test_split_accepts_a_dataset(acdc_tree):
    from medloop.data import load_dataset

    ds = load_dataset(str(acdc_tree), progress=False)
    split = split_by_case(ds, val=0.0, test=0.5, seed=0)
    train_cases = {ds.case_ids[i] for i in split.train}
    test_cases = {ds.case_ids[i] for i in split.test}
    assert len(train_cases) == 1 and len(test_cases) == 1 and train_cases != test_cases
