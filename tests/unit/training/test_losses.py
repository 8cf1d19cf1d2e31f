"""Heteroscedastic losses behave as Kendall & Gal describe."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medloop.training import heteroscedastic_ce, heteroscedastic_seg_loss


def test_attenuated_ce_reduces_to_cross_entropy_for_tiny_variance():
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    lv = torch.full((8, 3), -30.0)
    assert torch.allclose(heteroscedastic_ce(logits, lv, target, 20), F.cross_entropy(logits, target), atol=1e-4)
    assert torch.equal(heteroscedastic_ce(logits, None, target), F.cross_entropy(logits, target))


def test_variance_attenuates_a_confidently_wrong_prediction():
    logits = torch.tensor([[6.0, -6.0]])  # confident and wrong
    target = torch.tensor([1])
    g = torch.Generator().manual_seed(0)
    low = heteroscedastic_ce(logits, torch.full((1, 2), -10.0), target, 200, generator=g)
    high = heteroscedastic_ce(logits, torch.full((1, 2), 4.0), target, 200, generator=g)
    assert high < low  # admitting noise lowers the loss of an unfittable sample


def test_class_weights_scale_the_samples():
    logits, target = torch.zeros(2, 2), torch.tensor([0, 1])
    logits[1, 1] = 5.0  # sample of class 1 is easy
    w = torch.tensor([1.0, 0.0])
    loss = heteroscedastic_ce(logits, torch.full((2, 2), -20.0), target, 4, weight=w)
    assert torch.allclose(loss, F.cross_entropy(logits[:1], target[:1]), atol=1e-4)


def test_segmentation_loss_trains_the_variance_and_prefers_the_truth():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    good = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 10 - 5
    bad = -good
    lv = torch.zeros(1, 2, 8, 8, requires_grad=True)
    assert heteroscedastic_seg_loss(good, lv, target) < heteroscedastic_seg_loss(bad, lv, target)
    heteroscedastic_seg_loss(bad, lv, target).backward()
    assert lv.grad.abs().sum() > 0
