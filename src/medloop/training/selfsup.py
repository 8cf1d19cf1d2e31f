"""Self-supervised pretraining of a classifier's trunk on unlabeled images (SimCLR, Chen et al. 2020).

Two random views of every image (MONAI transforms: crop-zoom, rotation, translation, contrast, blur, noise;
no flips, since chest anatomy is not left-right symmetric) go through the trunk and a small projection MLP; MONAI's
``ContrastiveLoss`` (NT-Xent) pulls the two views of an image together and pushes the other images of the
batch away. Only the trunk is kept: a checkpoint holds its weights, the network it belongs to and the config,
and ``medloop.models.load_pretrained`` loads it into a classifier of the same network and width.

``linear_probe`` measures what the features are worth: logistic regression on frozen features of labeled
images, ROC AUC on held-out ones (for pretrained and for randomly initialised trunks alike).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medloop.config import Config
from medloop.data.dataset import MedDataset, collate_samples
from medloop.device import resolve_device
from medloop.errors import ConfigError
from medloop.models.pretrained import SELFSUP_FORMAT
from medloop.progress import make_progress
from medloop.seeding import seed_for, torch_init, torch_stream
from medloop.storage import save_torch

__all__ = ["SelfSupConfig", "pretrain", "features", "linear_probe", "trunk_state"]

@dataclasses.dataclass(frozen=True)
class SelfSupConfig(Config):
    """SimCLR pretraining, sized for a CPU.

    Args:
        epochs: passes over the unlabeled images.
        batch_size: images per step (each gives two views, so ``2 * batch_size`` in the loss).
        lr, weight_decay: AdamW; the learning rate follows a cosine schedule to zero.
        temperature: NT-Xent temperature.
        projection_dim: output of the projection MLP (hidden width = the trunk's feature width).
        crop_scale: the smallest fraction of the image side a view keeps (zoomed back to full size).
        rotate_deg, translate: largest rotation (degrees) and shift (fraction of the side) of a view.
        seed: seeds the views, the batches and the projection head.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    projection_dim: int = 64
    crop_scale: float = 0.6
    rotate_deg: float = 10.0
    translate: float = 0.08
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "projection_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The '{name}' parameter of SelfSupConfig must be >= 1; got {getattr(self, name)} instead")
        if self.batch_size < 2:
            raise ConfigError("The 'batch_size' parameter of SelfSupConfig must be >= 2 (negatives come from the batch)")
        for name in ("lr", "temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"The '{name}' parameter of SelfSupConfig must be > 0; got {getattr(self, name)} instead")
        if not 0 < self.crop_scale <= 1:
            raise ConfigError(f"The 'crop_scale' parameter of SelfSupConfig must be in (0, 1]; got {self.crop_scale}")


def _views(size: tuple[int, int], config: SelfSupConfig, seed: int):
    """One random view of a ``[C, H, W]`` image in [0, 1] (MONAI transforms, own random state)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandAffine,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandScaleIntensity,
    )

    # MONAI samples the input on a grid scaled by 1 + s: s in (crop_scale - 1, 0) keeps a central part of the
    # image (per axis, so the aspect ratio varies a little too) and zooms it to full size
    zoom = (config.crop_scale - 1.0, 0.0)
    views = Compose([
        RandAffine(prob=1.0, rotate_range=math.radians(config.rotate_deg), scale_range=[zoom] * len(size),
                   translate_range=[config.translate * s for s in size], padding_mode="border"),
        RandAdjustContrast(prob=0.8, gamma=(0.6, 1.6)),
        RandScaleIntensity(prob=0.5, factors=0.2),
        RandGaussianSmooth(prob=0.4, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
        RandGaussianNoise(prob=0.4, std=0.03),
    ])
    views.set_random_state(seed=seed % (2**32))
    return views


class _Projector(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, in_features), nn.ReLU(inplace=True),
                                 nn.Linear(in_features, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def trunk_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The classifier's weights without its head (what pretraining learns and a checkpoint keeps)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("head.")}


def pretrain(model: nn.Module, images: torch.Tensor, config: SelfSupConfig, progress: bool = True,
             out: str | Path | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """SimCLR on ``images [N, C, H, W]`` (in [0, 1]); trains ``model``'s trunk in place (``forward_features``).

    With ``out``, writes the checkpoint (trunk weights, ``meta`` such as the network name and parameters, the
    config and the loss history). Returns ``{"history": [...], "seconds": ...}``.
    """
    from monai.losses import ContrastiveLoss

    if len(images) < 2:
        raise ConfigError(f"self-supervised pretraining needs at least 2 unlabeled images; got {len(images)}")
    device = resolve_device(config.device)
    batch = min(config.batch_size, len(images))
    with torch_init(config.seed, "selfsup", "projector"):
        projector = _Projector(model.num_features, config.projection_dim)
    model.to(device).train()
    projector.to(device).train()
    params = list(model.parameters()) + list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(images) // batch
    total = max(1, steps_per_epoch * config.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = ContrastiveLoss(temperature=config.temperature)
    size = tuple(images.shape[-2:])
    view_a = _views(size, config, seed_for(config.seed, "selfsup", "view", 0))
    view_b = _views(size, config, seed_for(config.seed, "selfsup", "view", 1))
    order_gen = torch_stream(config.seed, "selfsup", "order")
    history, started = [], time.time()
    with make_progress(transient=not progress) as bar:
        task = bar.add_task("self-supervised pretraining", total=config.epochs, visible=progress)
        for epoch in range(config.epochs):
            order = torch.randperm(len(images), generator=order_gen)
            total_loss, steps = 0.0, 0
            for start in range(0, steps_per_epoch * batch, batch):
                idx = order[start:start + batch]
                xa = torch.stack([torch.as_tensor(view_a(images[i])) for i in idx]).float().to(device)
                xb = torch.stack([torch.as_tensor(view_b(images[i])) for i in idx]).float().to(device)
                za = projector(model.forward_features(xa))
                zb = projector(model.forward_features(xb))
                loss = loss_fn(za, zb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total_loss += float(loss.detach())
                steps += 1
            history.append({"epoch": epoch, "loss": total_loss / max(steps, 1)})
            bar.update(task, advance=1, description=f"pretraining epoch {epoch + 1}/{config.epochs} "
                                                    f"loss {history[-1]['loss']:.3f}")
    model.cpu().eval()
    result = {"history": history, "seconds": round(time.time() - started, 1), "n_images": len(images)}
    if out is not None:
        save_torch(Path(out), {"format": SELFSUP_FORMAT, "trunk": trunk_state(model), "meta": dict(meta or {}),
                               "config": config.to_dict(), **result})
    return result


@torch.no_grad()
def features(model: nn.Module, images: torch.Tensor | MedDataset, batch_size: int = 64) -> np.ndarray:
    """Trunk features ``[N, F]`` (eval mode, no dropout, on the model's device; returned on the CPU) of
    ``images [N, C, H, W]`` or of a ``MedDataset``'s images, a batch at a time."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        x = images[start:stop] if isinstance(images, torch.Tensor) else \
            collate_samples([images[i] for i in range(start, stop)])["image"]
        out.append(model.forward_features(x.float().to(device)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.num_features), np.float32)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict[str, float]:
    """Logistic regression on standardised frozen features: test ROC AUC (macro one-vs-rest above two classes)
    and accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        raise ConfigError("the linear probe needs labeled images of at least two classes in its training split")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    clf.fit(train_x, train_y)
    probs = clf.predict_proba(test_x)
    if len(np.unique(test_y)) < 2:
        auc = float("nan")
    elif probs.shape[1] == 2:
        auc = float(roc_auc_score(test_y, probs[:, 1]))
    else:
        auc = float(roc_auc_score(test_y, probs, multi_class="ovr", labels=clf.classes_))
    return {"auc": auc, "accuracy": float((clf.predict(test_x) == test_y).mean()), "n_train": int(len(train_y)),
            "n_test": int(len(test_y))}
