"""Mask-conditioned cGAN networks of Mahapatra et al., MICCAI 2018 (their Fig. 1).

``MaskConditionedGenerator`` takes the source image ``x`` and the latent code ``z`` of a (deformed) lung mask
and renders an image of the same size; ``PairDiscriminator`` judges (x, y) pairs. The training recipe
(adversarial + L1 + content losses) lives in ``medloop.training.cgan``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

__all__ = ["ResidualBlock", "MaskConditionedGenerator", "PairDiscriminator", "UPSAMPLING", "PADDING", "noise_sigma",
           "tv_denoise"]

UPSAMPLING = ("transpose", "resize")  # the generator's upsampling modes
PADDING = ("zeros", "reflect")  # the generator's convolution padding


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and ReLU, a skip connection, and ``z`` injected per block.

    The code modulates the block (feature-wise scale and shift from ``z``: FiLM), so the mask reaches every
    depth of the generator rather than only its input.
    """

    def __init__(self, features: int, latent_dim: int, padding: str = "zeros"):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1, bias=False, padding_mode=padding), nn.BatchNorm2d(features),
            nn.ReLU(True),
            nn.Conv2d(features, features, 3, padding=1, bias=False, padding_mode=padding), nn.BatchNorm2d(features),
        )
        self.film = nn.Linear(latent_dim, 2 * features)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(z)[:, :, None, None].chunk(2, dim=1)
        return torch.relu(h + self.body(h) * (1 + gamma) + beta)


class MaskConditionedGenerator(nn.Module):
    """G(x, z): source image ``[N, C, S, S]`` + mask code ``[N, latent_dim]`` -> image ``[N, C, S, S]``.

    The code enters twice: as a spatial channel (the mask autoencoder's decoding of ``z``, passed in as
    ``mask_prior [N, 1, S, S]``) and per residual block (FiLM). Two strided convolutions bring the 64-map
    residual trunk to 1/4 of the size (what makes 128-256 px trainable on a CPU); a full-resolution skip and
    a residual output (``x + delta``) keep the source's detail, so the generator learns the change.

    Args:
        in_channels: image channels.
        latent_dim: length of ``z``.
        features: feature maps of the residual blocks (the paper: 64).
        n_blocks: residual blocks.
        upsample: ``"transpose"`` (4x4 transposed convolutions) or ``"resize"`` (nearest-neighbour upsampling
            then a 3x3 convolution, which cannot make the checkerboard patterns transposed convolutions make:
            Odena et al., Distill 2016).
        padding: ``"zeros"`` or ``"reflect"`` padding of every convolution (reflection, as in the CycleGAN
            ResNet generator, gives the border no artificial edge to draw patterns from).
        noise_channels: channels of per-pixel standard normal noise given to the generator with its input
            (0: deterministic). The noise reaches the stem and the output convolutions, so the generator can
            render fine texture (detector noise, parenchyma) afresh for every variant.
        input_lowpass: Gaussian sigma (px) applied to the source image before the generator sees it (0: the
            source as given). The generator then gets the source's anatomy but not its fine texture, which it
            cannot copy and must render itself (with ``noise_channels``, a new realization per variant); the
            output is ``lowpass(x) + delta``. ``source_view`` is what it sees (the discriminator's condition).
        input_tv: like ``input_lowpass`` but edge-preserving: the source is denoised by total variation
            (scikit-image's Chambolle solver) with weight ``input_tv`` times the image's noise sigma
            (Immerkaer's estimate), which removes detector noise but keeps thin, high-contrast lines such as
            vessels that a Gaussian blurs away. Computed on a detached copy: the source needs no gradient.
    """

    def __init__(self, in_channels: int = 1, latent_dim: int = 64, features: int = 64, n_blocks: int = 6,
                 upsample: str = "transpose", noise_channels: int = 0, padding: str = "zeros",
                 input_lowpass: float = 0.0, input_tv: float = 0.0):
        super().__init__()
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsample must be one of {UPSAMPLING}; got {upsample!r}")
        if padding not in PADDING:
            raise ValueError(f"padding must be one of {PADDING}; got {padding!r}")
        if noise_channels < 0:
            raise ValueError(f"noise_channels must be >= 0; got {noise_channels}")
        if input_lowpass < 0:
            raise ValueError(f"input_lowpass must be >= 0; got {input_lowpass}")
        if input_tv < 0 or (input_tv > 0 and input_lowpass > 0):
            raise ValueError(f"input_tv must be >= 0 and cannot be combined with input_lowpass; got input_tv={input_tv}, "
                             f"input_lowpass={input_lowpass}")
        self.params = {"in_channels": in_channels, "latent_dim": latent_dim, "features": features, "n_blocks": n_blocks,
                       "upsample": upsample, "noise_channels": noise_channels, "padding": padding,
                       "input_lowpass": float(input_lowpass), "input_tv": float(input_tv)}
        self.noise_channels = noise_channels
        self.input_tv = float(input_tv)
        self.smooth = None
        if input_lowpass > 0:
            from monai.networks.layers import GaussianFilter

            self.smooth = GaussianFilter(2, float(input_lowpass))
        c = in_channels + 1 + noise_channels
        pm = padding
        self.stem = nn.Sequential(nn.Conv2d(c, features // 2, 7, padding=3, padding_mode=pm), nn.BatchNorm2d(features // 2),
                                  nn.ReLU(True))
        self.down = nn.Sequential(
            nn.Conv2d(features // 2, features, 3, stride=2, padding=1, padding_mode=pm), nn.BatchNorm2d(features),
            nn.ReLU(True),
            nn.Conv2d(features, features, 3, stride=2, padding=1, padding_mode=pm), nn.BatchNorm2d(features), nn.ReLU(True),
        )
        self.blocks = nn.ModuleList([ResidualBlock(features, latent_dim, padding) for _ in range(n_blocks)])
        def up(cin: int, cout: int) -> list[nn.Module]:
            if upsample == "transpose":
                conv = [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)]
            else:
                conv = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1, padding_mode=pm)]
            return [*conv, nn.BatchNorm2d(cout), nn.ReLU(True)]

        self.up = nn.Sequential(*up(features, features), *up(features, features // 2))
        self.out = nn.Sequential(nn.Conv2d(features + c, features // 2, 3, padding=1, padding_mode=pm), nn.ReLU(True),
                                 nn.Conv2d(features // 2, in_channels, 3, padding=1, padding_mode=pm))

    def noise_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """Shape of the noise for a batch of images ``x [N, C, S, S]``: ``(N, noise_channels, S, S)``."""
        return (x.shape[0], self.noise_channels, *x.shape[2:])

    def source_view(self, x: torch.Tensor) -> torch.Tensor:
        """The source image as the generator sees it: low-passed with ``input_lowpass``, TV-denoised with
        ``input_tv``, else ``x`` itself."""
        if self.input_tv > 0:
            return tv_denoise(x, self.input_tv)
        return x if self.smooth is None else self.smooth(x)

    def forward(self, x: torch.Tensor, z: torch.Tensor, mask_prior: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise [N, noise_channels, S, S]``: drawn here (torch's global generator) when not given."""
        return self.from_view(self.source_view(x), z, mask_prior, noise)

    def from_view(self, x: torch.Tensor, z: torch.Tensor, mask_prior: torch.Tensor,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` for a source already passed through ``source_view`` (a caller that also needs the view,
        as the trainer does for D's condition, computes it once)."""
        parts = [x, mask_prior]
        if self.noise_channels:
            shape = self.noise_shape(x)
            if noise is None:
                noise = torch.randn(shape, device=x.device, dtype=x.dtype)
            elif tuple(noise.shape) != shape:
                raise ValueError(f"noise must have shape {shape}; got {tuple(noise.shape)}")
            parts.append(noise)
        inp = torch.cat(parts, dim=1)
        skip = self.stem(inp)
        h = self.down(skip)
        for block in self.blocks:
            h = block(h, z)
        h = self.up(h)
        return x + self.out(torch.cat([h, skip, inp], dim=1))


def noise_sigma(image: np.ndarray) -> float:
    """Noise standard deviation of a 2-D image, Immerkaer's estimate (CVIU 1996): the mean absolute response
    to the difference of two Laplacians, which cancels smooth structure, scaled to a Gaussian's sigma."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    response = ndimage.convolve(image.astype(np.float64), kernel)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)


def tv_denoise(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Total-variation denoising of every channel of ``x [N, C, H, W]`` (detached), with weight ``strength``
    times that channel's estimated noise sigma (``noise_sigma``). A channel without noise (a flat or perfectly
    smooth image: estimated sigma 0) is returned as it is."""
    from skimage.restoration import denoise_tv_chambolle

    arr = x.detach().cpu().numpy()
    out = arr.copy()
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            weight = strength * noise_sigma(arr[i, c])
            if weight > 0:
                out[i, c] = denoise_tv_chambolle(arr[i, c], weight=weight)
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


class PairDiscriminator(nn.Module):
    """D(x, y): eight 3x3 convolutions (64 -> 512 maps, stride 2 where the count doubles and at the end),
    LeakyReLU, then two dense layers and a sigmoid probability that ``y`` is real for condition ``x``.

    ``x`` is the condition (source image and conditioning-mask channel), ``y`` the judged image. An adaptive
    average pool to ``pool`` x ``pool`` before the dense layers keeps their size independent of the image size.

    Returns logits ``[N]`` (apply ``torch.sigmoid`` for the paper's probability; losses use the logits).
    """

    def __init__(self, in_channels: int = 3, features: int = 64, dense: int = 1024, pool: int = 4):
        super().__init__()
        self.params = {"in_channels": in_channels, "features": features, "dense": dense, "pool": pool}
        widths = [features, features, 2 * features, 2 * features, 4 * features, 4 * features, 8 * features, 8 * features]
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            stride = 2 if i % 2 == 1 else 1
            layers += [nn.Conv2d(c, w, 3, stride=stride, padding=1)]
            if i > 0:
                layers += [nn.BatchNorm2d(w)]
            layers += [nn.LeakyReLU(0.2, True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(nn.Linear(c * pool * pool, dense), nn.LeakyReLU(0.2, True), nn.Linear(dense, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.features(torch.cat([x, y], dim=1)))
        return self.classifier(h.flatten(1)).squeeze(1)
