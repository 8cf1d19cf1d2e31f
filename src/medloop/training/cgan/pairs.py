"""Training pairs of the mask-conditioned cGAN, made by the perturbations themselves.

A real image ``x_a`` with lung mask ``m_a`` is deformed into a crude ``(x_b, m_b)``; the generator gets ``x_b``
and the code of ``m_a`` and must render ``x_a``. So it learns to move a lung boundary to where the code says,
with realistic tissue, which is what it does at generation time (source image + code of a deformed mask). A
fraction ``identity_prob`` of pairs are the real image with its own mask (the code then asks for no change).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from medloop.synth.perturb import BoundaryDisplacement, geometric_ops
from medloop.training.cgan.config import CGANConfig

__all__ = ["training_pairs", "epoch_pairs"]

Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def training_pairs(images: np.ndarray, masks: np.ndarray, config: CGANConfig, rng: np.random.Generator) -> Pairs:
    """(input, target mask, target, band) for a batch: the input is a boundary-deformed crude copy of the target.

    Each target is first flipped / rotated / translated as variants are (the perturbation config's geometric
    ops, with their probabilities), so the generator is trained on the poses it is given at generation time.

    ``images [B, 1, S, S]``, ``masks [B, S, S]``. The band ``[B, S, S]`` marks where the lung boundary moved
    (pixels that changed side, dilated by one pixel): the L1 term weighs it ``band_weight`` times.
    """
    from scipy import ndimage

    perturb = config.perturb_config
    op = BoundaryDisplacement(perturb)
    images, masks = images.copy(), masks > 0
    for i in range(len(images)):
        images[i, 0], posed, _ = geometric_ops(images[i, 0], masks[i].astype(np.int64), perturb, rng)
        masks[i] = posed > 0
    inputs = images.copy()
    band = np.zeros(masks.shape, dtype=bool)
    for i in range(len(images)):
        if rng.random() >= config.identity_prob:
            crude, moved, _ = op(images[i, 0], masks[i].astype(np.int64), rng)
            inputs[i, 0] = crude
            band[i] = ndimage.binary_dilation((moved > 0) != masks[i])
    return (torch.from_numpy(inputs).float(), torch.from_numpy(masks), torch.from_numpy(images).float(),
            torch.from_numpy(band))


def epoch_pairs(images: np.ndarray, masks: np.ndarray, config: CGANConfig, rng: np.random.Generator,
                gen: torch.Generator) -> Iterator[Pairs]:
    """One epoch of ``training_pairs`` batches in the order ``gen`` shuffles; a last batch of one image is
    skipped (batch norm in training mode needs two)."""
    for idx in torch.randperm(len(images), generator=gen).split(config.batch_size):
        if len(idx) >= 2:
            yield training_pairs(images[idx.numpy()], masks[idx.numpy()], config, rng)
