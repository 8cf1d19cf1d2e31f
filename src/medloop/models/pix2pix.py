"""pix2pix networks for collaborative segmentation (Isola et al. 2017; Ravanbakhsh et al.).

The generator is medloop's ``BayesianUNet`` (a U-Net with skip connections built from MONAI blocks; its dropout
is pix2pix's noise and what makes MC-dropout baselines possible, before the output or in the decoder:
``Pix2PixConfig.dropout_layout``); it maps an image to C-class label-map logits. ``Pix2PixDiscriminator`` is MONAI's ``PatchDiscriminator`` over (image, label map) pairs,
with the number of strided layers chosen so its receptive field is pix2pix's 70 px at 256 px, scaled to the
working size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator
from torch import nn

__all__ = ["Pix2PixDiscriminator", "patch_receptive_field", "layers_for_size"]


def patch_receptive_field(num_layers: int, kernel: int = 4) -> int:
    """Receptive field (px) of MONAI's PatchDiscriminator with ``num_layers`` (3 -> 70, as pix2pix)."""
    strides = [2] + [2] * (num_layers - 1) + [1] + [1]
    field, jump = 1, 1
    for s in strides:
        field += (kernel - 1) * jump
        jump *= s
    return field


def layers_for_size(size: int) -> int:
    """Layers whose receptive field is closest to 70 * size / 256 (pix2pix's 70x70 PatchGAN at 256 px)."""
    target = 70 * size / 256
    return min(range(1, 6), key=lambda n: (abs(patch_receptive_field(n) - target), n))


class Pix2PixDiscriminator(nn.Module):
    """PatchGAN D(x, y): image ``[N, C, H, W]`` + label map (one-hot or probabilities) ``[N, K, H, W]`` ->
    patch logits ``[N, 1, h, w]`` (each judges one receptive field: high = plausible pair).

    Args:
        in_channels: image channels C.
        num_classes: label-map channels K.
        size: working size; sets the number of layers (receptive field) unless ``num_layers`` is given.
        features: width of the first layer (pix2pix: 64).
        one_hot_input: D judges one-hot label maps (``judge`` turns probabilities into their argmax one-hot,
            with straight-through gradients); else it judges probabilities as given.
    """

    def __init__(self, in_channels: int, num_classes: int, size: int = 256, features: int = 64,
                 num_layers: int | None = None, one_hot_input: bool = False):
        super().__init__()
        self.one_hot_input = one_hot_input
        self.num_layers = num_layers or layers_for_size(size)
        self.receptive_field = patch_receptive_field(self.num_layers)
        self.net = PatchDiscriminator(spatial_dims=2, channels=features, in_channels=in_channels + num_classes,
                                      out_channels=1, num_layers_d=self.num_layers)

    def forward(self, image: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, label_map], dim=1))[-1]

    def judge(self, image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Patch logits for a prediction given as class probabilities ``[N, K, H, W]``, in the form D was
        trained on (one-hot argmax with straight-through gradients when ``one_hot_input``)."""
        if self.one_hot_input:
            hard = F.one_hot(probs.argmax(1), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
            probs = hard + probs - probs.detach()
        return self(image, probs)
