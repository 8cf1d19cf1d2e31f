"""What every engine runs on a pool: the spec of a scoring job, the scorer a worker holds, the global top-k.

The scorer reads its entries itself (``medloop.data.read_entry``: the same readers, validation and resizing as
``load_dataset``), so a driver ships only entries (ids and paths) and never holds the pool's pixels. Dropout
masks are seeded per sample id (``score_pool(seeding="sample")``): the in-process path and any number of
workers, in any batches, give the same scores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.config import DataConfig
from medloop.data.dataset import collate_samples, read_entry, resolve_layout, scan_entries
from medloop.data.record import Entry, Sample
from medloop.errors import ConfigError, DataError
from medloop.uncertainty.mc import REDUCTIONS, batch_generators, check_mc_args, score_batch

__all__ = ["ScoreSpec", "BatchScorer", "scan_pool", "model_version", "rank_column", "merge_top_k", "top_k",
           "ID_COLUMNS"]

log = logging.getLogger("medloop.engine")

ID_COLUMNS = ("sample_id", "case_id", "entry_id")


def model_version(checkpoint: str | Path) -> str:
    """The first 16 hex digits of the checkpoint file's SHA-256: a retrained model is a new version."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
    """A scoring job, whatever runs it.

    Args:
        checkpoint: a ``medloop train`` checkpoint; every worker loads it from this path (on a cluster: a path
            that every node sees).
        data: the pool, at the checkpoint's working size (``for_checkpoint``).
        batch_size: images per model call (a worker's batch).
    """

    checkpoint: str
    data: DataConfig
    n_mc_samples: int = 20
    batch_size: int = 32
    seed: int = 0
    max_head_batch: int | None = 64

    def __post_init__(self) -> None:
        check_mc_args(self.n_mc_samples, "ScoreSpec", "sample")
        if self.batch_size < 1:
            raise ConfigError(f"The 'batch_size' parameter of ScoreSpec must be >= 1; got {self.batch_size} instead")

    @classmethod
    def for_checkpoint(cls, checkpoint: str | Path, data: DataConfig, **params: Any) -> "ScoreSpec":
        """The spec with ``data`` read at the checkpoint's working size, channels and normalisation."""
        from medloop.training import load_checkpoint
        from medloop.training.checkpoint import data_as_trained

        return cls(str(checkpoint), data_as_trained(data, load_checkpoint(checkpoint)[1]), **params)

    def params(self) -> dict[str, Any]:
        """What the scores depend on besides the model's weights (the batch size and workers do not count)."""
        return {"data": self.data.to_dict(), "n_mc_samples": self.n_mc_samples, "seed": self.seed,
                "seeding": "sample", "reductions": list(REDUCTIONS)}

    def version(self) -> str:
        """``<model version>-<params digest>``: the folder a run's output lives in, so that a rerun with the same
        model and parameters finds it and a retrained model never mixes with it."""
        params = hashlib.sha256(json.dumps(self.params(), sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{model_version(self.checkpoint)}-{params}"


def _skip_or_raise(data: DataConfig, skipped: list[DataError], err: DataError) -> None:
    """``on_error: raise`` raises ``err``; ``skip`` records and logs it."""
    if data.on_error == "raise":
        raise err
    skipped.append(err)
    log.warning("skipped %s", err)


def scan_pool(spec: ScoreSpec) -> tuple[list[Entry], list[DataError]]:
    """The entries of ``spec``'s pool (ids and paths, no pixels) and the DataErrors of those left out by the scan
    under ``on_error: skip``; under ``raise`` the first one is raised."""
    skipped: list[DataError] = []
    entries = scan_entries(resolve_layout(spec.data), spec.data, lambda err: _skip_or_raise(spec.data, skipped, err))
    return entries, skipped


class BatchScorer:
    """Holds the model (loaded once) and the layout reader; scores a batch of entries into columns.

    ``scorer(entries)`` returns ``{"sample_id", "case_id", "entry_id": [N] str, every score column: [N] float32,
    "embedding": [N, F] float16}`` (no embedding for networks whose trunk is not a vector, such as the UNet).
    Under ``on_error: skip`` unreadable entries are left out (and logged); under ``raise`` the DataError names
    the file.
    """

    def __init__(self, spec: ScoreSpec, device: str | torch.device = "cpu"):
        from medloop.training import load_checkpoint

        self.spec = spec
        self.device = torch.device(device)
        self.model, _ = load_checkpoint(spec.checkpoint, device=self.device)
        self.model.eval()
        self.layout = resolve_layout(spec.data)
        self.skipped: list[DataError] = []

    def read(self, entries: Sequence[Entry]) -> list[tuple[Sample, str]]:
        """The samples of ``entries``, each with the id of the entry it was read from (slices of a volume share
        it: resuming skips whole entries)."""
        read: list[tuple[Sample, str]] = []
        for entry in entries:
            try:
                read.extend((s, entry.entry_id) for s in read_entry(self.layout, entry, self.spec.data))
            except DataError as err:
                _skip_or_raise(self.spec.data, self.skipped, err)
        return read

    @torch.no_grad()
    def __call__(self, entries: Sequence[Entry]) -> dict[str, np.ndarray]:
        read = self.read(entries)
        if not read:  # every entry skipped: no rows, but the columns every other batch has
            return {k: v[:0] for k, v in self._template().items()}
        samples = [s for s, _ in read]
        ids = [s.sample_id for s in samples]
        out: dict[str, np.ndarray] = {
            "sample_id": np.array(ids, dtype=object),
            "case_id": np.array([s.case_id for s in samples], dtype=object),
            "entry_id": np.array([entry_id for _, entry_id in read], dtype=object),
        }
        out.update(self.score_images(collate_samples(samples)["image"], ids))
        return out

    @torch.no_grad()
    def score_images(self, images: torch.Tensor, sample_ids: list[str]) -> dict[str, np.ndarray]:
        """The score columns (and ``embedding``) of ``images [N, C, H, W]``, dropout seeded by ``sample_ids``."""
        spec = self.spec
        x = images.to(self.device)
        feats = self.model.forward_features(x)
        gens = batch_generators(spec.seed, spec.n_mc_samples, "sample", 0, sample_ids, device=x.device)
        cols, _, _ = score_batch(self.model, x, gens, max_head_batch=spec.max_head_batch, features=feats)
        out = {k: v.cpu().numpy().astype(np.float32) for k, v in cols.items()}
        if isinstance(feats, torch.Tensor) and feats.dim() == 2:
            out["embedding"] = feats.cpu().numpy().astype(np.float16)  # [N, F]
        return out

    def _template(self) -> dict[str, np.ndarray]:
        """One row scored from a blank image: the names, types and embedding width of the columns."""
        size = self.spec.data.size or 64
        blank = torch.zeros(1, self.spec.data.channels, size, size)
        ids = {k: np.array([""], dtype=object) for k in ID_COLUMNS}
        return {**ids, **self.score_images(blank, [""])}


def rank_column(columns: Sequence[str], rank_by: str | None = None) -> str:
    """The column the top-k ranks by: ``rank_by``, else the combined uncertainty (``combined`` for classifiers,
    ``combined_mean`` for segmentation), as ``medloop score`` ranks."""
    if rank_by is None:
        rank_by = "combined" if "combined" in columns else "combined_mean"
    if rank_by not in columns:
        numeric = [c for c in columns if c not in ID_COLUMNS and c != "embedding"]
        raise ConfigError(f"The 'rank_by' parameter must name a score column ({', '.join(numeric)}); got {rank_by!r} "
                          "instead")
    return rank_by


def merge_top_k(best_ids: np.ndarray, best_scores: np.ndarray, ids: np.ndarray, scores: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest of two (id, score) sets, highest first; ties go to the smaller id, so the result does
    not depend on the order rows arrive in (files, workers). NaN scores rank last."""
    all_ids = np.concatenate([np.asarray(best_ids, dtype=object), np.asarray(ids, dtype=object)])
    all_scores = np.concatenate([np.asarray(best_scores, np.float64), np.asarray(scores, np.float64)])
    key = np.where(np.isnan(all_scores), np.inf, -all_scores)
    order = np.lexsort((all_ids.astype(str), key))[:k]
    return all_ids[order], all_scores[order]


def top_k(ids: Sequence[str], scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-scoring ids of an in-memory pool, ranked as ``merge_top_k`` ranks."""
    empty = np.array([], dtype=object)
    return merge_top_k(empty, np.array([]), np.asarray(list(ids), dtype=object), scores, k)
