"""Training pairs: a boundary-deformed input, the target in the pose of generation, the band that moved."""

from __future__ import annotations

import numpy as np
import torch

from medloop.training.cgan import CGANConfig, epoch_pairs, training_pairs
from tests.unit.training.cgan.conftest import TINY, lungs


def test_training_pairs_deform_inputs_and_keep_targets():
    images, masks = lungs(6)
    cfg = CGANConfig(**{**TINY, "identity_prob": 0.0})  # TINY: no flips, rotations or translations
    inputs, tmasks, targets, _ = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
    assert torch.equal(targets, images) and torch.equal(tmasks, masks > 0)
    assert all(not torch.equal(inputs[i], images[i]) for i in range(6))


def test_training_pairs_take_the_poses_of_generation():
    images, masks = lungs(4)
    flip_only = {"p_flip": 1.0, "p_rotate": 0.0, "p_translate": 0.0}
    cfg = CGANConfig(**{**TINY, "identity_prob": 1.0, "perturb": flip_only})
    inputs, tmasks, targets, band = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
    assert torch.equal(targets, images.flip(-1)) and torch.equal(tmasks, masks.flip(-1) > 0)
    assert torch.equal(inputs, targets) and not band.any()  # identity pairs: nothing moved
    rotate = CGANConfig(**{**TINY, "identity_prob": 0.0, "perturb": {"p_flip": 0.0, "p_rotate": 1.0, "p_translate": 0.0}})
    _, tmasks, targets, _ = training_pairs(images.numpy(), masks.numpy(), rotate, np.random.default_rng(0))
    assert not torch.equal(tmasks, masks > 0) and tmasks.sum() > 0.8 * (masks > 0).sum()


def test_band_marks_where_the_boundary_moved():
    images, masks = lungs(4)
    cfg = CGANConfig(**{**TINY, "identity_prob": 0.0})
    inputs, _, targets, band = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
    assert band.shape == (4, 32, 32) and band.any(dim=(1, 2)).all()
    changed = (inputs != targets)[:, 0]
    assert (band | ~changed).all()  # every changed pixel lies in the band


def test_epoch_pairs_cover_the_images_once_and_skip_a_batch_of_one():
    images, masks = lungs(9)
    cfg = CGANConfig(**{**TINY, "identity_prob": 1.0})
    batches = list(epoch_pairs(images.numpy(), masks.numpy() > 0, cfg, np.random.default_rng(0),
                               torch.Generator().manual_seed(0)))
    assert [len(b[0]) for b in batches] == [4, 4]  # 9 images in batches of 4: the last one (1 image) is skipped
    seen = torch.cat([b[2] for b in batches])
    assert len({float(t.sum()) for t in seen}) == 8  # eight different images
