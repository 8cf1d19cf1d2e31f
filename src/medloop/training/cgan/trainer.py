"""Alternating D / G training of the mask-conditioned cGAN (Mahapatra et al., MICCAI 2018, Eqs. 1-5).

Each step computes the source view once (``medloop.synth.views.source_view``: the generator's input and the
discriminator's condition), updates D on real and generated pairs judged in one batch (shared batch-norm
statistics, so an artifact common to all generated images is not normalised away; D learns at twice G's rate),
then G against D's judgement of the same joint batch plus ``GeneratorLoss``. A weight average of G renders the
variants (``g_ema``); after training, the batch-norm statistics of that generator are recomputed with its final
weights over ``BN_PASSES`` passes of fresh training pairs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from medloop.errors import ConfigError
from medloop.models.cgan import MaskConditionedGenerator, PairDiscriminator
from medloop.models.mask_ae import MaskAutoencoder
from medloop.progress import make_progress
from medloop.seeding import stream, torch_init, torch_stream
from medloop.synth.views import source_view
from medloop.training.cgan.config import CGANConfig
from medloop.training.cgan.losses import GeneratorLoss, VGGFeatures, adversarial_loss
from medloop.training.cgan.pairs import epoch_pairs

__all__ = ["D_LR_FACTOR", "BN_PASSES", "build_generator", "build_discriminator", "CGANTrainer", "train_cgan"]

D_LR_FACTOR = 2.0  # the discriminator's learning rate is lr * D_LR_FACTOR (two time-scale updates)
BN_PASSES = 2  # passes over fresh training pairs that recompute the rendering generator's batch-norm statistics


def build_generator(config: CGANConfig, in_channels: int) -> MaskConditionedGenerator:
    """The generator the config describes, for images with ``in_channels`` channels."""
    return MaskConditionedGenerator(in_channels, config.latent_dim, config.g_features, config.g_blocks, config.g_noise)


def build_discriminator(config: CGANConfig, in_channels: int) -> PairDiscriminator:
    """The discriminator the config describes; it judges (source view + mask prior, image) pairs."""
    return PairDiscriminator(2 * in_channels + 1, config.d_features, config.d_dense)


class CGANTrainer:
    """Alternating D / G updates of the mask-conditioned cGAN (one ``step`` per batch).

    Networks are initialised from ``config.seed``; the generator's noise comes from the stream
    ``(seed, "cgan", "noise")``.
    """

    def __init__(self, ae: MaskAutoencoder, in_channels: int, config: CGANConfig, vgg: VGGFeatures | None):
        from medloop.device import resolve_device

        self.config = config
        self.device = resolve_device(config.device)
        self.ae = ae.to(self.device).eval()
        for p in self.ae.parameters():
            p.requires_grad_(False)
        with torch_init(config.seed):
            self.G = build_generator(config, in_channels).to(self.device)
            self.D = build_discriminator(config, in_channels).to(self.device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr * D_LR_FACTOR, betas=(0.5, 0.999))
        self.G_ema = copy.deepcopy(self.G).eval() if config.g_ema else None
        if self.G_ema is not None:
            for p in self.G_ema.parameters():
                p.requires_grad_(False)
        self.steps = 0
        self.loss = GeneratorLoss(config, vgg).to(self.device)
        self.noise_gen = torch_stream(config.seed, "cgan", "noise", device=self.device)

    @property
    def generator(self) -> MaskConditionedGenerator:
        """The generator that renders variants: the weight average with ``g_ema``, else G itself."""
        return self.G_ema if self.G_ema is not None else self.G

    def view(self, inputs: torch.Tensor) -> torch.Tensor:
        """The source view of ``inputs [N, C, S, S]`` on the trainer's device."""
        return source_view(inputs.to(self.device), self.config.g_input_tv)

    def noise(self, view: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor | None:
        """The generator's noise for a batch (None without noise channels), from ``gen`` or the noise stream."""
        if not self.G.noise_channels:
            return None
        gen = gen or self.noise_gen
        return torch.randn(self.G.noise_shape(view), generator=gen, device=gen.device, dtype=view.dtype).to(view.device)

    def judge(self, cond: torch.Tensor, y_real: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D's logits for the real and the generated pairs, judged in one batch: in training mode they share
        batch statistics (D's running statistics lag behind a moving G and gave G a stale, sometimes
        saturated, adversarial signal)."""
        return self.D(torch.cat([cond, cond]), torch.cat([y_real, y])).chunk(2)

    def step(self, inputs: torch.Tensor, target_masks: torch.Tensor, targets: torch.Tensor,
             band: torch.Tensor | None = None) -> dict[str, float]:
        """One D update then one G update. ``inputs``/``targets [N, C, S, S]``, ``target_masks [N, S, S]``,
        ``band [N, S, S]`` the pixels where the boundary moved (optional)."""
        x, y_real = inputs.to(self.device), targets.to(self.device)
        z, prior = self.ae.condition(target_masks)
        view = self.view(x)  # once: D's condition and G's input
        cond = torch.cat([view, prior], dim=1)
        self.G.train()
        self.D.train()
        y_fake = self.G(view, z, prior, self.noise(view))
        # discriminator: real pairs -> 1, generated pairs -> 0
        d_real, d_fake = self.judge(cond, y_real, y_fake.detach())
        d_loss = 0.5 * (adversarial_loss(d_real, True) + adversarial_loss(d_fake, False))
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        # generator: fool D, stay close to the target (L1), move away from the input (content)
        g_loss, logs = self.loss(x, y_fake, y_real, band, self.judge(cond, y_real, y_fake)[1])
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        self._update_ema()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), **logs}

    @torch.no_grad()
    def generator_loss(self, inputs: torch.Tensor, target_masks: torch.Tensor, targets: torch.Tensor,
                       band: torch.Tensor | None = None) -> float:
        """The generator's loss on a batch without updating anything (networks in eval mode; a generator with
        noise channels gets the same noise at every call, so two calls compare the networks, not the draws)."""
        x, y_real = inputs.to(self.device), targets.to(self.device)
        z, prior = self.ae.condition(target_masks)
        self.G.eval()
        self.D.eval()
        view = self.view(x)
        cond = torch.cat([view, prior], dim=1)
        y = self.G(view, z, prior, self.noise(view, torch_stream(self.config.seed, "cgan", "eval noise")))
        return float(self.loss(x, y, y_real, band, self.judge(cond, y_real, y)[1])[0])

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
            view = self.view(inputs)
            G(view, z, prior, self.noise(view))
            seen += 1
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        G.eval()
        if not seen:
            raise ConfigError("batch-norm recalibration got no batches")
        return len(norms)


def train_cgan(images: torch.Tensor, masks: torch.Tensor, ae: MaskAutoencoder, config: CGANConfig,
               vgg: VGGFeatures | None = None, progress: bool = True) -> tuple[CGANTrainer, list[dict[str, float]]]:
    """Train G and D on real images ``[N, C, S, S]`` with lung masks ``[N, S, S]``; returns trainer and history."""
    trainer = CGANTrainer(ae, images.shape[1], config, vgg)
    rng = stream(config.seed, "cgan", "pairs")
    gen = torch_stream(config.seed, "cgan", "batches")
    imgs, msks = images.numpy(), (masks > 0).numpy()
    history = []
    n_batches = len(images) // config.batch_size + (len(images) % config.batch_size >= 2)
    with make_progress(transient=not progress) as bar:
        task = bar.add_task("training cGAN", total=config.epochs * n_batches, visible=progress)
        for epoch in range(config.epochs):
            sums: dict[str, float] = {}
            seen = 0
            for inputs, tmasks, targets, band in epoch_pairs(imgs, msks, config, rng, gen):
                for k, v in trainer.step(inputs, tmasks, targets, band).items():
                    sums[k] = sums.get(k, 0.0) + v * len(inputs)
                seen += len(inputs)
                bar.update(task, advance=1, description=f"cGAN epoch {epoch + 1}/{config.epochs} "
                                                        f"L1 {sums['g_l1'] / seen:.3f} D {sums['d_loss'] / seen:.3f}")
            history.append({"epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()}})
        if config.epochs:
            bar.update(task, description="cGAN: recomputing the generator's batch-norm statistics")
            trainer.recalibrate((pairs[0], pairs[1]) for _ in range(BN_PASSES)
                                for pairs in epoch_pairs(imgs, msks, config, rng, gen))
    trainer.G.eval()
    trainer.D.eval()
    trainer.generator.eval()
    return trainer, history
