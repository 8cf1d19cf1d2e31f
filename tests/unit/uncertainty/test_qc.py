"""The discriminator as quality control: calibration to a Dice, and how well it flags bad slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.uncertainty.qc import DiceCalibration, qc_metrics, slice_dice


def test_calibration_recovers_a_linear_relation_and_clips_to_a_dice():
    rng = np.random.default_rng(0)
    plaus = rng.uniform(0.5, 0.9, 40)
    dice = 2.0 * plaus - 0.9 + rng.normal(0, 0.01, 40)
    cal = DiceCalibration.fit(plaus, dice)
    assert cal.slope == pytest.approx(2.0, abs=0.1) and cal.intercept == pytest.approx(-0.9, abs=0.1)
    assert cal.n == 40 and cal.lo == pytest.approx(plaus.min())
    assert cal.predict([0.0, 0.7, 1.0]).tolist() == pytest.approx([0.0, 0.5, 1.0], abs=0.05)  # clipped at 0 and 1
    assert DiceCalibration.from_dict(cal.to_dict()) == cal


def test_calibration_with_too_few_slices_predicts_their_mean():
    cal = DiceCalibration.fit([0.6, 0.8], [0.4, 0.9])
    assert cal.slope == 0 and cal.predict([0.1, 0.99]).tolist() == pytest.approx([0.65, 0.65])
    assert DiceCalibration.fit([0.7, 0.7, 0.7], [0.2, 0.4, 0.6]).predict([0.9]).tolist() == pytest.approx([0.4])
    with pytest.raises(ValueError, match="as many"):
        DiceCalibration.fit([0.5, 0.6], [0.5])


def test_qc_metrics_on_known_predictions():
    true = np.array([0.9, 0.8, 0.5, 0.3, 0.95])
    perfect = qc_metrics(true, true, 0.7)
    assert perfect["mae"] == 0 and perfect["auroc"] == 1.0 and perfect["n_below"] == 2
    assert perfect["flag_precision"] == 1.0 and perfect["flag_recall"] == 1.0
    reversed_ = qc_metrics(1 - true, true, 0.7)
    assert reversed_["auroc"] == 0.0 and reversed_["mae"] == pytest.approx(np.abs(1 - 2 * true).mean())
    assert qc_metrics([0.8, 0.9], [0.9, 0.95], 0.7)["auroc"] is None  # nothing to flag: no AUROC


def test_slice_dice_averages_the_structures_present():
    truth = torch.zeros(3, 4, 4, dtype=torch.long)
    truth[0, :2] = 1
    truth[1, :2], truth[1, 2:] = 1, 2
    pred = truth.clone()
    pred[1, 2:] = 0  # slice 1: class 1 right, class 2 missed
    d = slice_dice(pred, truth, 3)
    assert d.tolist() == pytest.approx([1.0, 0.5, 1.0])  # slice 2: both empty


def test_a_fit_that_ranks_plausible_maps_worse_is_not_trusted():
    cal = DiceCalibration.fit([0.3, 0.35, 0.4, 0.45], [0.6, 0.5, 0.3, 0.2])  # a handful of slices at the low end
    assert cal.slope == 0 and cal.predict([0.2, 0.9]).tolist() == pytest.approx([0.4, 0.4])
