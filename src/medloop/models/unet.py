"""Bayesian UNet segmenter: MONAI BasicUNet blocks, dropout in the decoder only, per-pixel log-variance.

The encoder is deterministic (``forward_features`` returns its feature maps, computed once per input);
the decoder carries MC dropout and produces per-pixel class logits and per-pixel, per-class log-variance
(heteroscedastic segmentation, Kendall & Gal 2017).
"""

from __future__ import annotations

import torch
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

from medloop.models.dropout import patch_dropout

__all__ = ["BayesianUNet"]

DEFAULT_CHANNELS = (16, 32, 64, 128, 256)
_ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
_NORM = ("instance", {"affine": True})


class BayesianUNet(nn.Module):
    """2D UNet with MC dropout in the decoder and a log-variance output.

    Args:
        in_channels: image channels.
        num_classes: label values including background.
        channels: feature maps per level, e.g. ``(16, 32, 64, 128, 256)`` (four downsamplings).
        dropout: MC dropout rate in each decoder block.
        heteroscedastic: add the per-pixel log-variance output.

    Shape: ``x [N, C, H, W] -> logits [N, K, H, W], log_var [N, K, H, W]``; H and W must be divisible
    by ``2 ** (len(channels) - 1)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 3, channels: tuple[int, ...] = DEFAULT_CHANNELS,
                 dropout: float = 0.2, heteroscedastic: bool = True):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"The 'channels' parameter of BayesianUNet needs at least 2 levels; got {channels} instead")
        if num_classes < 2:
            raise ValueError(f"The 'num_classes' parameter of BayesianUNet must be >= 2; got {num_classes} instead")
        ch = list(channels)
        self.stem = TwoConv(2, in_channels, ch[0], _ACT, _NORM, True, 0.0)
        self.downs = nn.ModuleList(Down(2, ch[i], ch[i + 1], _ACT, _NORM, True, 0.0) for i in range(len(ch) - 1))
        self.ups = nn.ModuleList(
            UpCat(2, ch[i + 1], ch[i], ch[i], _ACT, _NORM, True, dropout, halves=i > 0) for i in reversed(range(len(ch) - 1))
        )
        self.out = nn.Conv2d(ch[0], num_classes, 1)
        self.out_logvar = nn.Conv2d(ch[0], num_classes, 1) if heteroscedastic else None
        if self.out_logvar is not None:
            nn.init.zeros_(self.out_logvar.weight)
            nn.init.constant_(self.out_logvar.bias, -4.0)
        patch_dropout(self)
        self.divisor = 2 ** (len(ch) - 1)
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"BayesianUNet needs H and W divisible by {self.divisor}; got {tuple(x.shape[-2:])}. "
                             f"Use a working size that is a multiple of {self.divisor}")
        feats = [self.stem(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats  # encoder maps, finest first

    def forward_head(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            h = up(h, skip)
        return self.out(h), (self.out_logvar(h) if self.out_logvar is not None else None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward_head(self.forward_features(x))

    def head_parameters(self) -> list[nn.Parameter]:
        """The last layer (the paper fine-tunes the last layer)."""
        params = list(self.out.parameters())
        return params + (list(self.out_logvar.parameters()) if self.out_logvar is not None else [])
