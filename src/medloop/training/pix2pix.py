"""pix2pix training recipe for label maps (Isola et al. 2017; Ravanbakhsh et al.): alternating D / G updates.

G minimizes ``adv_weight`` times the adversarial loss plus ``lambda_sup`` times a supervised term:
``dice_ce`` (soft Dice over the foreground classes + class-weighted cross-entropy, weights the inverse square
root of each class's pixel frequency in the training labels: the myocardium is about 1% of a cardiac MR
slice), or plain ``ce``. Each sample carries a weight, so pseudo-labeled samples can count less
(``pseudo_weight``) in both networks' losses.

The discriminator (``discriminator``):

- ``graded`` (default): D sees (image, one-hot label map) and learns, region by region, how right the map is
  (``synth.label_errors.agreement_map``: 1 = agrees with the reference): the reference map, G's argmax
  prediction and the reference damaged by a graded error (eroded, dilated, shifted, dropped or swapped
  structures, boundary noise) are all judged against the reference. Every map D sees is one-hot, so it cannot
  tell ground truth from predictions by their softness (Luc et al. 2016); G gets D's judgement of its argmax
  map through a straight-through estimator. Its score is then a local quality estimate.
- ``pix2pix``: the original game, real pairs (image, one-hot reference) against generated pairs (image, softmax).
"""

from __future__ import annotations

import dataclasses
import typing

import torch
import torch.nn.functional as F

from medloop.config import Config
from medloop.errors import ConfigError
from medloop.models.pix2pix import Pix2PixDiscriminator
from medloop.models.unet import BayesianUNet
from medloop.progress import make_progress
from medloop.seeding import torch_init, torch_stream
from medloop.synth.label_errors import agreement_map, damage_label_maps

__all__ = ["Pix2PixConfig", "Pix2PixTrainer", "train_pix2pix", "class_weights"]


@dataclasses.dataclass(frozen=True)
class Pix2PixConfig(Config):
    """pix2pix for segmentation. ``lambda_sup`` 100 as pix2pix; ``pseudo_weight`` for pseudo-labeled samples;
    ``damage_px``: the largest boundary error (pixels) of the damaged maps a graded D learns from;
    ``min_steps``: train for more epochs when ``epochs`` would give fewer updates than this (a model trained on one
    volume, a dozen slices, gets two updates an epoch: 30 epochs leave its discriminator unable to grade);
    ``dropout_layout``: where G's dropout (pix2pix's noise, and its MC dropout) sits: ``decoder`` (pix2pix's own
    choice: dropout in every decoder block; the layout every method-2 result so far was measured with) or ``head``
    (channel dropout before the output, so MC scoring runs G once: about 9x faster at T = 10; on ACDC over five
    seeds its test Dice and discriminator-Dice correlation stayed within seed noise, benchmarks/RESULTS.md 5.6);
    ``medloop.models.unet``; ``workers``: data-parallel training processes (PyTorch DDP over gloo, one thread each,
    on this machine's CPUs, ``medloop.training.distributed``): each takes its share of every batch, so a batch must
    give each at least the two samples batch norm needs; ``precision``: ``bf16`` trains G and D under bfloat16
    autocast (losses, optimizer states and scoring stay float32; refused where the hardware lacks bfloat16)."""

    epochs: int = 30
    min_steps: int = 0
    batch_size: int = 8
    lr: float = 2e-4
    lambda_sup: float = 100.0
    supervised: typing.Literal["dice_ce", "ce"] = "dice_ce"
    discriminator: typing.Literal["graded", "pix2pix"] = "graded"
    damage_px: int = 4
    adv_weight: float = 1.0
    pseudo_weight: float = 0.5
    g_channels: tuple[int, ...] = (16, 32, 64, 128)
    dropout: float = 0.2
    dropout_layout: typing.Literal["decoder", "head"] = "decoder"
    d_features: int = 64
    d_layers: int | None = None
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    precision: typing.Literal["fp32", "bf16"] = "fp32"

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "damage_px", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The '{name}' parameter of Pix2PixConfig must be >= 1; got {getattr(self, name)}")
        if self.min_steps < 0:
            raise ConfigError(f"The 'min_steps' parameter of Pix2PixConfig must be >= 0; got {self.min_steps}")
        for name in ("lambda_sup", "adv_weight", "pseudo_weight", "lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"The '{name}' parameter of Pix2PixConfig must be >= 0; got {getattr(self, name)}")
        if self.workers > 1 and self.device not in ("auto", "cpu"):
            raise ConfigError(f"The 'workers' parameter of Pix2PixConfig ({self.workers}) trains on CPU processes (DDP "
                              f"over gloo); got device {self.device!r}: set device: cpu, or workers: 1 on a GPU")
        if self.workers > 1 and self.workers > self.batch_size // 2:
            raise ConfigError(f"The 'workers' parameter of Pix2PixConfig must be at most batch_size // 2 "
                              f"({self.batch_size // 2}): each worker takes a share of every batch and batch norm "
                              f"needs two samples in each; got {self.workers}: lower workers or raise batch_size")


def _cpu_has_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _check_bf16(device: torch.device) -> None:
    """Refuse bfloat16 where the hardware would only emulate it (slower than float32, for nothing)."""
    if device.type == "cpu" and not _cpu_has_bf16():
        raise ConfigError("The 'precision' parameter 'bf16' of Pix2PixConfig needs a CPU with bfloat16 instructions "
                          "(AVX512-BF16 or AMX), which this one lacks; set precision: fp32")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("The 'precision' parameter 'bf16' of Pix2PixConfig needs a GPU with bfloat16 support "
                          "(Ampere or newer); set precision: fp32")


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse square root of each class's pixel frequency, mean 1 over the classes present (absent: 0)."""
    freq = torch.bincount(labels.flatten().long(), minlength=num_classes)[:num_classes].double()
    freq = freq / freq.sum().clamp_min(1)
    w = torch.where(freq > 0, freq.clamp_min(1e-8).rsqrt(), torch.zeros_like(freq))
    return (w / w[freq > 0].mean()).float()


def _weighted_mean(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (values * w).sum() / w.sum().clamp_min(1e-8)


class Pix2PixTrainer:
    """Holds G, D and their optimizers; ``step`` is one D update then one G update."""

    def __init__(self, in_channels: int, num_classes: int, size: int, config: Pix2PixConfig):
        from medloop.device import resolve_device

        self.config, self.num_classes = config, num_classes
        self.in_channels, self.size = in_channels, size
        self.device = resolve_device(config.device)
        with torch_init(config.seed):
            self.G = BayesianUNet(in_channels, num_classes, channels=config.g_channels, dropout=config.dropout,
                                  dropout_layout=config.dropout_layout)
            self.D = Pix2PixDiscriminator(in_channels, num_classes, size, config.d_features, config.d_layers,
                                          one_hot_input=config.discriminator == "graded")
        # D's wide 4x4 convolutions run about 20% faster channels-last (oneDNN on CPU, tensor cores on GPU); G's
        # narrow, instance-normalised blocks run slower that way, so G stays contiguous
        self.G = self.G.to(self.device)
        self.D = self.D.to(self.device, memory_format=torch.channels_last)
        self.weights = torch.ones(num_classes, device=self.device)  # class weights of the CE term
        if config.precision == "bf16":
            _check_bf16(self.device)
        self.seed_dropout(config.seed)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr, betas=(0.5, 0.999))
        # what ``step`` runs G and D through: the networks themselves, or their DDP wrappers inside a DDP group
        self.parallel: tuple[torch.nn.Module, torch.nn.Module] | None = None
        self.rank_spread: float | None = None  # after a data-parallel training: 0.0 when the ranks ended equal

    def seed_dropout(self, seed: int, rank: int = 0) -> None:
        """Draw G's training dropout masks (pix2pix's noise) and D's damaged maps from streams of ``seed``; rank 0
        of a DDP group draws what one process draws, the other ranks their own streams."""
        from medloop.models.dropout import mc_dropout_layers
        from medloop.training.trainer import rank_names

        suffix = rank_names(rank)
        for i, layer in enumerate(mc_dropout_layers(self.G)):
            layer.generator = torch_stream(seed, "pix2pix", "dropout", i, *suffix, device=self.device)
        self.damage_gen = torch_stream(seed, "pix2pix", "damage", *suffix)

    def _autocast(self):
        """Where the networks run in bfloat16 (``precision: bf16``, training only); a no-op in float32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

    def _onehot(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels.long(), self.num_classes).permute(0, 3, 1, 2).float()

    def supervised(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Per-sample supervised loss, weighted over the batch by ``w``."""
        ce = F.cross_entropy(logits, y, weight=self.weights if self.config.supervised == "dice_ce" else None,
                             reduction="none").flatten(1).mean(1)
        if self.config.supervised == "ce":
            return _weighted_mean(ce, w)
        probs, onehot = logits.softmax(1)[:, 1:], self._onehot(y)[:, 1:]  # foreground classes
        inter = (probs * onehot).flatten(2).sum(2)
        denom = (probs + onehot).flatten(2).sum(2)
        dice = (2 * inter + 1.0) / (denom + 1.0)  # [N, K-1]; an absent class scores 1 when none is predicted
        dice_loss = 1.0 - dice.mean(1)
        return _weighted_mean(dice_loss + ce, w)

    def step(self, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> dict[str, float]:
        """``images [N, C, H, W]``, ``labels [N, H, W]``, ``weights [N]`` (1 expert, < 1 pseudo)."""
        cfg = self.config
        x, y, w = images.to(self.device), labels.to(self.device).long(), weights.to(self.device).float()
        G, D = self.parallel or (self.G, self.D)  # D's own update goes through DDP (its gradients are averaged)
        G.train()
        D.train()
        with self._autocast():
            logits = G(x)[0].float()  # losses in float32 whatever the networks ran in
        probs = logits.softmax(1)
        if cfg.discriminator == "graded":
            damaged = damage_label_maps(y, self.num_classes, self.damage_gen, cfg.damage_px)
            maps = torch.cat([y, probs.argmax(1).detach(), damaged])
            with self._autocast():
                judged = D(x.repeat(3, 1, 1, 1), self._onehot(maps)).float()
            target = agreement_map(maps, y.repeat(3, 1, 1), tuple(judged.shape[-2:]))
            wd = w.repeat(3).view(-1, 1, 1, 1).expand_as(judged)
            d_loss = F.binary_cross_entropy_with_logits(judged, target, weight=wd)
        else:
            with self._autocast():
                real, fake = D(x, self._onehot(y)).float(), D(x, probs.detach()).float()
            wd = w.view(-1, 1, 1, 1).expand_as(real)
            d_loss = 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real), weight=wd)
                            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake), weight=wd))
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        # G's update needs gradients through D, not for D's weights (the next D update would discard them); so D
        # runs without its DDP wrapper here: no gradient of D's to average
        self.D.requires_grad_(False)
        try:
            with self._autocast():
                judged = self.D.judge(x, probs).float()
            adv = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
            sup = self.supervised(logits, y, w)
            g_loss = cfg.adv_weight * adv + cfg.lambda_sup * sup
            self.opt_g.zero_grad()
            g_loss.backward()
            self.opt_g.step()
        finally:
            self.D.requires_grad_(True)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "g_adv": adv.item(), "g_sup": sup.item()}

    @torch.no_grad()
    def generator_loss(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """The generator's loss without updating (dropout off)."""
        self.G.eval()
        self.D.eval()
        x, y = images.to(self.device), labels.to(self.device).long()
        logits, _ = self.G(x)
        judged = self.D.judge(x, logits.softmax(1))
        adv = F.binary_cross_entropy_with_logits(judged, torch.ones_like(judged))
        sup = self.supervised(logits, y, torch.ones(len(x), device=self.device))
        return float(self.config.adv_weight * adv + self.config.lambda_sup * sup)

    def state_dict(self) -> dict:
        """Networks, optimizer states and class weights (so a resumed run continues exactly where it stopped)."""
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "class_weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.weights = state["class_weights"].to(self.device)


class _Logits(torch.nn.Module):
    """G as its DDP wrapper sees it: pix2pix uses only the logits, so DDP (finding unused parameters from the
    outputs) expects no gradient for the log-variance convolution."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x)[0], None


def train_pix2pix(trainer: Pix2PixTrainer, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                  seed: int, progress: bool = True, epochs: int | None = None) -> list[dict[str, float]]:
    """``epochs`` (default ``config.epochs``, more when that gives fewer than ``config.min_steps`` updates) epochs
    of alternating updates over the samples (seeded shuffling); the CE class weights come from ``labels``. Returns
    one history entry per epoch run.

    With ``config.workers > 1`` the epochs run in that many processes (``medloop.training.distributed``) and
    ``trainer`` gets the trained state; inside one of them (a DDP group is initialised) each rank trains on its
    share of every batch, and the history holds the losses averaged over all ranks' samples.
    """
    from medloop.training.trainer import rank_world

    cfg = trainer.config
    rank, world = rank_world()
    if cfg.workers > 1 and world == 1:
        from medloop.training.distributed import train_pix2pix_distributed

        return train_pix2pix_distributed(trainer, images, labels, weights, seed, progress, epochs)
    if cfg.workers == 1:
        rank, world = 0, 1  # one worker trains alone, whatever group its process is in
    epochs = cfg.epochs if epochs is None else epochs
    steps = sum(1 for lo in range(0, len(images), cfg.batch_size)
                if min(cfg.batch_size, len(images) - lo) >= 2 * world)
    if cfg.min_steps and steps:
        epochs = max(epochs, -(-cfg.min_steps // steps))
    gen = torch_stream(seed, "pix2pix", "shuffle")  # the same on every rank
    trainer.seed_dropout(seed, rank)
    trainer.weights = class_weights(labels, trainer.num_classes).to(trainer.device)
    if world > 1:  # gradients averaged over the ranks after each backward pass
        # the decoder layout's log-variance convolution gets no gradient; the head layout's shares a matmul with
        # the logits (zero gradient rows), so there DDP has no unused parameter to look for
        ddp = torch.nn.parallel.DistributedDataParallel
        unused = trainer.G.dropout_layout == "decoder"
        trainer.parallel = (ddp(_Logits(trainer.G), find_unused_parameters=unused), ddp(trainer.D))
    history = []
    try:
        with make_progress(transient=not progress or rank > 0) as bar:
            task = bar.add_task("training pix2pix", total=epochs, visible=progress and rank == 0)
            for epoch in range(epochs):
                sums: dict[str, float] = {}
                seen = 0
                for idx in torch.randperm(len(images), generator=gen).split(cfg.batch_size):
                    if len(idx) < 2 * world:
                        continue  # batch norm needs two samples in each rank's share
                    share = idx.tensor_split(world)[rank]  # this rank's contiguous share of the batch
                    for k, v in trainer.step(images[share], labels[share], weights[share]).items():
                        sums[k] = sums.get(k, 0.0) + v * len(share)
                    seen += len(share)
                if world > 1:  # every rank's samples count
                    totals = torch.tensor([*sums.values(), seen], dtype=torch.float64)
                    torch.distributed.all_reduce(totals)
                    sums, seen = dict(zip(sums, totals[:-1].tolist())), int(totals[-1])
                history.append({"epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()}})
                bar.update(task, advance=1, description=f"pix2pix epoch {epoch + 1}/{epochs} "
                                                        f"sup {history[-1].get('g_sup', float('nan')):.3f}")
    finally:
        trainer.parallel = None
    trainer.G.eval()
    trainer.D.eval()
    return history
