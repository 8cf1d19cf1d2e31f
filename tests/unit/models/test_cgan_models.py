"""Mask autoencoder and the mask-conditioned cGAN networks: shapes, the paper's structure, ill cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medloop.models.cgan import MaskConditionedGenerator, PairDiscriminator, noise_sigma, tv_denoise
from medloop.models.mask_ae import MaskAutoencoder


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
    torch.manual_seed(0)
    g = MaskConditionedGenerator(channels, latent_dim=8, features=16, n_blocks=2).eval()
    for block in g.blocks:  # FiLM starts at zero: give it weights so z matters
        nn.init.normal_(block.film.weight, std=0.5)
    x, prior = torch.randn(2, channels, size, size), torch.rand(2, 1, size, size)
    y1, y2 = g(x, torch.randn(2, 8), prior), g(x, torch.randn(2, 8), prior)
    assert y1.shape == x.shape
    assert not torch.allclose(y1, y2)  # a different mask code gives a different image


def test_generator_has_the_papers_residual_blocks():
    g = MaskConditionedGenerator(1, 8, features=64, n_blocks=3)
    convs = [m for m in g.blocks[0].body if isinstance(m, nn.Conv2d)]
    assert len(g.blocks) == 3 and len(convs) == 2
    assert all(c.kernel_size == (3, 3) and c.out_channels == 64 for c in convs)
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.blocks[0].body)


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


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_generator_upsampling_modes_keep_the_size(upsample):
    g = MaskConditionedGenerator(1, latent_dim=8, features=16, n_blocks=1, upsample=upsample).eval()
    out = g(torch.rand(2, 1, 32, 32), torch.randn(2, 8), torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 1, 32, 32) and g.params["upsample"] == upsample
    with pytest.raises(ValueError, match="upsample"):
        MaskConditionedGenerator(1, 8, 16, 1, upsample="bilinear-ish")


def test_generator_noise_channels_vary_the_output_and_check_their_shape():
    torch.manual_seed(0)
    g = MaskConditionedGenerator(1, latent_dim=8, features=16, n_blocks=1, upsample="resize", noise_channels=1).eval()
    x, z, prior = torch.randn(2, 1, 32, 32), torch.randn(2, 8), torch.rand(2, 1, 32, 32)
    n = torch.randn(2, 1, 32, 32)
    assert torch.allclose(g(x, z, prior, n), g(x, z, prior, n))  # the same noise: the same image
    assert not torch.allclose(g(x, z, prior, n), g(x, z, prior, torch.randn(2, 1, 32, 32)))
    assert not torch.allclose(g(x, z, prior), g(x, z, prior))  # drawn afresh when not given
    with pytest.raises(ValueError, match="noise must have shape"):
        g(x, z, prior, torch.randn(2, 2, 32, 32))
    deterministic = MaskConditionedGenerator(1, latent_dim=8, features=16, n_blocks=1).eval()
    assert deterministic.params["noise_channels"] == 0
    assert torch.allclose(deterministic(x, z, prior), deterministic(x, z, prior))


def test_generator_reflect_padding_applies_to_every_convolution():
    g = MaskConditionedGenerator(1, latent_dim=8, features=16, n_blocks=2, upsample="resize", padding="reflect")
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.padding_mode == "reflect" for c in convs)
    assert g(torch.rand(2, 1, 32, 32), torch.randn(2, 8), torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="padding must be one of"):
        MaskConditionedGenerator(1, 8, padding="circularish")


def test_generator_input_lowpass_sees_only_the_smoothed_source():
    torch.manual_seed(0)
    low = MaskConditionedGenerator(1, latent_dim=8, features=16, n_blocks=1, upsample="resize", input_lowpass=1.0).eval()
    plain = MaskConditionedGenerator(1, latent_dim=8, features=16, n_blocks=1, upsample="resize").eval()
    plain.load_state_dict(low.state_dict(), strict=False)  # the same weights; only the low-pass differs
    x, z, prior = torch.rand(2, 1, 32, 32), torch.randn(2, 8), torch.rand(2, 1, 32, 32)
    smooth = low.source_view(x)
    assert smooth.std() < x.std()  # fine texture removed
    assert torch.allclose(low(x, z, prior), plain(smooth, z, prior), atol=1e-6)
    # a zero-mean checkerboard is almost all fine texture: the low-passed generator barely sees it
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 0.2 - 0.1).expand(2, 1, 32, 32)
    assert (low(x + checker, z, prior) - low(x, z, prior)).abs().max() < 0.1 * (
        plain(x + checker, z, prior) - plain(x, z, prior)).abs().max()
    assert low.params["input_lowpass"] == 1.0 and plain.params["input_lowpass"] == 0.0
    assert torch.equal(plain.source_view(x), x)
    with pytest.raises(ValueError, match="input_lowpass"):
        MaskConditionedGenerator(1, 8, input_lowpass=-1.0)


def test_noise_sigma_estimates_the_noise_of_a_structured_image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64] / 64
    smooth = 0.4 + 0.2 * np.sin(3 * xx) * np.cos(2 * yy)
    for sigma in (0.01, 0.05):
        assert noise_sigma(smooth + rng.normal(0, sigma, smooth.shape)) == pytest.approx(sigma, rel=0.15)
    assert noise_sigma(smooth) < 0.002


def test_tv_view_removes_noise_but_keeps_a_thin_line_a_gaussian_blurs_away():
    rng = np.random.default_rng(1)
    clean = np.full((64, 64), 0.4)
    clean[:, 31] += 0.1  # a 1 px vessel, 5 noise sigmas bright
    noisy = torch.from_numpy(clean + rng.normal(0, 0.02, clean.shape)).float()[None, None]
    tv = MaskConditionedGenerator(1, 8, features=16, n_blocks=1, input_tv=0.5).eval()
    gauss = MaskConditionedGenerator(1, 8, features=16, n_blocks=1, input_lowpass=1.0).eval()
    tv_view, gauss_view = tv.source_view(noisy)[0, 0].numpy(), gauss.source_view(noisy)[0, 0].numpy()
    assert torch.equal(tv.source_view(noisy), tv_denoise(noisy, 0.5))

    def flat_noise(v):
        return v[:, 5:25].std()

    def line_contrast(v):
        return v[:, 31].mean() - v[:, 5:25].mean()

    assert flat_noise(tv_view) < 0.6 * flat_noise(noisy[0, 0].numpy())
    assert line_contrast(tv_view) > 0.7 * 0.1
    assert line_contrast(gauss_view) < 0.5 * 0.1
    assert tv.params["input_tv"] == 0.5
    flat = torch.full((2, 1, 16, 16), 0.3)  # no noise to remove (estimated sigma 0): returned unchanged
    assert torch.equal(tv.source_view(flat), flat)
    with pytest.raises(ValueError, match="input_tv"):
        MaskConditionedGenerator(1, 8, input_tv=0.5, input_lowpass=1.0)
