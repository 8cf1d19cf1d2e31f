"""Metrics as pure functions."""

from medloop.metrics.classification import classification_metrics, expected_calibration_error
from medloop.metrics.plain import plain
from medloop.metrics.segmentation import mask_dice, segmentation_metrics

__all__ = ["classification_metrics", "expected_calibration_error", "segmentation_metrics", "mask_dice", "plain"]
