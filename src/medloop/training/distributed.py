"""Data-parallel training on this machine's CPUs: ``TrainConfig.workers`` processes, PyTorch DDP over gloo.

``fit_distributed`` spawns the processes (fresh interpreters: nothing of the caller's threads or state is
inherited), hands each the model, the training and validation samples and the config, and each runs ``fit``
inside the DDP group: the same shuffle on every rank, each rank taking its share of every batch of
``batch_size``, the gradients averaged after every backward pass, so the ranks hold the same weights throughout.
Rank 0's batch-norm statistics are copied to every rank before validation, so all ranks validate the same model
and stop at the same epoch. Rank 0 writes the restored best weights and the history; the caller's model gets
them. One thread per process: on a CPU, N processes of one thread train faster than one process of N threads.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medloop.config import TrainConfig
from medloop.data.dataset import MedDataset
from medloop.data.record import DatasetInfo, Sample
from medloop.models.dropout import mc_dropout_layers

__all__ = ["fit_distributed"]


def _samples(ds: MedDataset | None) -> list[Sample] | None:
    return None if ds is None else [ds[i] for i in range(len(ds))]


def _worker(rank: int, world: int, rendezvous: str, model: nn.Module, train: list[Sample], val: list[Sample] | None,
            info: DatasetInfo, config: TrainConfig, result: str) -> None:
    from medloop.training.trainer import fit

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        train_ds = MedDataset.from_samples(train, info)
        val_ds = MedDataset.from_samples(val, info) if val else None
        out = fit(model, train_ds, val_ds, dataclasses.replace(config, device="cpu"), progress=False)
        if rank == 0:
            torch.save({"state_dict": model.state_dict(), "fit": dataclasses.asdict(out)}, result)
        torch.distributed.barrier()  # no rank leaves while another still talks to it
    finally:
        torch.distributed.destroy_process_group()


def fit_distributed(model: nn.Module, train_ds: MedDataset, val_ds: MedDataset | None, config: TrainConfig,
                    progress: bool = True) -> Any:
    """``fit`` in ``config.workers`` processes (DDP over gloo); ``model`` gets the trained weights, as from ``fit``.

    Returns the ``FitResult`` of rank 0 (``workers`` says how many processes trained).
    """
    from medloop.training.trainer import FitResult, trainable_subset

    train_ds = trainable_subset(train_ds, config.task)
    val_ds = trainable_subset(val_ds, config.task) if val_ds is not None and len(val_ds) else None
    shipped = model.cpu()
    for layer in mc_dropout_layers(shipped):
        layer.generator = None  # each rank seeds its own (a generator does not travel between processes)
    with tempfile.TemporaryDirectory(prefix="medloop-ddp-") as tmp:
        rendezvous, result = str(Path(tmp) / "rendezvous"), str(Path(tmp) / "result.pt")
        torch.multiprocessing.start_processes(
            _worker, args=(config.workers, rendezvous, shipped, _samples(train_ds), _samples(val_ds), train_ds.info,
                           config, result),
            nprocs=config.workers, join=True, start_method="spawn")
        record = torch.load(result, weights_only=False)
    model.load_state_dict(record["state_dict"])
    model.eval()
    return FitResult(**record["fit"])
