"""Mask autoencoder and the mask-conditioned cGAN networks: shapes, the paper's structure, ill cases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medloop.models.cgan import MaskConditionedGenerator, PairDiscriminator
from medloop.models.mask_ae import MaskAutoencoder
from medloop.seeding import torch_init


@pytest.mark.parametrize("size,latent,channels", [(32, 8, (8, 16)), (64, 16, (8, 16, 16, 16)), (48, 4, (4, 8))])
def test_autoencoder_latent_and_reconstruction_shapes(size, latent, channels):
    ae = MaskAutoencoder(size, latent, channels)
    mask = (torch.rand(3, 1, size, size) > 0.5).float()
    logits, z = ae(mask)
    assert z.shape == (3, latent) and logits.shape == mask.shape
    assert ae.decode(ae.encode(mask)).shape == mask.shape


def test_autoencoder_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible by 16"):
        MaskAutoencoder(40, 8, (8, 8, 8, 8))


@pytest.mark.parametrize("channels,size", [(1, 32), (3, 64)])
def test_generator_keeps_image_shape_and_uses_the_code(channels, size):
    with torch_init(0):
        g = MaskConditionedGenerator(channels, latent_dim=8, features=16, n_blocks=2, noise_channels=0).eval()
        for block in g.blocks:  # FiLM starts at zero: give it weights so z matters
            nn.init.normal_(block.film.weight, std=0.5)
        x, prior = torch.randn(2, channels, size, size), torch.rand(2, 1, size, size)
        y1, y2 = g(x, torch.randn(2, 8), prior), g(x, torch.randn(2, 8), prior)
    assert y1.shape == x.shape
    assert not torch.allclose(y1, y2)  # a different mask code gives a different image


def test_generator_has_the_papers_residual_blocks_and_resize_upsampling():
    g = MaskConditionedGenerator(1, 8, features=64, n_blocks=3, noise_channels=0)
    convs = [m for m in g.blocks[0].body if isinstance(m, nn.Conv2d)]
    assert len(g.blocks) == 3 and len(convs) == 2
    assert all(c.kernel_size == (3, 3) and c.out_channels == 64 for c in convs)
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.blocks[0].body)
    # nearest-neighbour upsampling + a 3x3 convolution: no transposed convolutions (checkerboard artifacts)
    assert sum(isinstance(m, nn.Upsample) for m in g.up) == 2
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in g.modules())


def test_discriminator_structure_and_output():
    d = PairDiscriminator(in_channels=3, features=8, dense=16)
    convs = [m for m in d.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 64, 64]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert sum(isinstance(m, nn.Linear) for m in d.classifier) == 2
    for size in (32, 64):
        logits = d(torch.randn(4, 2, size, size), torch.randn(4, 1, size, size))
        assert logits.shape == (4,)
        p = torch.sigmoid(logits)
        assert ((p > 0) & (p < 1)).all()


def test_generator_noise_channels_vary_the_output_and_are_given_by_the_caller():
    with torch_init(0):
        g = MaskConditionedGenerator(1, latent_dim=8, features=16, n_blocks=1, noise_channels=1).eval()
        x, z, prior = torch.randn(2, 1, 32, 32), torch.randn(2, 8), torch.rand(2, 1, 32, 32)
        n, other = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    assert torch.allclose(g(x, z, prior, n), g(x, z, prior, n))  # the same noise: the same image
    assert not torch.allclose(g(x, z, prior, n), g(x, z, prior, other))
    for bad in (None, torch.randn(2, 2, 32, 32)):  # no noise from a global generator: the caller draws it
        with pytest.raises(ValueError, match="noise must have shape"):
            g(x, z, prior, bad)
    deterministic = MaskConditionedGenerator(1, latent_dim=8, features=16, n_blocks=1, noise_channels=0).eval()
    assert deterministic.params["noise_channels"] == 0
    assert torch.allclose(deterministic(x, z, prior), deterministic(x, z, prior))


@pytest.mark.parametrize("params,match", [
    ({"in_channels": 0}, "in_channels"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"features": 1}, "features"),
    ({"n_blocks": -1}, "n_blocks"),
    ({"noise_channels": -1}, "noise_channels"),
])
def test_generator_ill_arguments_name_the_argument(params, match):
    with pytest.raises(ValueError, match=f"'{match}' parameter of MaskConditionedGenerator"):
        MaskConditionedGenerator(**{"in_channels": 1, "latent_dim": 8, "features": 8, "n_blocks": 1,
                                    "noise_channels": 0, **params})
