"""Losses of the mask-conditioned cGAN (Mahapatra et al., MICCAI 2018, Eqs. 1-5).

The generator's loss is adversarial (``adversarial_loss`` of D's logits for its pairs) + ``l1_weight`` * L1 to
the target (low-passed with ``l1_lowpass``, the band where the boundary moved weighing ``band_weight``) +
``texture_weight`` * the fine-texture term + the paper's content loss ``nmi_weight * NMI(x, y) - vgg_weight *
VGG(x, y) - mse_weight * MSE(x, y)``, which pushes the output ``y`` away from the input ``x`` (diversity).
``GeneratorLoss`` holds all but the adversarial logits, which need the discriminator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medloop.errors import ConfigError
from medloop.training.cgan.config import CGANConfig

__all__ = ["TEXTURE_WINDOW", "nmi", "VGGFeatures", "adversarial_loss", "GeneratorLoss"]

# sigma (px) of the Gaussian window over which the fine texture's local energy is measured
TEXTURE_WINDOW = 4.0


def nmi(x: torch.Tensor, y: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Differentiable normalized mutual information per image, ``2 I(X;Y) / (H(X) + H(Y))`` in [0, 1].

    Parzen-window (Gaussian kernel, half a bin wide) joint histogram of the two images, each min-max scaled to
    [0, 1] (scale factors detached). Shape: ``x, y [N, ...] -> [N]``.
    """
    def scaled(t: torch.Tensor) -> torch.Tensor:
        t = t.flatten(1)
        lo, hi = t.min(1, keepdim=True)[0].detach(), t.max(1, keepdim=True)[0].detach()
        return (t - lo) / (hi - lo).clamp_min(1e-6)

    centres = torch.linspace(0.0, 1.0, bins, device=x.device, dtype=x.dtype)
    sigma = 0.5 / (bins - 1)

    def weights(t: torch.Tensor) -> torch.Tensor:  # [N, P, B]
        w = torch.exp(-0.5 * ((t[..., None] - centres) / sigma) ** 2)
        return w / w.sum(-1, keepdim=True).clamp_min(1e-12)

    wx, wy = weights(scaled(x)), weights(scaled(y))
    joint = wx.transpose(1, 2) @ wy / wx.shape[1]  # [N, B, B]
    px, py = joint.sum(2), joint.sum(1)
    eps = 1e-10
    h_x = -(px * (px + eps).log()).sum(1)
    h_y = -(py * (py + eps).log()).sum(1)
    h_xy = -(joint * (joint + eps).log()).sum((1, 2))
    return 2.0 * (h_x + h_y - h_xy) / (h_x + h_y).clamp_min(eps)


class VGGFeatures(nn.Module):
    """Frozen VGG16 trunk up to relu4_1 (the ReLU after the 8th convolution); L2 feature distance.

    Built from the ``features`` of a ``VGG16Classifier`` (ImageNet weights loaded from a local file, or the
    project's own trained classifier). ``imagenet=True`` maps [0, 1] gray images to ImageNet statistics.
    """

    def __init__(self, vgg_features: nn.Sequential, imagenet: bool, source: str):
        super().__init__()
        layers, convs = [], 0
        for layer in vgg_features:
            layers.append(layer)
            if isinstance(layer, nn.Conv2d):
                convs += 1
            if isinstance(layer, nn.ReLU) and convs == 8:
                break
        if convs < 8:
            raise ConfigError("VGG features for the content loss need 8 convolutions (relu4_1); got a shorter network")
        self.net = nn.Sequential(*[self._not_inplace(m) for m in layers]).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.imagenet = imagenet
        self.source = source

    @staticmethod
    def _not_inplace(m: nn.Module) -> nn.Module:
        return nn.ReLU() if isinstance(m, nn.ReLU) else m

    def train(self, mode: bool = True) -> "VGGFeatures":
        super().train(False)  # always frozen, batch norm in inference mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.imagenet:
            x = (x - 0.449) / 0.226
        return self.net(x)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Squared L2 distance of relu4_1 features per image ``[N]``, each position's feature vector first
        scaled to unit length (as LPIPS does), so the term lies in [0, 4] whichever VGG is used."""
        fx, fy = self(x), self(y)  # [N, K, h, w]
        fx = fx / fx.norm(dim=1, keepdim=True).clamp_min(1e-8)
        fy = fy / fy.norm(dim=1, keepdim=True).clamp_min(1e-8)
        return (fx - fy).pow(2).sum(1).flatten(1).mean(1)


def adversarial_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """The paper's sigmoid cross-entropy of D's logits ``[N]`` against the label real (1) / generated (0)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class GeneratorLoss(nn.Module):
    """The generator's loss from its output, the target and the adversarial logits (Eqs. 1-5 and the texture
    term), weighted by a ``CGANConfig``; ``vgg`` is the content loss's VGG16 (None: that term is 0).

    Shapes: source ``x``, output ``y`` and ``target [N, C, S, S]``; ``band [N, S, S]`` the pixels where the
    boundary moved (or None); ``fake_logits [N]`` D's logits for the generated pairs.
    """

    def __init__(self, config: CGANConfig, vgg: VGGFeatures | None):
        super().__init__()
        self.config = config
        self.vgg = vgg
        self.lowpass = self.window = None
        if config.l1_lowpass > 0:  # a texture_weight needs it (the config checks)
            from monai.networks.layers import GaussianFilter

            self.lowpass = GaussianFilter(2, config.l1_lowpass)
            if config.texture_weight > 0:
                self.window = GaussianFilter(2, TEXTURE_WINDOW)

    def l1(self, y: torch.Tensor, target: torch.Tensor, band: torch.Tensor | None) -> torch.Tensor:
        """L1 to the target (both low-passed when ``l1_lowpass``); pixels in ``band`` weigh ``band_weight``."""
        if self.lowpass is not None:
            y, target = self.lowpass(y), self.lowpass(target)
        if band is None or self.config.band_weight == 1.0:
            return F.l1_loss(y, target)
        w = 1.0 + (self.config.band_weight - 1.0) * band.to(y.device, y.dtype)[:, None]
        return ((y - target).abs() * w).sum() / (w.sum() * y.shape[1])

    def texture_energy(self, y: torch.Tensor) -> torch.Tensor:
        """Local energy of the fine texture ``[N, C, S, S]``: sqrt(window(high-pass(y)^2))."""
        fine = y - self.lowpass(y)
        return (self.window(fine.pow(2)) + 1e-8).sqrt()

    def texture(self, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 between the local fine-texture energies of ``y`` and ``target`` (0 when the term is off)."""
        if self.window is None:  # texture_weight 0
            return y.new_zeros(())
        return F.l1_loss(self.texture_energy(y), self.texture_energy(target))

    def content_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The content loss's terms, batch means: NMI, mean squared difference, squared VGG feature distance
        (0 for a term whose weight is 0)."""
        cfg = self.config
        zero = x.new_zeros(())
        return {
            "nmi": nmi(x, y).mean() if cfg.nmi_weight else zero,
            "mse": (y - x).pow(2).flatten(1).mean(1).mean() if cfg.mse_weight else zero,
            "vgg": self.vgg.distance(x, y).mean() if (self.vgg is not None and cfg.vgg_weight) else zero,
        }

    def forward(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, band: torch.Tensor | None,
                fake_logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss and its terms (floats, for the history)."""
        cfg = self.config
        adv = adversarial_loss(fake_logits, True)
        l1 = self.l1(y, target, band)
        texture = self.texture(y, target)
        terms = self.content_terms(x, y)
        content = cfg.nmi_weight * terms["nmi"] - cfg.vgg_weight * terms["vgg"] - cfg.mse_weight * terms["mse"]
        loss = cfg.adv_weight * adv + cfg.l1_weight * l1 + cfg.texture_weight * texture + content
        return loss, {"g_adv": adv.item(), "g_l1": l1.item(), "g_texture": texture.item(),
                      **{k: v.item() for k, v in terms.items()}}
