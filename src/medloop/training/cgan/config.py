"""The options of the mask-conditioned cGAN recipe: the one place that holds their defaults."""

from __future__ import annotations

import dataclasses

from medloop.config import Config
from medloop.errors import ConfigError
from medloop.synth.perturb import PerturbConfig

__all__ = ["CGANConfig"]


@dataclasses.dataclass(frozen=True)
class CGANConfig(Config):
    """Mask autoencoder + cGAN training. Defaults follow the paper where it says (64 maps, lambda 10).

    Options tried and rejected are lines in ``benchmarks/RESULTS.md`` / the README, not fields here.

    Attributes:
        latent_dim: length of the mask code z.
        ae_channels, ae_epochs, ae_lr: mask autoencoder widths and training.
        g_features, g_blocks: generator residual trunk (the paper: 64 maps).
        d_features, d_dense: discriminator base width (doubles to 8x) and dense layer size.
        epochs, batch_size, lr: cGAN training (Adam, betas 0.5 / 0.999 as pix2pix; D's rate is twice G's).
        adv_weight, l1_weight: adversarial and L1 weights (the paper: lambda = 10 for L1).
        nmi_weight, vgg_weight, mse_weight: the three terms of the paper's content loss
            ``nmi_weight * NMI(x, y) - vgg_weight * VGG(x, y) - mse_weight * MSE(x, y)``, which pushes the output
            ``y`` away from the input ``x`` (diversity).
        identity_prob: fraction of training pairs that ask for no change.
        band_weight: weight of the L1 term on the pixels where the boundary moved (1: plain L1). The moved
            band is a few percent of the image; without the weight L1 is satisfied by copying the input.
        g_ema: decay of an exponential moving average of the generator's weights (0: off). The average (with a
            warm-up, decay ``min(g_ema, (1 + t) / (10 + t))`` at step t) is the generator that renders variants:
            it smooths out where the adversarial game happened to be when training stopped (measured: less grain
            and steadier label preservation across seeds).
        g_noise: channels of per-pixel noise the generator gets (0: deterministic generator).
        l1_lowpass: Gaussian sigma (px) applied to output and target before the L1 term (0: plain L1). The L1
            then pins the anatomy (structure coarser than the sigma) but not the fine texture, which the
            content loss pushes away from the source and the discriminator keeps realistic: with ``g_noise``,
            each variant gets its own texture.
        g_input_tv: the generator's source view (and the discriminator's condition) is the source denoised by
            total variation with weight ``g_input_tv`` times the image's estimated noise sigma
            (``medloop.synth.views``): detector noise goes, thin vessels stay (0: the source as given, then the
            generator copies the source's noise and its variants are near-copies).
        texture_weight: weight of the fine-texture term (needs ``l1_lowpass``): L1 between the local energy of
            the output's and the target's fine texture (what the low-pass removes). It keeps the amount of
            texture and noise at the target's level, place by place, while leaving the realization free.
        vgg: VGG16 for the content loss: a local torchvision ImageNet ``vgg16``/``vgg16_bn`` file or a
            ``medloop train --model vgg16`` checkpoint; ``None`` trains the project's own vgg16 classifier
            (``vgg_width``, ``vgg_epochs``) on the labeled images first. The run record says which was used.
        perturb: parameters of ``PerturbConfig`` used for the training pairs (boundary displacement).
    """

    latent_dim: int = 64
    ae_channels: tuple[int, ...] = (16, 32, 64, 64)
    ae_epochs: int = 30
    ae_lr: float = 1e-3
    g_features: int = 64
    g_blocks: int = 6
    d_features: int = 64
    d_dense: int = 1024
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-4
    adv_weight: float = 1.0
    l1_weight: float = 10.0
    nmi_weight: float = 0.05
    vgg_weight: float = 0.5
    mse_weight: float = 0.05
    identity_prob: float = 0.2
    band_weight: float = 10.0
    g_ema: float = 0.99
    g_noise: int = 1
    l1_lowpass: float = 1.0
    g_input_tv: float = 0.5
    texture_weight: float = 10.0
    vgg: str | None = None
    vgg_width: int = 16
    vgg_epochs: int = 8
    perturb: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        for name in ("latent_dim", "g_features", "g_blocks", "d_features", "d_dense", "batch_size", "vgg_width"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The '{name}' parameter of CGANConfig must be >= 1; got {getattr(self, name)} instead")
        for name in ("epochs", "ae_epochs", "vgg_epochs", "adv_weight", "l1_weight", "nmi_weight", "vgg_weight",
                     "mse_weight", "g_noise", "l1_lowpass", "g_input_tv", "texture_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"The '{name}' parameter of CGANConfig must be >= 0; got {getattr(self, name)} instead")
        if self.texture_weight > 0 and self.l1_lowpass <= 0:
            raise ConfigError("The 'texture_weight' parameter of CGANConfig needs 'l1_lowpass' > 0 (the fine texture "
                              "is what the low-pass removes); set l1_lowpass, e.g. 1.0, or texture_weight 0")
        if self.band_weight < 1.0:
            raise ConfigError(f"The 'band_weight' parameter of CGANConfig must be >= 1; got {self.band_weight}")
        if not 0.0 <= self.g_ema < 1.0:
            raise ConfigError(f"The 'g_ema' parameter of CGANConfig must be in [0, 1); got {self.g_ema}")
        if not 0.0 <= self.identity_prob <= 1.0:
            raise ConfigError(f"The 'identity_prob' parameter of CGANConfig must be in [0, 1]; got {self.identity_prob}")
        PerturbConfig.from_dict(self.perturb, where="cgan.perturb")

    @property
    def perturb_config(self) -> PerturbConfig:
        return PerturbConfig.from_dict(self.perturb)
