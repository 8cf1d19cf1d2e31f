"""Bayesian UNet segmenter: MONAI BasicUNet blocks, MC dropout in the decoder or before the output, per-pixel
log-variance.

Where the dropout sits decides what MC sampling repeats: ``forward_features`` is everything before the first
dropout (computed once per input) and ``forward_head`` the rest (run once per MC sample, ``medloop.uncertainty``).

- ``dropout_layout="decoder"`` (default): element-wise dropout after every convolution of every decoder block
  (Bayesian SegNet-like, Kendall et al. 2017). The decoder (about two thirds of a pass) and its full-resolution
  dropout masks repeat for every sample: T = 10 costs about 13 passes. The samples differ at every level of the
  decoder.
- ``dropout_layout="head"``: channel dropout (Tompson et al. 2015) on the last decoder feature map,
  before the 1x1 output convolutions. The whole UNet runs once; an MC sample costs one channel mask and two
  1x1 convolutions, so T = 10 samples cost about 1.5 passes (16 slices at 128 px, one thread). Each sample
  reweights the same features, so the samples vary where features are strong and disagree (boundaries, unclear
  structures), but they cannot change the features themselves.

Both produce per-pixel class logits and per-pixel, per-class log-variance (heteroscedastic segmentation,
Kendall & Gal 2017).
"""

from __future__ import annotations

import torch
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

from medloop.models.dropout import MCDropout, patch_dropout

__all__ = ["BayesianUNet", "DROPOUT_LAYOUTS"]

DEFAULT_CHANNELS = (16, 32, 64, 128, 256)
DROPOUT_LAYOUTS = ("decoder", "head")
_ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
_NORM = ("instance", {"affine": True})


class BayesianUNet(nn.Module):
    """2D UNet with MC dropout and a log-variance output.

    Args:
        in_channels: image channels.
        num_classes: label values including background.
        channels: feature maps per level, e.g. ``(16, 32, 64, 128, 256)`` (four downsamplings).
        dropout: MC dropout rate (of channels before the output, or of activations in each decoder block).
        heteroscedastic: add the per-pixel log-variance output.
        dropout_layout: ``"decoder"`` (dropout in every decoder block: MC sampling repeats the decoder) or
            ``"head"`` (channel dropout before the output convolutions: MC sampling repeats only those, about 9x
            faster at T = 10); see the module docstring.

    Shape: ``x [N, C, H, W] -> logits [N, K, H, W], log_var [N, K, H, W]``; H and W must be divisible
    by ``2 ** (len(channels) - 1)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 3, channels: tuple[int, ...] = DEFAULT_CHANNELS,
                 dropout: float = 0.2, heteroscedastic: bool = True, dropout_layout: str = "decoder"):
        super().__init__()
        if dropout_layout not in DROPOUT_LAYOUTS:
            raise ValueError(f"The 'dropout_layout' parameter of BayesianUNet must be one of "
                             f"{', '.join(DROPOUT_LAYOUTS)}; got {dropout_layout!r} instead")
        if len(channels) < 2:
            raise ValueError(f"The 'channels' parameter of BayesianUNet needs at least 2 levels; got {channels} instead")
        if num_classes < 2:
            raise ValueError(f"The 'num_classes' parameter of BayesianUNet must be >= 2; got {num_classes} instead")
        ch = list(channels)
        self.dropout_layout = dropout_layout
        block_dropout = dropout if dropout_layout == "decoder" else 0.0
        self.stem = TwoConv(2, in_channels, ch[0], _ACT, _NORM, True, 0.0)
        self.downs = nn.ModuleList(Down(2, ch[i], ch[i + 1], _ACT, _NORM, True, 0.0) for i in range(len(ch) - 1))
        self.ups = nn.ModuleList(
            UpCat(2, ch[i + 1], ch[i], ch[i], _ACT, _NORM, True, block_dropout, halves=i > 0)
            for i in reversed(range(len(ch) - 1))
        )
        self.head_dropout = MCDropout(dropout) if dropout_layout == "head" else None
        self.out = nn.Conv2d(ch[0], num_classes, 1)
        self.out_logvar = nn.Conv2d(ch[0], num_classes, 1) if heteroscedastic else None
        if self.out_logvar is not None:
            nn.init.zeros_(self.out_logvar.weight)
            nn.init.constant_(self.out_logvar.bias, -4.0)
        patch_dropout(self)
        self.divisor = 2 ** (len(ch) - 1)
        self.num_classes = num_classes

    def _check_size(self, x: torch.Tensor) -> None:
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"BayesianUNet needs H and W divisible by {self.divisor}; got {tuple(x.shape[-2:])}. "
                             f"Use a working size that is a multiple of {self.divisor}")

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats  # encoder maps, finest first

    def _decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        h = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            h = up(h, skip)
        return h

    def _output(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.head_dropout is None:
            return self.out(h), (self.out_logvar(h) if self.out_logvar is not None else None)
        keep = self.head_dropout(h.new_ones(h.shape[:2]))  # [N, C]: one draw per channel, not per pixel
        convs = [self.out] + ([self.out_logvar] if self.out_logvar is not None else [])
        weight = torch.cat([conv.weight[:, :, 0, 0] for conv in convs])  # [K', C]
        bias = torch.cat([conv.bias for conv in convs])
        # out(h * keep) == (weight * keep) @ h: the mask goes on the weights rather than on every pixel, and the
        # 1x1 convolutions run as one batched matmul (several times faster than Conv2d with few channels on CPU)
        y = torch.baddbmm(bias[None, :, None], weight[None] * keep[:, None, :], h.flatten(2))  # [N, K', H * W]
        y = y.view(h.shape[0], -1, *h.shape[2:])
        k = self.num_classes
        return y[:, :k], (y[:, k:] if self.out_logvar is not None else None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """What MC sampling computes once: the last decoder map ``[N, C0, H, W]`` (``head`` layout) or the
        encoder maps, finest first (``decoder`` layout)."""
        self._check_size(x)
        feats = self._encode(x)
        return self._decode(feats) if self.dropout_layout == "head" else feats

    def forward_head(self, feats: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What MC sampling repeats: ``forward_features``'s output -> logits, log-variance."""
        return self._output(feats if self.dropout_layout == "head" else self._decode(feats))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward_head(self.forward_features(x))

    def head_parameters(self) -> list[nn.Parameter]:
        """The last layer (the paper fine-tunes the last layer)."""
        params = list(self.out.parameters())
        return params + (list(self.out_logvar.parameters()) if self.out_logvar is not None else [])
