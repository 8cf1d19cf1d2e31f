"""Source views: Immerkaer's noise estimate, TV denoising that keeps a thin line a Gaussian blurs away."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medloop.synth.views import noise_sigma, source_view, tv_denoise


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
    tv_view = source_view(noisy, 0.5)
    assert torch.equal(tv_view, tv_denoise(noisy, 0.5)) and tv_view.dtype == noisy.dtype
    tv_view, gauss_view = tv_view[0, 0].numpy(), ndimage.gaussian_filter(noisy[0, 0].numpy(), 1.0)

    def flat_noise(v):
        return v[:, 5:25].std()

    def line_contrast(v):
        return v[:, 31].mean() - v[:, 5:25].mean()

    assert flat_noise(tv_view) < 0.6 * flat_noise(noisy[0, 0].numpy())
    assert line_contrast(tv_view) > 0.7 * 0.1
    assert line_contrast(gauss_view) < 0.5 * 0.1


def test_a_flat_image_and_a_zero_weight_leave_the_source_as_it_is():
    flat = torch.full((2, 1, 16, 16), 0.3)  # no noise to remove (estimated sigma 0)
    assert torch.equal(source_view(flat, 0.5), flat)
    x = torch.rand(2, 1, 16, 16)
    assert source_view(x, 0.0) is x
    with pytest.raises(ValueError, match="input_tv must be >= 0"):
        source_view(x, -0.1)
