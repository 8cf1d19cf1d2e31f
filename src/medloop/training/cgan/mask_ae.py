"""Training of the mask autoencoder whose code ``z`` conditions the cGAN (Mahapatra et al. 2018, Sect. 2.1)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medloop.metrics.segmentation import mask_dice
from medloop.models.mask_ae import MaskAutoencoder
from medloop.progress import make_progress
from medloop.seeding import stream, torch_init, torch_stream
from medloop.synth.perturb import BoundaryDisplacement, PerturbConfig
from medloop.training.cgan.config import CGANConfig

__all__ = ["train_mask_autoencoder", "reconstruction_dice"]


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
    rng = stream(config.seed, "mask_ae", "masks")
    real = (masks > 0).numpy()
    data = np.concatenate([real, _perturbed_masks(real, 2, config.perturb_config, rng)])
    data_t = torch.from_numpy(data).float()[:, None]
    with torch_init(config.seed):
        ae = MaskAutoencoder(masks.shape[-1], config.latent_dim, config.ae_channels).to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=config.ae_lr)
    gen = torch_stream(config.seed, "mask_ae", "batches")
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
