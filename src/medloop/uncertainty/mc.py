"""Fast MC-dropout sampling and streaming pool scoring.

The deterministic trunk (everything before the first dropout) runs once per input; only the stochastic
head runs T times, batched as T stacked copies. Masks come from one generator per pass (see
``medloop.models.dropout``), so the samples equal those of T naive full passes under the same seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medloop.data.dataset import MedDataset, collate_samples
from medloop.models.dropout import (
    PassGenerators,
    mc_dropout_layers,
    mc_generators,
    mc_sample_generators,
    mc_sampling,
)
from medloop.progress import track
from medloop.uncertainty.measures import REDUCTIONS, all_measures, reduce_map

__all__ = ["SEEDINGS", "mc_forward", "naive_mc_forward", "score_pool", "score_batch", "batch_generators",
           "score_features", "PoolScores"]


def _repeat(feats: Any, times: int) -> Any:
    if isinstance(feats, torch.Tensor):
        return feats.repeat(times, *([1] * (feats.dim() - 1)))  # t-major: [T * N, ...]
    return [_repeat(f, times) for f in feats]


def _split(out: torch.Tensor | None, times: int) -> torch.Tensor | None:
    if out is None:
        return None
    return out.reshape(times, -1, *out.shape[1:]).transpose(0, 1)  # [N, T, ...]


@torch.no_grad()
def mc_forward(model: nn.Module, x: torch.Tensor, generators: Sequence[PassGenerators],
               max_head_batch: int | None = None, features: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """T = len(generators) MC-dropout samples of ``model`` on ``x``, trunk computed once.

    Args:
        max_head_batch: at most this many stacked copies per head call (bounds memory for dense heads
            such as a UNet decoder); the samples do not change with it.
        features: ``model.forward_features(x)`` when the caller has it already (it also wants the embedding).

    Returns:
        ``mc_logits [N, T, C, ...]`` and ``mc_log_var`` (same shape) or None.
    """
    model.eval()
    feats = model.forward_features(x) if features is None else features
    n = x.shape[0]
    per_call = len(generators) if max_head_batch is None else max(1, max_head_batch // max(n, 1))
    logits, log_vars = [], []
    for start in range(0, len(generators), per_call):
        gens = generators[start:start + per_call]
        with mc_sampling(model, gens):
            lo, lv = model.forward_head(_repeat(feats, len(gens)))
        logits.append(_split(lo, len(gens)))
        log_vars.append(_split(lv, len(gens)))
    mc_log_var = None if log_vars[0] is None else torch.cat(log_vars, 1)
    return torch.cat(logits, 1), mc_log_var


@torch.no_grad()
def naive_mc_forward(model: nn.Module, x: torch.Tensor, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference: T full forward passes, one per generator. Same output as ``mc_forward``, T times the cost."""
    model.eval()
    logits, log_vars = [], []
    for g in generators:
        with mc_sampling(model, [g]):
            lo, lv = model(x)
        logits.append(lo)
        log_vars.append(lv)
    return torch.stack(logits, 1), (None if log_vars[0] is None else torch.stack(log_vars, 1))


@dataclasses.dataclass
class PoolScores:
    """Per-sample scores of a pool: ``columns[name] -> np.ndarray [N]`` plus ids, in dataset order."""

    sample_ids: list[str]
    case_ids: list[str]
    columns: dict[str, np.ndarray]

    def rows(self) -> list[dict[str, Any]]:
        return [{"sample_id": s, "case_id": c, **{k: float(v[i]) for k, v in self.columns.items()}}
                for i, (s, c) in enumerate(zip(self.sample_ids, self.case_ids))]


def _class_columns(maps: dict[str, torch.Tensor], mean_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """A classifier's per-image columns: every measure, the predicted class, its probability, each class's."""
    cols = dict(maps)
    cols["pred"] = mean_probs.argmax(1).float()
    cols["pred_prob"] = mean_probs.max(1).values
    for c in range(mean_probs.shape[1]):
        cols[f"prob_{c}"] = mean_probs[:, c]
    return cols


def _pixel_maps(mc_logits: torch.Tensor,
                mc_log_var: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every measure's map ``[N, *spatial]`` and the mean probabilities ``[N, K, *spatial]`` of a segmentation
    batch, one image at a time: one image's temporaries (``[T, K, H, W]`` each) stay in cache, which halves the
    measures' cost on CPU against whole batches; every measure is per pixel, so the maps are the same."""
    maps: dict[str, list[torch.Tensor]] = {}
    mean_probs = []
    for i in range(len(mc_logits)):
        mc_probs = mc_logits[i:i + 1].softmax(2)  # [1, T, K, *spatial]
        log_var = None if mc_log_var is None else mc_log_var[i:i + 1]
        for name, umap in all_measures(mc_probs, log_var).items():
            maps.setdefault(name, []).append(umap)
        mean_probs.append(mc_probs.mean(1))
    return {name: torch.cat(parts) for name, parts in maps.items()}, torch.cat(mean_probs)


@torch.no_grad()
def score_features(head: nn.Module, feats: np.ndarray, n_mc_samples: int = 20, batch_size: int = 32,
                   seed: int = 0, max_head_batch: int | None = 64) -> dict[str, np.ndarray]:
    """``score_pool``'s classification columns from trunk features ``[N, F]`` computed once (the frozen-trunk
    recipe, ``medloop.training.head.FeatureHead``). Batches and dropout masks follow ``score_pool``, so with the
    same ``seed`` and ``batch_size`` the columns equal those of ``score_pool`` on the images."""
    check_mc_args(n_mc_samples, "score_features")
    x = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
    columns: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), batch_size):
        gens = mc_generators(seed, n_mc_samples, offset=start)
        mc_logits, mc_log_var = mc_forward(head, x[start:start + batch_size], gens, max_head_batch=max_head_batch)
        mc_probs = mc_logits.softmax(2)  # [N, T, K]
        for key, value in _class_columns(all_measures(mc_probs, mc_log_var), mc_probs.mean(1)).items():
            columns.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in columns.items()}


SEEDINGS = ("batch", "sample")


def batch_generators(seed: int, n_mc_samples: int, seeding: str, start: int, sample_ids: Sequence[str],
                     device: torch.device | str = "cpu") -> list:
    """The MC generators of one batch: ``batch`` seeds by the batch's first position in the pool (one generator per
    pass), ``sample`` by each sample's id (one per pass and sample: the same masks in any batch, on any worker)."""
    if seeding == "sample":
        return mc_sample_generators(seed, sample_ids, n_mc_samples, device=device)
    return mc_generators(seed, n_mc_samples, offset=start, device=device)


@torch.no_grad()
def score_batch(model: nn.Module, x: torch.Tensor, generators: Sequence, reductions: Sequence[str] = REDUCTIONS,
                q: float = 0.05, max_head_batch: int | None = 64, features: Any = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, torch.Tensor]:
    """One batch's per-sample columns (see ``score_pool``), and for segmentation the measure maps and mean
    probabilities (``None, mean_probs`` for classification). ``features``: as for ``mc_forward``."""
    mc_logits, mc_log_var = mc_forward(model, x, generators, max_head_batch=max_head_batch, features=features)
    batch_cols: dict[str, torch.Tensor] = {}
    if mc_logits.dim() == 3:  # classification: one number per image already
        mc_probs = mc_logits.softmax(2)
        mean_probs = mc_probs.mean(1)
        batch_cols.update(_class_columns(all_measures(mc_probs, mc_log_var), mean_probs))
        return batch_cols, None, mean_probs
    maps, mean_probs = _pixel_maps(mc_logits, mc_log_var)
    # "argmax > 0" without argmax, which is ~100x slower over the class dim on CPU (ties go to background)
    foreground = mean_probs[:, 1:].amax(1) > mean_probs[:, 0]
    for name, umap in maps.items():
        for how in reductions:
            batch_cols[f"{name}_{how}"] = reduce_map(umap, how, foreground, q)
    batch_cols["foreground_fraction"] = foreground.flatten(1).float().mean(1)
    return batch_cols, maps, mean_probs


def check_mc_args(n_mc_samples: int, where: str, seeding: str = "batch") -> None:
    """Refuse fewer than one MC pass or an unknown seeding, naming ``where`` they were given."""
    if n_mc_samples < 1:
        raise ValueError(f"The 'n_mc_samples' parameter of {where} must be >= 1 (MC-dropout passes); got "
                         f"{n_mc_samples} instead")
    if seeding not in SEEDINGS:
        raise ValueError(f"The 'seeding' parameter of {where} must be one of {', '.join(SEEDINGS)}; got {seeding!r} "
                         "instead")


@torch.no_grad()
def score_pool(
    model: nn.Module,
    dataset: MedDataset,
    n_mc_samples: int = 20,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    reductions: Sequence[str] = REDUCTIONS,
    q: float = 0.05,
    max_head_batch: int | None = 64,
    on_maps: Callable[[list[int], dict[str, torch.Tensor], torch.Tensor], None] | None = None,
    progress: bool = True,
    seeding: str = "batch",
) -> PoolScores:
    """Score every sample of ``dataset`` with every uncertainty measure, streaming in batches.

    Memory does not grow with the pool: each batch's MC outputs are reduced to per-sample numbers
    (and, for segmentation, handed to ``on_maps(indices, maps, mean_probs)`` to be written) before the
    next batch. Under ``seeding="batch"`` masks for batch ``b`` come from generators seeded by
    ``(seed, first index of b, t)``; under ``seeding="sample"`` each sample's from ``(seed, its sample id, t)``, so
    the scores do not depend on the batch size or on which worker scored the sample (``medloop.engine``).

    Columns: every measure (classification), or ``{measure}_{reduction}`` (segmentation), plus the
    predicted class and its mean probability (classification) or the predicted foreground fraction.
    """
    check_mc_args(n_mc_samples, "score_pool", seeding)
    if not mc_dropout_layers(model):
        import warnings

        warnings.warn("no MCDropout layer found: MC sampling is deterministic", stacklevel=2)
    model.eval().to(device)
    columns: dict[str, list[np.ndarray]] = {}
    sample_ids = dataset.sample_ids
    starts = range(0, len(dataset), batch_size)
    for start in track(starts, f"MC scoring (T={n_mc_samples})", enabled=progress):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        x = collate_samples([dataset[i] for i in idx])["image"].to(device)
        gens = batch_generators(seed, n_mc_samples, seeding, start, [sample_ids[i] for i in idx], device=x.device)
        batch_cols, maps, mean_probs = score_batch(model, x, gens, reductions, q, max_head_batch)
        if maps is not None and on_maps is not None:
            on_maps(idx, {k: v.cpu() for k, v in maps.items()}, mean_probs.cpu())
        for key, value in batch_cols.items():
            columns.setdefault(key, []).append(value.cpu().numpy())
    return PoolScores(dataset.sample_ids, dataset.case_ids, {k: np.concatenate(v) for k, v in columns.items()})
