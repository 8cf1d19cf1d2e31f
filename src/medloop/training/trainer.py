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

__all__ = ["FitResult", "fit", "predict", "evaluate", "trainable_subset", "balanced_class_weights", "rank_world",
           "rank_names"]


@dataclasses.dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_metric: float
    stopped_early: bool
    monitor: str
    workers: int = 1  # processes that trained (DDP world size)


def rank_world() -> tuple[int, int]:
    """This process's rank and the world size of the DDP group it trains in (``0, 1`` outside one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rank_names(rank: int) -> tuple:
    """Stream-name suffix of a rank: rank 0 draws what a one-process run draws, the others their own streams."""
    return () if rank == 0 else ("rank", rank)


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
    """Train ``model`` in place; returns the history and the restored best epoch.

    With ``config.workers > 1`` the training runs in that many processes (``medloop.training.distributed``); inside
    one of them (a DDP group is initialised) each rank trains on its share of every batch.
    """
    rank, world = rank_world()
    if config.workers > 1 and world == 1:
        from medloop.training.distributed import fit_distributed

        return fit_distributed(model, train_ds, val_ds, config, progress=progress)
    if world == 1:
        device = resolve_device(config.device)
    elif torch.distributed.get_backend() == "nccl":  # a launcher's group on GPUs: this rank's own
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
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
    suffix = rank_names(rank)
    loss_gen = torch_stream(config.seed, "fit", "loss", *suffix, device=device)
    for i, layer in enumerate(mc_dropout_layers(model)):
        layer.generator = torch_stream(config.seed, "fit", "dropout", i, *suffix, device=device)
    size = tuple(train_ds[0].image.shape[-2:])
    transform = build_augmentation(config.augmentation, size, seed_for(config.seed, "fit", "augment", *suffix))
    view = TrainingView(train_ds, transform)
    sampler, batch_size, n_local = None, config.batch_size, len(train_ds)
    if world > 1:  # every rank shuffles alike (one seed) and takes every world-th sample: its share of each batch
        sampler = torch.utils.data.DistributedSampler(view, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=seed_for(config.seed, "fit", "shuffle"))
        batch_size, n_local = math.ceil(config.batch_size / world), len(sampler)
    # a last batch of one sample breaks batch norm in training mode: drop it (it is reshuffled next epoch)
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size, shuffle=sampler is None,
                                         sampler=sampler, generator=shuffle_gen if sampler is None else None,
                                         num_workers=0, drop_last=n_local % batch_size == 1 and n_local > 1)
    net = model
    if world > 1:  # gradients averaged over the ranks after each backward pass
        # no buffer broadcast at each forward (18.3 -> 19.8 steps/s per rank on 2 CPUs, RESULTS 5.8): batch norm in
        # training mode normalises by the batch, so a rank's running statistics never touch its gradients; they
        # are made rank 0's before validation
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                  forward_sync_buffers=False)
    scheduler = None
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.epochs * len(loader), 1))
    monitor = "auc" if task == "classify" else "dice_mean"
    best, best_epoch, best_state, stale, history = -math.inf, -1, None, 0, []
    stopped = False
    with make_progress(transient=not progress or rank > 0) as bar:
        task_id = bar.add_task(f"training {type(model).__name__}", total=config.epochs, visible=progress and rank == 0)
        for epoch in range(config.epochs):
            _set_mode(model, config.fine_tune)
            if sampler is not None:
                sampler.set_epoch(epoch)
            total, count, epoch_lr = 0.0, 0, opt.param_groups[0]["lr"]
            for batch in loader:
                x = batch["image"].to(device)
                logits, log_var = net(x)
                if task == "classify":
                    loss = heteroscedastic_ce(logits, log_var, batch["label"].to(device), config.loss_samples, weight, loss_gen)
                else:
                    loss = heteroscedastic_seg_loss(logits, log_var, batch["mask"].to(device).clamp_min(0), weight)
                optimizer_step(opt, loss, scheduler)
                total += float(loss.detach()) * len(x)
                count += len(x)
            record = {"epoch": epoch, "train_loss": total / max(count, 1), "lr": epoch_lr}
            if world > 1:  # rank 0's batch-norm statistics for all: every rank then validates the same model
                for buffer in model.buffers():
                    torch.distributed.broadcast(buffer, 0)
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
    return FitResult(history, best_epoch, float(best), stopped, monitor, world)


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
