"""Supervised recipes: fit / predict / evaluate for classification and segmentation.

Seeded (named streams of the run's seed, ``medloop.seeding``: one for shuffling, one per dropout layer,
one for the loss's logit noise, one for MONAI's augmentation random state), early stopping on a validation
split (the best epoch's weights are restored), optional head-only fine-tuning (the paper fine-tunes the last
layer), progress bars.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from medloop.config import TrainConfig
from medloop.data.dataset import MedDataset, collate_samples
from medloop.device import resolve_device
from medloop.errors import DataError
from medloop.metrics import classification_metrics, segmentation_metrics
from medloop.models.dropout import mc_dropout_layers
from medloop.progress import make_progress
from medloop.seeding import seed_for, torch_stream
from medloop.training.augment import TrainingView, build_augmentation
from medloop.training.losses import heteroscedastic_ce, heteroscedastic_seg_loss

__all__ = ["FitResult", "fit", "predict", "evaluate", "trainable_subset", "balanced_class_weights"]


@dataclasses.dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_metric: float
    stopped_early: bool
    monitor: str


def trainable_subset(dataset: MedDataset, task: str) -> MedDataset:
    """Samples usable for the task: labeled images (classify) or images with masks (segment)."""
    keep = np.nonzero(dataset.labels >= 0)[0] if task == "classify" else np.nonzero(dataset.has_mask)[0]
    if len(keep) == 0:
        what = "image labels" if task == "classify" else "masks"
        raise DataError(f"no samples with {what} in {dataset.info.root}; the '{task}' task needs them")
    return dataset.subset(keep)


def balanced_class_weights(counts: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights normalized to mean 1 (classes absent from training get weight 0)."""
    counts = counts.astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, scheduler=None) -> None:
    """One step: gradients of ``loss``, the optimizer's update, then the per-step schedule (if any)."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    if scheduler is not None:
        scheduler.step()


def _set_mode(model: nn.Module, fine_tune: str) -> None:
    if fine_tune == "head":
        model.eval()  # frozen trunk: batch norm keeps its statistics
        if hasattr(model, "head"):
            model.head.train()  # MC dropout of the head stays active while fine-tuning
    else:
        model.train()


def fit(model: nn.Module, train_ds: MedDataset, val_ds: MedDataset | None, config: TrainConfig,
        progress: bool = True) -> FitResult:
    """Train ``model`` in place; returns the history and the restored best epoch."""
    device = resolve_device(config.device)
    model.to(device)
    task = config.task
    train_ds = trainable_subset(train_ds, task)
    val_ds = trainable_subset(val_ds, task) if val_ds is not None and len(val_ds) else None
    num_classes = model.num_classes
    weight = None
    if config.class_weights == "balanced":
        if task == "classify":
            counts = np.bincount(train_ds.labels, minlength=num_classes)
        else:
            counts = np.zeros(num_classes)
            for s in train_ds:
                counts += np.bincount(s.mask.numpy().ravel(), minlength=num_classes)[:num_classes]
            counts = np.sqrt(counts)  # pixel counts are extreme; square-root damping keeps CE stable
        weight = balanced_class_weights(counts).to(device)
    for p in model.parameters():
        p.requires_grad_(config.fine_tune == "all")
    if config.fine_tune == "head":
        for p in model.head_parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    shuffle_gen = torch_stream(config.seed, "fit", "shuffle")
    loss_gen = torch_stream(config.seed, "fit", "loss", device=device)
    for i, layer in enumerate(mc_dropout_layers(model)):
        layer.generator = torch_stream(config.seed, "fit", "dropout", i, device=device)
    size = tuple(train_ds[0].image.shape[-2:])
    transform = build_augmentation(config.augmentation, size, seed_for(config.seed, "fit", "augment"))
    # a last batch of one sample breaks batch norm in training mode: drop it (it is reshuffled next epoch)
    loader = torch.utils.data.DataLoader(TrainingView(train_ds, transform), batch_size=config.batch_size,
                                         shuffle=True, generator=shuffle_gen, num_workers=0,
                                         drop_last=len(train_ds) % config.batch_size == 1 and len(train_ds) > 1)
    scheduler = None
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.epochs * len(loader), 1))
    monitor = "auc" if task == "classify" else "dice_mean"
    best, best_epoch, best_state, stale, history = -math.inf, -1, None, 0, []
    stopped = False
    with make_progress(transient=not progress) as bar:
        task_id = bar.add_task(f"training {type(model).__name__}", total=config.epochs, visible=progress)
        for epoch in range(config.epochs):
            _set_mode(model, config.fine_tune)
            total, count, epoch_lr = 0.0, 0, opt.param_groups[0]["lr"]
            for batch in loader:
                x = batch["image"].to(device)
                logits, log_var = model(x)
                if task == "classify":
                    loss = heteroscedastic_ce(logits, log_var, batch["label"].to(device), config.loss_samples, weight, loss_gen)
                else:
                    loss = heteroscedastic_seg_loss(logits, log_var, batch["mask"].to(device).clamp_min(0), weight)
                optimizer_step(opt, loss, scheduler)
                total += float(loss.detach()) * len(x)
                count += len(x)
            record = {"epoch": epoch, "train_loss": total / max(count, 1), "lr": epoch_lr}
            if val_ds is not None:
                metrics = evaluate(model, val_ds, task, batch_size=config.batch_size, device=device)
                value = metrics[monitor]
                if math.isnan(value) and task == "classify":
                    value = metrics["accuracy"]  # one class in the validation split: AUC undefined
                record[f"val_{monitor}"] = value
                if value > best:
                    best, best_epoch, stale = value, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
            history.append(record)
            bar.update(task_id, advance=1, description=f"epoch {epoch + 1}/{config.epochs} loss {record['train_loss']:.3f}"
                       + (f" val {monitor} {record[f'val_{monitor}']:.3f}" if val_ds is not None else ""))
            if val_ds is not None and config.patience and stale >= config.patience:
                stopped = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch, best = len(history) - 1, float("nan")
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return FitResult(history, best_epoch, float(best), stopped, monitor)


@torch.no_grad()
def predict(model: nn.Module, dataset: MedDataset, batch_size: int = 32, device: torch.device | str = "cpu") -> dict[str, Any]:
    """One deterministic pass (dropout off): ``probs [N, K]`` or ``probs [N, K, H, W]`` and ``pred``."""
    model.eval().to(device)
    probs = []
    for start in range(0, len(dataset), batch_size):
        x = collate_samples([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])["image"]
        logits, _ = model(x.to(device))
        probs.append(logits.softmax(1).cpu())
    p = torch.cat(probs)
    return {"probs": p, "pred": p.argmax(1)}


def evaluate(model: nn.Module, dataset: MedDataset, task: str, batch_size: int = 32,
             device: torch.device | str = "cpu") -> dict[str, Any]:
    """Classification: accuracy, sensitivity, specificity, ROC AUC, ECE. Segmentation: Dice, HD95, HD per class."""
    dataset = trainable_subset(dataset, task)
    out = predict(model, dataset, batch_size, device)
    if task == "classify":
        return classification_metrics(out["probs"].numpy(), dataset.labels)
    target = torch.stack([s.mask for s in dataset])
    labels = dataset.info.mask_labels or {c: f"label {c}" for c in range(out["probs"].shape[1])}
    return segmentation_metrics(out["pred"], target, labels)
