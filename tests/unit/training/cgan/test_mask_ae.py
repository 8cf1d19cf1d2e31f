"""Mask autoencoder training: it learns the masks, Dice is measured right, the run is seeded."""

from __future__ import annotations

import pytest
import torch

from medloop.metrics import mask_dice
from medloop.training.cgan import CGANConfig, reconstruction_dice, train_mask_autoencoder
from tests.unit.training.cgan.conftest import TINY, lungs


def test_mask_dice():
    a = torch.zeros(2, 8, 8, dtype=torch.bool)
    a[0, :4] = True
    b = a.clone()
    b[0, :2] = False
    d = mask_dice(a, b)
    assert d[0] == pytest.approx(2 * 16 / (32 + 16)) and d[1] == 1.0


def test_autoencoder_reconstructs_tiny_masks():
    _, masks = lungs(12)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 40, "ae_lr": 3e-3})
    ae, report = train_mask_autoencoder(masks[:10], cfg, masks[10:], progress=False)
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]
    assert report["train_dice"] > 0.8 and report["val_dice"] > 0.7
    assert report["val_dice"] == pytest.approx(reconstruction_dice(ae, masks[10:]))
    assert ae.encode(masks[:2, None].float()).shape == (2, 8)


def test_autoencoder_training_is_seeded_and_leaves_the_global_generator_alone():
    _, masks = lungs(4)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 1})
    state = torch.get_rng_state()
    a, _ = train_mask_autoencoder(masks, cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b, _ = train_mask_autoencoder(masks, cfg, progress=False)
    c, _ = train_mask_autoencoder(masks, cfg.replace(seed=1), progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
