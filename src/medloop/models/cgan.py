"""Mask-conditioned cGAN networks of Mahapatra et al., MICCAI 2018 (their Fig. 1).

``MaskConditionedGenerator`` takes the source view (the source image as ``medloop.synth.views.source_view``
prepares it) and the latent code ``z`` of a (deformed) lung mask and renders an image of the same size;
``PairDiscriminator`` judges (condition, image) pairs. The constructors take every option of the recipe without
a default: ``medloop.training.cgan.build_generator`` / ``build_discriminator`` build them from a ``CGANConfig``,
whose defaults are the only ones. The training recipe lives in ``medloop.training.cgan``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResidualBlock", "MaskConditionedGenerator", "PairDiscriminator"]


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and ReLU, a skip connection, and ``z`` injected per block.

    The code modulates the block (feature-wise scale and shift from ``z``: FiLM), so the mask reaches every
    depth of the generator rather than only its input.
    """

    def __init__(self, features: int, latent_dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features), nn.ReLU(True),
            nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features),
        )
        self.film = nn.Linear(latent_dim, 2 * features)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(z)[:, :, None, None].chunk(2, dim=1)
        return torch.relu(h + self.body(h) * (1 + gamma) + beta)


class MaskConditionedGenerator(nn.Module):
    """G(view, z): source view ``[N, C, S, S]`` + mask code ``[N, latent_dim]`` -> image ``[N, C, S, S]``.

    The code enters twice: as a spatial channel (the mask autoencoder's decoding of ``z``, passed in as
    ``mask_prior [N, 1, S, S]``) and per residual block (FiLM). Two strided convolutions bring the residual
    trunk to 1/4 of the size (what makes 128-256 px trainable on a CPU); nearest-neighbour upsampling then a
    3x3 convolution brings it back (no checkerboard patterns, unlike transposed convolutions: Odena et al.,
    Distill 2016). A full-resolution skip and a residual output (``view + delta``) keep the source's detail, so
    the generator learns the change.

    Args:
        in_channels: image channels.
        latent_dim: length of ``z``.
        features: feature maps of the residual blocks (the paper: 64).
        n_blocks: residual blocks.
        noise_channels: channels of per-pixel standard normal noise given to the generator with its input
            (0: deterministic). The noise reaches the stem and the output convolutions, so the generator can
            render fine texture (detector noise, parenchyma) afresh for every variant.
    """

    def __init__(self, in_channels: int, latent_dim: int, features: int, n_blocks: int, noise_channels: int):
        super().__init__()
        for name, value, least in (("in_channels", in_channels, 1), ("latent_dim", latent_dim, 1),
                                   ("features", features, 2), ("n_blocks", n_blocks, 0),
                                   ("noise_channels", noise_channels, 0)):
            if value < least:
                raise ValueError(f"The '{name}' parameter of MaskConditionedGenerator must be >= {least}; got "
                                 f"{value} instead")
        self.params = {"in_channels": in_channels, "latent_dim": latent_dim, "features": features,
                       "n_blocks": n_blocks, "noise_channels": noise_channels}
        self.noise_channels = noise_channels
        c = in_channels + 1 + noise_channels
        self.stem = nn.Sequential(nn.Conv2d(c, features // 2, 7, padding=3), nn.BatchNorm2d(features // 2), nn.ReLU(True))
        self.down = nn.Sequential(
            nn.Conv2d(features // 2, features, 3, stride=2, padding=1), nn.BatchNorm2d(features), nn.ReLU(True),
            nn.Conv2d(features, features, 3, stride=2, padding=1), nn.BatchNorm2d(features), nn.ReLU(True),
        )
        self.blocks = nn.ModuleList([ResidualBlock(features, latent_dim) for _ in range(n_blocks)])

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1),
                    nn.BatchNorm2d(cout), nn.ReLU(True)]

        self.up = nn.Sequential(*up(features, features), *up(features, features // 2))
        self.out = nn.Sequential(nn.Conv2d(features + c, features // 2, 3, padding=1), nn.ReLU(True),
                                 nn.Conv2d(features // 2, in_channels, 3, padding=1))

    def noise_shape(self, view: torch.Tensor) -> tuple[int, ...]:
        """Shape of the noise for a batch ``view [N, C, S, S]``: ``(N, noise_channels, S, S)``."""
        return (view.shape[0], self.noise_channels, *view.shape[2:])

    def forward(self, view: torch.Tensor, z: torch.Tensor, mask_prior: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """``view [N, C, S, S]`` the source view, ``noise [N, noise_channels, S, S]`` (drawn by the caller from
        its own seeded generator; required with noise channels, ignored without)."""
        parts = [view, mask_prior]
        if self.noise_channels:
            shape = self.noise_shape(view)
            if noise is None or tuple(noise.shape) != shape:
                raise ValueError(f"noise must have shape {shape}; got "
                                 f"{None if noise is None else tuple(noise.shape)}")
            parts.append(noise)
        inp = torch.cat(parts, dim=1)
        skip = self.stem(inp)
        h = self.down(skip)
        for block in self.blocks:
            h = block(h, z)
        h = self.up(h)
        return view + self.out(torch.cat([h, skip, inp], dim=1))


class PairDiscriminator(nn.Module):
    """D(x, y): eight 3x3 convolutions (64 -> 512 maps, stride 2 where the count doubles and at the end),
    LeakyReLU, then two dense layers and a sigmoid probability that ``y`` is real for condition ``x``.

    ``x`` is the condition (source image and conditioning-mask channel), ``y`` the judged image. An adaptive
    average pool to ``pool`` x ``pool`` before the dense layers keeps their size independent of the image size.

    Returns logits ``[N]`` (apply ``torch.sigmoid`` for the paper's probability; losses use the logits).
    """

    def __init__(self, in_channels: int, features: int, dense: int, pool: int = 4):
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
