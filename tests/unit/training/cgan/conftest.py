"""Tiny lung images and a tiny recipe for the cGAN tests (32 px, a few maps: seconds on a CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.models.mask_ae import MaskAutoencoder
from medloop.seeding import torch_init

NO_POSE = {"p_flip": 0.0, "p_rotate": 0.0, "p_translate": 0.0}  # the geometric ops cost ~0.2 s per image
TINY = dict(latent_dim=8, ae_channels=(8, 16), g_features=8, g_blocks=1, d_features=4, d_dense=8, batch_size=4,
            perturb={"reference_size": 32, "displacement": [1.0, 3.0], **NO_POSE}, vgg_weight=0.0, device="cpu")


def lungs(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``[n, 1, size, size]`` (dark lungs on a bright body, a little noise) and their lung masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks, images = [], []
    for _ in range(n):
        m = np.zeros((size, size), dtype=np.int64)
        for cx in (0.3, 0.7):
            a, b = size * rng.uniform(0.11, 0.15), size * rng.uniform(0.25, 0.32)
            m[((xx - size * cx) / a) ** 2 + ((yy - size / 2) / b) ** 2 <= 1] = 1
        masks.append(m)
        images.append(np.where(m > 0, 0.3, 0.7) + 0.03 * rng.standard_normal((size, size)))
    return torch.tensor(np.stack(images), dtype=torch.float32)[:, None], torch.from_numpy(np.stack(masks))


@pytest.fixture
def ae() -> MaskAutoencoder:
    """An untrained mask autoencoder of the tiny recipe (the trainer only needs its code and decoding)."""
    with torch_init(0):
        return MaskAutoencoder(32, TINY["latent_dim"], TINY["ae_channels"])
