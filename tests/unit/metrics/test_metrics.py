"""Metrics on constructed inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medloop.metrics import classification_metrics, expected_calibration_error, segmentation_metrics


def test_sensitivity_specificity_auc_binary():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    y = np.array([0, 0, 1, 1, 1])
    m = classification_metrics(probs, y)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == 1.0
    assert m["accuracy"] == pytest.approx(0.8) and m["auc"] == 1.0


def test_auc_is_nan_with_one_class_and_multiclass_works():
    assert math.isnan(classification_metrics(np.array([[0.3, 0.7]]), np.array([1]))["auc"])
    probs = np.eye(3)[[0, 1, 2, 0]] * 0.9 + 0.1 / 3
    assert classification_metrics(probs, np.array([0, 1, 2, 0]))["auc"] == 1.0


def test_ece_zero_for_calibrated_and_large_for_overconfident():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([[0.99, 0.01]] * 4), np.array([1, 1, 1, 1])) == pytest.approx(0.99)


def test_dice_and_hausdorff_per_class():
    target = torch.zeros(1, 20, 20, dtype=torch.long)
    target[0, 5:15, 5:10] = 1
    target[0, 5:15, 10:15] = 2
    pred = target.clone()
    pred[0, 5:15, 10:15] = 0
    pred[0, 5:15, 12:15] = 2  # class 2 shrunk by 2 px on one side
    m = segmentation_metrics(pred, target, {0: "background", 1: "myocardium", 2: "blood pool"})
    assert m["dice"]["myocardium"] == pytest.approx(1.0)
    assert m["dice"]["blood pool"] == pytest.approx(2 * 30 / (30 + 50))
    assert m["hd_max"]["myocardium"] == 0 and m["hd_max"]["blood pool"] == pytest.approx(2.0)
    assert m["hd95"]["blood pool"] <= m["hd_max"]["blood pool"]
