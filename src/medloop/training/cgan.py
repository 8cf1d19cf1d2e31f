"""Training recipe of the mask-conditioned cGAN (Mahapatra et al., MICCAI 2018, Eqs. 1-5).

Training pairs come from the perturbations themselves: a real image ``x_a`` with lung mask ``m_a`` is
deformed into a crude ``(x_b, m_b)``; the generator gets ``x_b`` and the code of ``m_a`` and must render
``x_a``. So it learns to move a lung boundary to where the code says, with realistic tissue, which is what
it does at generation time (source image + code of a deformed mask). A fraction ``identity_prob`` of pairs
are the real image with its own mask (the code then asks for no change).

Losses, each weighted by the config: conditional adversarial (D judges the pair (condition, image), the
condition being the input image and the conditioning mask) + ``l1_weight`` * L1 to the target
+ ``content_weight`` * (``nmi_weight`` * NMI(x, y) - ``vgg_weight`` * VGG(x, y) - ``mse_weight`` * MSE(x, y)),
the paper's content loss, which pushes the output ``y`` away from the input ``x`` (diversity).

By default each variant is a new acquisition of the source's anatomy (measured in the README): the generator
sees the source denoised by total variation (``g_input_tv``: detector noise removed, thin vessels kept), gets
a noise channel (``g_noise``) and renders its own fine texture, an L1 on low-passed images pins the anatomy
(``l1_lowpass``) and a fine-texture term keeps the amount of texture at the target's (``texture_weight``).
A weight average of G renders the variants (``g_ema``). Opt-in: a Gaussian-low-passed source instead
(``g_input_lowpass``), a least-squares adversarial loss (``gan_loss``), L2 instead of squared distances in
the content loss and caps on the reward for distance (``vgg_distance``, ``vgg_cap``, ``mse_distance``,
``mse_cap``). ``g_noise=0 l1_lowpass=0 texture_weight=0 g_input_tv=0 vgg_weight=0.3 g_ema=0`` is the earlier default, realistic but
close to a copy of its source.

D judges real and generated pairs in one batch, in its own update and when it scores G; after training, G's
batch-norm statistics are recomputed with its final weights (``g_bn_passes``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medloop.config import Config
from medloop.errors import ConfigError
from medloop.models.cgan import PADDING, UPSAMPLING, MaskConditionedGenerator, PairDiscriminator
from medloop.metrics.segmentation import mask_dice
from medloop.models.mask_ae import MaskAutoencoder
from medloop.progress import make_progress
from medloop.synth.perturb import BoundaryDisplacement, PerturbConfig, geometric_ops

GAN_LOSSES = ("bce", "lsgan")
DISTANCES = ("squared", "l2")

__all__ = ["GAN_LOSSES", "DISTANCES", "CGANConfig", "nmi", "VGGFeatures", "rewarded_distance", "train_mask_autoencoder", "train_cgan", "training_pairs", "CGANTrainer"]


@dataclasses.dataclass(frozen=True)
class CGANConfig(Config):
    """Mask autoencoder + cGAN training. Defaults follow the paper where it says (64 maps, lambda 10).

    Attributes:
        latent_dim: length of the mask code z.
        ae_channels, ae_epochs, ae_lr: mask autoencoder widths and training.
        g_features, g_blocks: generator residual trunk (the paper: 64 maps).
        g_upsample: ``transpose`` or ``resize`` (nearest + conv: no checkerboard artifacts) in the generator.
        d_features, d_dense: discriminator base width (doubles to 8x) and dense layer size.
        epochs, batch_size, lr: cGAN training (Adam, betas 0.5 / 0.999 as pix2pix).
        d_lr_factor: the discriminator's learning rate is ``lr * d_lr_factor`` (two time-scale updates).
        d_joint_batch: judge real and generated pairs in one batch (shared batch-norm statistics, so an artifact
            common to all generated images is not normalised away), in D's update and when D scores the generator.
        adv_weight, l1_weight: adversarial and L1 weights (the paper: lambda = 10 for L1).
        content_weight, nmi_weight, vgg_weight, mse_weight: the content loss and its three terms.
        vgg_cap: the VGG term rewards each image's distance from its input only up to this value (0: no cap).
            Beyond it the term has no gradient, so the generator gains nothing by buying more distance with
            grain or brightness shifts (the clamped diversity term of diversity-sensitive cGANs, Yang et al.
            2019).
        vgg_distance: ``squared`` (mean squared distance of unit-length features, in [0, 4]) or ``l2`` (its square
            root, in [0, 2]). Pushing away with a squared distance has no force once ``y`` is close to ``x``,
            so the term can collapse to nothing while L1 keeps pulling; the L2 distance keeps its push.
        mse_distance, mse_cap: the same for the MSE term: ``l2`` uses the root mean square difference, and
            ``mse_cap`` (in the units of that distance; 0: no cap) clamps each image's reward. A pixel-level push
            is blind to what a classifier learned, unlike the VGG term with the project's own classifier.
        identity_prob: fraction of training pairs that ask for no change.
        augment_geometry: apply the perturbation config's flips, rotations and translations (with their
            probabilities) to each training pair first, so the generator is trained on the poses it is given at
            generation time (variants are flipped / rotated / translated before it renders them).
        band_weight: weight of the L1 term on the pixels where the boundary moved (1: plain L1). The moved
            band is a few percent of the image; without the weight L1 is satisfied by copying the input.
        g_ema: decay of an exponential moving average of the generator's weights (default 0.99; 0: off). The
            average (with a warm-up, decay ``min(g_ema, (1 + t) / (10 + t))`` at step t) is the generator that
            renders variants: it smooths out where the adversarial game happened to be when training stopped
            (measured: less grain and steadier label preservation across seeds).
        g_bn_passes: passes over fresh training pairs that recompute the generator's batch-norm statistics with
            its final weights after training (0: keep the running averages gathered during training, which
            mix many earlier generators).
        gan_loss: ``bce`` (the paper's sigmoid cross-entropy) or ``lsgan`` (least squares on D's output,
            Mao et al. 2017: gradients that do not vanish when D is confident, a steadier game).
        g_padding: ``zeros`` or ``reflect`` padding of the generator's convolutions.
        g_noise: channels of per-pixel noise the generator gets (0: deterministic generator). Default 1.
        l1_lowpass: Gaussian sigma (px) applied to output and target before the L1 term (0: plain L1). The L1
            then pins the anatomy (structure coarser than the sigma) but not the fine texture, which the
            content loss pushes away from the source and the discriminator keeps realistic: with ``g_noise``,
            each variant gets its own texture.
        g_input_lowpass: Gaussian sigma (px) of the low-pass the generator applies to its source image (0: the
            source as given; the discriminator's condition is the same view). The generator cannot copy the
            source's fine texture, so with ``g_noise`` and ``texture_weight`` it renders a texture of its own
            for every variant: diversity in texture and noise, while ``l1_lowpass`` pins the anatomy. Set it
            to the ``l1_lowpass`` sigma (what the L1 pins is what the generator sees).
        g_input_tv: the edge-preserving alternative to ``g_input_lowpass``: the generator (and the
            discriminator's condition) sees the source denoised by total variation with weight ``g_input_tv``
            times the image's estimated noise sigma; detector noise goes, thin vessels stay (default 0.5; 0: the
            source as given, then the generator copies the source's noise and its variants are near-copies).
        texture_weight: weight of the fine-texture term (needs ``l1_lowpass``): L1 between the local energy of
            the output's and the target's fine texture (what the low-pass removes; energy = square root of its
            square averaged over a Gaussian window of ``texture_window`` px). It keeps the amount of texture and
            noise at the target's level, place by place, while leaving the realization free.
        texture_window: sigma (px) of that window.
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
    g_upsample: str = "resize"
    d_features: int = 64
    d_dense: int = 1024
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-4
    d_lr_factor: float = 2.0
    d_joint_batch: bool = True
    adv_weight: float = 1.0
    l1_weight: float = 10.0
    content_weight: float = 1.0
    nmi_weight: float = 0.05
    vgg_weight: float = 0.5
    vgg_cap: float = 0.0
    vgg_distance: str = "squared"
    mse_distance: str = "squared"
    mse_cap: float = 0.0
    mse_weight: float = 0.05
    identity_prob: float = 0.2
    augment_geometry: bool = True
    band_weight: float = 10.0
    g_ema: float = 0.99
    g_bn_passes: int = 2
    gan_loss: str = "bce"
    g_padding: str = "zeros"
    g_noise: int = 1
    l1_lowpass: float = 1.0
    g_input_lowpass: float = 0.0
    g_input_tv: float = 0.5
    texture_weight: float = 10.0
    texture_window: float = 4.0
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
        for name in ("epochs", "ae_epochs", "vgg_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"The '{name}' parameter of CGANConfig must be >= 0; got {getattr(self, name)} instead")
        for name in ("adv_weight", "l1_weight", "content_weight", "nmi_weight", "vgg_weight", "mse_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"The '{name}' parameter of CGANConfig must be >= 0; got {getattr(self, name)} instead")
        for term in ("vgg", "mse"):
            if getattr(self, f"{term}_cap") < 0:
                raise ConfigError(f"The '{term}_cap' parameter of CGANConfig must be >= 0 (0: no cap); got "
                                  f"{getattr(self, f'{term}_cap')} instead")
            if getattr(self, f"{term}_distance") not in DISTANCES:
                raise ConfigError(f"The '{term}_distance' parameter of CGANConfig must be one of {DISTANCES}; got "
                                  f"{getattr(self, f'{term}_distance')!r}")
        if self.g_bn_passes < 0:
            raise ConfigError(f"The 'g_bn_passes' parameter of CGANConfig must be >= 0; got {self.g_bn_passes} instead")
        if self.g_noise < 0 or self.l1_lowpass < 0 or self.g_input_lowpass < 0:
            raise ConfigError(f"The 'g_noise', 'l1_lowpass' and 'g_input_lowpass' parameters of CGANConfig must be "
                              f">= 0; got {self.g_noise}, {self.l1_lowpass} and {self.g_input_lowpass} instead")
        if self.g_input_tv < 0 or (self.g_input_tv > 0 and self.g_input_lowpass > 0):
            raise ConfigError(f"The 'g_input_tv' parameter of CGANConfig must be >= 0 and cannot be combined with "
                              f"'g_input_lowpass' (both choose what the generator sees); got g_input_tv={self.g_input_tv}, "
                              f"g_input_lowpass={self.g_input_lowpass}")
        if self.texture_weight < 0 or self.texture_window <= 0:
            raise ConfigError(f"The 'texture_weight' parameter of CGANConfig must be >= 0 and 'texture_window' > 0; "
                              f"got {self.texture_weight} and {self.texture_window} instead")
        if self.texture_weight > 0 and self.l1_lowpass <= 0:
            raise ConfigError("The 'texture_weight' parameter of CGANConfig needs 'l1_lowpass' > 0 (the fine texture "
                              "is what the low-pass removes); set l1_lowpass, e.g. 1.0, or texture_weight 0")
        if self.band_weight < 1.0:
            raise ConfigError(f"The 'band_weight' parameter of CGANConfig must be >= 1; got {self.band_weight}")
        if self.g_upsample not in UPSAMPLING:
            raise ConfigError(f"The 'g_upsample' parameter of CGANConfig must be one of {UPSAMPLING}; got {self.g_upsample!r}")
        if not 0.0 <= self.g_ema < 1.0:
            raise ConfigError(f"The 'g_ema' parameter of CGANConfig must be in [0, 1); got {self.g_ema}")
        if self.gan_loss not in GAN_LOSSES:
            raise ConfigError(f"The 'gan_loss' parameter of CGANConfig must be one of {GAN_LOSSES}; got {self.gan_loss!r}")
        if self.g_padding not in PADDING:
            raise ConfigError(f"The 'g_padding' parameter of CGANConfig must be one of {PADDING}; got {self.g_padding!r}")
        if self.d_lr_factor <= 0:
            raise ConfigError(f"The 'd_lr_factor' parameter of CGANConfig must be > 0; got {self.d_lr_factor}")
        if not 0.0 <= self.identity_prob <= 1.0:
            raise ConfigError(f"The 'identity_prob' parameter of CGANConfig must be in [0, 1]; got {self.identity_prob}")
        PerturbConfig.from_dict(self.perturb, where="cgan.perturb")

    @property
    def perturb_config(self) -> PerturbConfig:
        return PerturbConfig.from_dict(self.perturb)


# ------------------------------------------------------------------------------------------------ losses


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


def rewarded_distance(squared: torch.Tensor, distance: str, cap: float) -> torch.Tensor:
    """The distance a push-away term rewards, from per-image squared distances ``[N]``: the squared distance
    or (``l2``) its square root, whose gradient does not vanish as the output nears its input; each image's
    value clamped at ``cap`` (0: no cap) so that moving further gains nothing. Returns the batch mean."""
    d = squared if distance == "squared" else (squared + 1e-12).sqrt()
    return (d.clamp_max(cap) if cap else d).mean()


# -------------------------------------------------------------------------------------------- autoencoder


def _perturbed_masks(masks: np.ndarray, k: int, perturb: PerturbConfig, rng: np.random.Generator) -> np.ndarray:
    op = BoundaryDisplacement(perturb)
    out = [op(None, m.astype(np.int64), rng)[1] > 0 for m in masks for _ in range(k)]
    return np.stack(out) if out else masks[:0]


def train_mask_autoencoder(masks: torch.Tensor, config: CGANConfig, val_masks: torch.Tensor | None = None,
                           progress: bool = True) -> tuple[MaskAutoencoder, dict[str, Any]]:
    """Train on binary lung masks ``[N, S, S]`` and two boundary-deformed copies of each (so deformed masks
    are encoded as well as real ones); returns the model and ``{"history", "val_dice", "train_dice"}``.
    """
    from medloop.device import resolve_device

    device = resolve_device(config.device)
    rng = np.random.default_rng(config.seed)
    real = (masks > 0).numpy()
    data = np.concatenate([real, _perturbed_masks(real, 2, config.perturb_config, rng)])
    data_t = torch.from_numpy(data).float()[:, None]
    torch.manual_seed(config.seed)
    ae = MaskAutoencoder(masks.shape[-1], config.latent_dim, config.ae_channels).to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=config.ae_lr)
    gen = torch.Generator().manual_seed(config.seed)
    history = []
    with make_progress(transient=not progress) as bar:
        task = bar.add_task("training mask autoencoder", total=config.ae_epochs, visible=progress)
        for epoch in range(config.ae_epochs):
            ae.train()
            total = 0.0
            for idx in torch.randperm(len(data_t), generator=gen).split(config.batch_size * 2):
                m = data_t[idx].to(device)
                logits, _ = ae(m)
                prob = torch.sigmoid(logits)
                soft_dice = 1 - (2 * (prob * m).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + m.sum((1, 2, 3)) + 1)
                loss = F.binary_cross_entropy_with_logits(logits, m) + soft_dice.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            history.append({"epoch": epoch, "loss": total / len(data_t)})
            bar.update(task, advance=1, description=f"mask autoencoder epoch {epoch + 1}/{config.ae_epochs} "
                                                    f"loss {history[-1]['loss']:.3f}")
    ae.eval()
    report = {"history": history, "train_dice": reconstruction_dice(ae, masks)}
    if val_masks is not None and len(val_masks):
        report["val_dice"] = reconstruction_dice(ae, val_masks)
    return ae.cpu(), report


@torch.no_grad()
def reconstruction_dice(ae: MaskAutoencoder, masks: torch.Tensor) -> float:
    """Mean Dice between binary masks ``[N, S, S]`` and their autoencoder reconstructions."""
    ae.eval()
    device = next(ae.parameters()).device
    dices = []
    for chunk in (masks > 0).float().split(32):
        logits, _ = ae(chunk[:, None].to(device))
        dices.append(mask_dice(logits[:, 0] > 0, chunk.to(device) > 0).cpu())
    return float(torch.cat(dices).mean())


# ---------------------------------------------------------------------------------------------------- cGAN


class CGANTrainer:
    """Alternating D / G updates of the mask-conditioned cGAN (one ``step`` per batch)."""

    def __init__(self, ae: MaskAutoencoder, in_channels: int, config: CGANConfig, vgg: VGGFeatures | None):
        from medloop.device import resolve_device

        self.config = config
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.ae = ae.to(self.device).eval()
        for p in self.ae.parameters():
            p.requires_grad_(False)
        self.G = MaskConditionedGenerator(in_channels, config.latent_dim, config.g_features, config.g_blocks,
                                          config.g_upsample, config.g_noise, config.g_padding,
                                          config.g_input_lowpass, config.g_input_tv).to(self.device)
        self.D = PairDiscriminator(2 * in_channels + 1, config.d_features, config.d_dense).to(self.device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr * config.d_lr_factor, betas=(0.5, 0.999))
        self.G_ema = copy.deepcopy(self.G).eval() if config.g_ema else None
        if self.G_ema is not None:
            for p in self.G_ema.parameters():
                p.requires_grad_(False)
        self.steps = 0
        self.vgg = vgg.to(self.device) if vgg is not None else None
        self.lowpass = self.window = None
        if config.l1_lowpass > 0:  # a texture_weight needs it (the config checks)
            from monai.networks.layers import GaussianFilter

            self.lowpass = GaussianFilter(2, config.l1_lowpass).to(self.device)
            if config.texture_weight > 0:
                self.window = GaussianFilter(2, config.texture_window).to(self.device)

    def content_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        zero = x.new_zeros(())
        return {
            "nmi": nmi(x, y).mean() if cfg.nmi_weight else zero,
            "mse": rewarded_distance((y - x).pow(2).flatten(1).mean(1), cfg.mse_distance, cfg.mse_cap)
            if cfg.mse_weight else zero,
            "vgg": rewarded_distance(self.vgg.distance(x, y), cfg.vgg_distance, cfg.vgg_cap)
            if (self.vgg is not None and cfg.vgg_weight) else zero,
        }

    def l1(self, y: torch.Tensor, target: torch.Tensor, band: torch.Tensor | None) -> torch.Tensor:
        """L1 to the target (both low-passed when ``l1_lowpass``); pixels in ``band [N, S, S]`` (where the
        boundary moved) weigh ``band_weight``."""
        if self.lowpass is not None:
            y, target = self.lowpass(y), self.lowpass(target)
        if band is None or self.config.band_weight == 1.0:
            return F.l1_loss(y, target)
        w = 1.0 + (self.config.band_weight - 1.0) * band.to(y.device, y.dtype)[:, None]
        return ((y - target).abs() * w).sum() / (w.sum() * y.shape[1])

    def judge(self, cond: torch.Tensor, y_real: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D's logits for the real and the generated pairs. With ``d_joint_batch`` both go through D in one
        batch, in D's update and when D scores G: in training mode they share batch statistics (D's running
        statistics lag behind a moving G and gave G a stale, sometimes saturated, adversarial signal)."""
        if self.config.d_joint_batch:
            return self.D(torch.cat([cond, cond]), torch.cat([y_real, y])).chunk(2)
        return self.D(cond, y_real), self.D(cond, y)

    def gan_loss(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        """Adversarial loss of D's logits against the label real (1) / generated (0)."""
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        if self.config.gan_loss == "lsgan":
            return F.mse_loss(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target)

    @property
    def generator(self) -> MaskConditionedGenerator:
        """The generator that renders variants: the weight average with ``g_ema``, else G itself."""
        return self.G_ema if self.G_ema is not None else self.G

    @torch.no_grad()
    def _update_ema(self) -> None:
        self.steps += 1
        if self.G_ema is None:
            return
        decay = min(self.config.g_ema, (1 + self.steps) / (10 + self.steps))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p, 1.0 - decay)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    @torch.no_grad()
    def recalibrate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Recompute the batch-norm statistics of the rendering generator with its final weights.

        During training the running statistics average over many earlier versions of G (and, with ``g_ema``,
        belong to G, not to the average); rendered in eval mode with them, a generator can shift brightness or
        add grain that it never made in training. ``batches`` yields ``(inputs [N, C, S, S], target_masks
        [N, S, S])``; the statistics become their plain average (as SWA's ``update_bn``). Returns the number of
        batch-norm layers."""
        G = self.generator
        norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        G.train()
        seen = 0
        for inputs, target_masks in batches:
            z, prior = self.ae.condition(target_masks)
            G(inputs.to(self.device), z, prior)
            seen += 1
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        G.eval()
        if not seen:
            raise ConfigError("batch-norm recalibration got no batches")
        return len(norms)

    def texture_energy(self, y: torch.Tensor) -> torch.Tensor:
        """Local energy of the fine texture ``[N, C, S, S]``: sqrt(window(high-pass(y)^2))."""
        fine = y - self.lowpass(y)
        return (self.window(fine.pow(2)) + 1e-8).sqrt()

    def texture(self, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 between the local fine-texture energies of ``y`` and ``target`` (0 when the term is off)."""
        if self.window is None:  # texture_weight 0
            return y.new_zeros(())
        return F.l1_loss(self.texture_energy(y), self.texture_energy(target))

    def step(self, inputs: torch.Tensor, target_masks: torch.Tensor, targets: torch.Tensor,
             band: torch.Tensor | None = None) -> dict[str, float]:
        """One D update then one G update. ``inputs``/``targets [N, C, S, S]``, ``target_masks [N, S, S]``,
        ``band [N, S, S]`` the pixels where the boundary moved (optional)."""
        x, y_real = inputs.to(self.device), targets.to(self.device)
        z, prior = self.ae.condition(target_masks)
        view = self.G.source_view(x)  # once: D's condition and G's input
        cond = torch.cat([view, prior], dim=1)
        self.G.train()
        self.D.train()
        y_fake = self.G.from_view(view, z, prior)
        # discriminator: real pairs -> 1, generated pairs -> 0
        d_real, d_fake = self.judge(cond, y_real, y_fake.detach())
        d_loss = 0.5 * (self.gan_loss(d_real, True) + self.gan_loss(d_fake, False))
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        # generator: fool D, stay close to the target (L1), move away from the input (content)
        g_loss, logs = self._generator_loss(x, cond, y_fake, y_real, band)
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        self._update_ema()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), **logs}

    def _generator_loss(self, x: torch.Tensor, cond: torch.Tensor, y: torch.Tensor, y_real: torch.Tensor,
                        band: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Eqs. 1-5: adversarial + l1_weight * L1 + content_weight * (NMI - VGG - MSE), plus texture_weight *
        the fine-texture term (0 when switched off), and its terms."""
        cfg = self.config
        adv = self.gan_loss(self.judge(cond, y_real, y)[1], True)
        l1 = self.l1(y, y_real, band)
        texture = self.texture(y, y_real)
        terms = self.content_terms(x, y)
        content = cfg.nmi_weight * terms["nmi"] - cfg.vgg_weight * terms["vgg"] - cfg.mse_weight * terms["mse"]
        loss = cfg.adv_weight * adv + cfg.l1_weight * l1 + cfg.texture_weight * texture + cfg.content_weight * content
        return loss, {"g_adv": adv.item(), "g_l1": l1.item(), "g_texture": texture.item(),
                      **{k: v.item() for k, v in terms.items()}}

    @torch.no_grad()
    def generator_loss(self, inputs: torch.Tensor, target_masks: torch.Tensor, targets: torch.Tensor,
                       band: torch.Tensor | None = None) -> float:
        """The generator's loss on a batch without updating anything (networks in eval mode; a generator with
        noise channels gets the same noise at every call, so two calls compare the networks, not the draws)."""
        x, y_real = inputs.to(self.device), targets.to(self.device)
        z, prior = self.ae.condition(target_masks)
        self.G.eval()
        self.D.eval()
        view = self.G.source_view(x)
        cond = torch.cat([view, prior], dim=1)
        noise = None
        if self.G.noise_channels:
            fixed = torch.Generator().manual_seed(self.config.seed)
            noise = torch.randn(self.G.noise_shape(x), generator=fixed).to(self.device)
        return float(self._generator_loss(x, cond, self.G.from_view(view, z, prior, noise), y_real, band)[0])


def training_pairs(images: np.ndarray, masks: np.ndarray, config: CGANConfig, rng: np.random.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input, target mask, target, band) for a batch: the input is a boundary-deformed crude copy of the target.

    With ``config.augment_geometry`` each target is first flipped / rotated / translated as variants are.

    ``images [B, 1, S, S]``, ``masks [B, S, S]``. The band ``[B, S, S]`` marks where the lung boundary moved
    (pixels that changed side, dilated by one pixel): the L1 term weighs it ``band_weight`` times.
    """
    from scipy import ndimage

    perturb = config.perturb_config
    op = BoundaryDisplacement(perturb)
    images, masks = images.copy(), masks > 0
    if config.augment_geometry:
        for i in range(len(images)):
            images[i, 0], posed, _ = geometric_ops(images[i, 0], masks[i].astype(np.int64), perturb, rng)
            masks[i] = posed > 0
    inputs = images.copy()
    band = np.zeros(masks.shape, dtype=bool)
    for i in range(len(images)):
        if rng.random() >= config.identity_prob:
            crude, moved, _ = op(images[i, 0], masks[i].astype(np.int64), rng)
            inputs[i, 0] = crude
            band[i] = ndimage.binary_dilation((moved > 0) != masks[i])
    return (torch.from_numpy(inputs).float(), torch.from_numpy(masks), torch.from_numpy(images).float(),
            torch.from_numpy(band))


def train_cgan(images: torch.Tensor, masks: torch.Tensor, ae: MaskAutoencoder, config: CGANConfig,
               vgg: VGGFeatures | None = None, progress: bool = True) -> tuple[CGANTrainer, list[dict[str, float]]]:
    """Train G and D on real images ``[N, C, S, S]`` with lung masks ``[N, S, S]``; returns trainer and history."""
    trainer = CGANTrainer(ae, images.shape[1], config, vgg)
    rng = np.random.default_rng(config.seed + 11)
    gen = torch.Generator().manual_seed(config.seed + 13)
    imgs, msks = images.numpy(), (masks > 0).numpy()
    history = []
    n_batches = len(images) // config.batch_size + (len(images) % config.batch_size >= 2)
    with make_progress(transient=not progress) as bar:
        task = bar.add_task("training cGAN", total=config.epochs * n_batches, visible=progress)
        for epoch in range(config.epochs):
            sums: dict[str, float] = {}
            seen = 0
            for inputs, tmasks, targets, band in _epoch_pairs(imgs, msks, config, rng, gen):
                for k, v in trainer.step(inputs, tmasks, targets, band).items():
                    sums[k] = sums.get(k, 0.0) + v * len(inputs)
                seen += len(inputs)
                bar.update(task, advance=1, description=f"cGAN epoch {epoch + 1}/{config.epochs} "
                                                        f"L1 {sums['g_l1'] / seen:.3f} D {sums['d_loss'] / seen:.3f}")
            history.append({"epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()}})
        if config.g_bn_passes and config.epochs:
            bar.update(task, description="cGAN: recomputing the generator's batch-norm statistics")
            trainer.recalibrate((pairs[0], pairs[1]) for _ in range(config.g_bn_passes)
                                for pairs in _epoch_pairs(imgs, msks, config, rng, gen))
    trainer.G.eval()
    trainer.D.eval()
    trainer.generator.eval()
    return trainer, history


def _epoch_pairs(imgs: np.ndarray, msks: np.ndarray, config: CGANConfig, rng: np.random.Generator,
                 gen: torch.Generator):
    """One shuffled epoch of ``training_pairs`` batches; a last batch of one image is skipped (batch norm)."""
    for idx in torch.randperm(len(imgs), generator=gen).split(config.batch_size):
        if len(idx) >= 2:
            yield training_pairs(imgs[idx.numpy()], msks[idx.numpy()], config, rng)
