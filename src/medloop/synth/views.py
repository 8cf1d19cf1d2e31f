"""The source view: the source image as the mask-conditioned generator sees it (pure functions, no networks).

The generator renders ``view + delta``; by default the view is the source denoised by total variation, so the
detector noise is gone while thin, high-contrast lines such as vessels stay, and the generator renders fine
texture of its own. The trainer computes the view once per step (the discriminator's condition and the
generator's input); the sampler computes it before rendering, with the setting recorded in the generator file.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["noise_sigma", "tv_denoise", "source_view"]


def noise_sigma(image: np.ndarray) -> float:
    """Noise standard deviation of a 2-D image, Immerkaer's estimate (CVIU 1996): the mean absolute response
    to the difference of two Laplacians, which cancels smooth structure, scaled to a Gaussian's sigma."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    response = ndimage.convolve(image.astype(np.float64), kernel)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


def tv_denoise(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Total-variation denoising (scikit-image's Chambolle solver, on the CPU) of every channel of
    ``x [N, C, H, W]`` (detached), with weight ``strength`` times that channel's estimated noise sigma
    (``noise_sigma``). A channel without noise (a flat or perfectly smooth image: estimated sigma 0) is returned
    as it is (the solver divides by the weight)."""
    from skimage.restoration import denoise_tv_chambolle

    arr = x.detach().cpu().numpy()
    out = arr.copy()
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            weight = strength * noise_sigma(arr[i, c])
            if weight > 0:
                out[i, c] = denoise_tv_chambolle(arr[i, c], weight=weight)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def source_view(x: torch.Tensor, input_tv: float) -> torch.Tensor:
    """What the generator sees of sources ``x [N, C, S, S]``: TV-denoised with weight ``input_tv`` times the
    noise sigma, or ``x`` itself when ``input_tv`` is 0 (the generator then copies the source's noise)."""
    if input_tv < 0:
        raise ValueError(f"input_tv must be >= 0; got {input_tv}")
    return tv_denoise(x, input_tv) if input_tv > 0 else x
