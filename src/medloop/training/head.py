"""The frozen-trunk recipe: train only a Bayesian classifier's head on trunk features computed once.

The seed paper fine-tunes only the last layer (Mahapatra et al. 2018). With the trunk frozen, its features of an
image never change, so they are computed once (``medloop.loop.features``) and every round trains the head alone
on them: MC dropout and the learned log-variance stay, so Eq. 6 and every strategy see the same inputs as with
the full recipe, at a small fraction of the cost (a head of a few thousand weights, no convolutions).

``FeatureHead`` wraps a classifier so that its ``forward_features`` is the identity: the MC sampler
(``medloop.uncertainty.mc``) and ``predict`` then run the head on feature vectors exactly as they run the whole
network on images (same dropout masks for the same seed).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from medloop.config import TrainConfig
from medloop.errors import ConfigError, DataError
from medloop.metrics.bootstrap import rank_auc
from medloop.models.dropout import mc_dropout_layers
from medloop.progress import make_progress
from medloop.seeding import torch_stream
from medloop.training.losses import heteroscedastic_ce
from medloop.training.trainer import FitResult, balanced_class_weights, optimizer_step

__all__ = ["FeatureHead", "fit_head", "predict_head"]


class FeatureHead(nn.Module):
    """A classifier seen from its features: ``forward_features`` is the identity, ``forward_head`` the
    classifier's MC-dropout heteroscedastic head (shared, not copied).

    Shape: ``feats [N, F] -> logits [N, K], log_var [N, K]``.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.head = classifier.head
        self.num_classes = classifier.num_classes
        self.num_features = classifier.num_features

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        return feats

    def forward_head(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.head(feats)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.head(feats)


@torch.no_grad()
def predict_head(classifier: nn.Module, feats: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities ``[N, K]`` of the head on trunk features ``[N, F]``, dropout off (one deterministic pass,
    as ``medloop.training.predict`` on the images)."""
    head = FeatureHead(classifier).eval()
    x = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
    out = [head(x[i:i + batch_size])[0].softmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, classifier.num_classes), np.float32)


def _monitor(probs: np.ndarray, labels: np.ndarray) -> float:
    """Validation AUC from ranks (as ``classification_metrics``, without its per-call cost every epoch); the
    accuracy when validation holds one class and AUC is undefined."""
    scores = probs[:, 1] if probs.shape[1] == 2 else probs
    auc = float(rank_auc(scores[None], labels[None])[0])
    return auc if np.isfinite(auc) else float((probs.argmax(1) == labels).mean())


def fit_head(classifier: nn.Module, feats: np.ndarray, labels: np.ndarray, val_feats: np.ndarray | None,
             val_labels: np.ndarray | None, config: TrainConfig, reference: np.ndarray | None = None,
             progress: bool = False) -> FitResult:
    """Train ``classifier.head`` in place on trunk features; the trunk is not touched.

    With ``reference`` (features of the unlabeled pool: no label is used), the head first standardises every
    feature by the reference's mean and standard deviation (its ``feat_shift`` / ``feat_scale`` buffers): pooled
    ReLU features differ in scale by orders of magnitude, and without it a few large features dominate the
    logits (measured on cxr-tb-256: test AUC 0.82-0.83 unstandardised, 0.86 standardised, benchmarks/RESULTS.md).

    Honours the classifier config's ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``schedule``,
    ``class_weights``, ``loss_samples``, ``patience`` and ``seed`` as ``medloop.training.fit`` does (early stopping
    on the validation AUC, the best epoch's head restored). Augmentation cannot apply to cached features; the
    experiment refuses it with this recipe.

    Shape: ``feats [N, F]``, ``labels [N]`` (negative = unlabeled, dropped), ``val_feats [M, F]``.
    """
    if config.workers != 1:
        raise ConfigError(f"The 'workers' parameter ({config.workers}) cannot apply to fit_head, which trains a head on "
                          "cached features in one process; set workers: 1")
    keep = np.asarray(labels) >= 0
    x = torch.as_tensor(np.asarray(feats)[keep], dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels)[keep], dtype=torch.long)
    if len(x) == 0:
        raise DataError("no labeled samples to train the classifier's head on: every label is negative (unlabeled); "
                        "give the labeled images' class indices (0..K-1)")
    head = FeatureHead(classifier)
    if reference is not None:
        ref = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
        head.head.feat_shift.copy_(ref.mean(0))
        head.head.feat_scale.copy_(1.0 / (ref.std(0) + 1e-6))
    weight = None
    if config.class_weights == "balanced":
        weight = balanced_class_weights(np.bincount(y.numpy(), minlength=head.num_classes))
    params = list(head.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    batch = min(config.batch_size, len(x))
    steps = math.ceil(len(x) / batch)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.epochs * steps, 1))
                 if config.schedule == "cosine" else None)
    shuffle_gen = torch_stream(config.seed, "fit", "shuffle")
    loss_gen = torch_stream(config.seed, "fit", "loss")
    for i, layer in enumerate(mc_dropout_layers(head)):
        layer.generator = torch_stream(config.seed, "fit", "dropout", i)
    has_val = val_feats is not None and val_labels is not None and (np.asarray(val_labels) >= 0).any()
    if has_val:
        vkeep = np.asarray(val_labels) >= 0
        val_x, val_y = np.asarray(val_feats)[vkeep], np.asarray(val_labels)[vkeep]
    best, best_epoch, best_state, stale, history, stopped = -math.inf, -1, None, 0, [], False
    with make_progress(transient=not progress) as bar:
        task = bar.add_task("training the head", total=config.epochs, visible=progress)
        for epoch in range(config.epochs):
            head.train()
            order = torch.randperm(len(x), generator=shuffle_gen)
            total, epoch_lr = 0.0, opt.param_groups[0]["lr"]
            for start in range(0, len(x), batch):
                idx = order[start:start + batch]
                logits, log_var = head(x[idx])
                loss = heteroscedastic_ce(logits, log_var, y[idx], config.loss_samples, weight, loss_gen)
                optimizer_step(opt, loss, scheduler)
                total += float(loss.detach()) * len(idx)
            record = {"epoch": epoch, "train_loss": total / len(x), "lr": epoch_lr}
            if has_val:
                value = _monitor(predict_head(classifier, val_x), val_y)
                record["val_auc"] = value
                if value > best:
                    best, best_epoch, stale = value, epoch, 0
                    best_state = copy.deepcopy(head.head.state_dict())
                else:
                    stale += 1
            history.append(record)
            bar.update(task, advance=1)
            if has_val and config.patience and stale >= config.patience:
                stopped = True
                break
    if best_state is not None:
        head.head.load_state_dict(best_state)
    else:
        best_epoch, best = len(history) - 1, float("nan")
    classifier.eval()
    return FitResult(history, best_epoch, float(best), stopped, "auc")
