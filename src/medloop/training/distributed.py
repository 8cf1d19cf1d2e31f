"""Data-parallel training on this machine's CPUs: ``TrainConfig.workers`` / ``Pix2PixConfig.workers`` processes,
PyTorch DDP over gloo.

``fit_distributed`` spawns the processes (fresh interpreters: nothing of the caller's threads or state is
inherited), hands each the model, the training and validation samples and the config, and each runs ``fit``
inside the DDP group: the same shuffle on every rank, each rank taking its share of every batch of
``batch_size``, the gradients averaged after every backward pass, so the ranks hold the same weights throughout.
Rank 0's batch-norm statistics are copied to every rank before validation, so all ranks validate the same model
and stop at the same epoch. Rank 0 writes the restored best weights and the history; the caller's model gets
them. One thread per process: on a CPU, N processes of one thread train faster than one process of N threads.

Beyond one machine, a launcher starts the processes: ``torchrun --nnodes N --nproc-per-node M -m medloop train ...``
(or any launcher that sets torch's ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` variables). ``launched_group`` joins
the group it made (NCCL where the rank has a GPU, gloo otherwise), and ``fit`` trains each rank on its share.

``train_pix2pix_distributed`` does the same for pix2pix: each rank builds a ``Pix2PixTrainer`` from the caller's
config, loads the caller's state (networks, optimizers) and runs ``train_pix2pix`` inside the group, G and D
wrapped in DDP; rank 0's state and the history (losses averaged over the ranks) go back to the caller's trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medloop.config import TrainConfig
from medloop.errors import ConfigError
from medloop.data.dataset import MedDataset
from medloop.data.record import DatasetInfo, Sample
from medloop.training.pix2pix import Pix2PixConfig, Pix2PixTrainer, train_pix2pix

__all__ = ["fit_distributed", "train_pix2pix_distributed", "launched", "launched_group"]


def launched() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` of a process a launcher such as torchrun started; ``(0, 1, 0)`` when it
    runs alone. A malformed variable is an error naming it."""
    values = []
    for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default)
        try:
            values.append(int(text))
        except ValueError:
            raise ConfigError(f"the environment variable {name} must be an integer (torchrun sets it); got {text!r}: "
                              "start the command with torchrun, or unset it") from None
    rank, world, local = values
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"the launcher's RANK ({rank}) and WORLD_SIZE ({world}) do not fit together: start the "
                          "command with torchrun, or unset them")
    return rank, world, local


@contextlib.contextmanager
def launched_group(device: str = "auto") -> Iterator[tuple[int, int]]:
    """Inside: ``(rank, world size)``. Started by a launcher with more than one process, this process joins the
    group it made (``env://``): NCCL when this rank gets a GPU (``cuda:LOCAL_RANK``), gloo on CPUs; the group is
    left on exit. Alone, nothing happens and ``(0, 1)`` is given."""
    from medloop.device import resolve_device

    rank, world, local = launched()
    if world == 1 or torch.distributed.is_initialized():
        yield (torch.distributed.get_rank(), torch.distributed.get_world_size()) \
            if torch.distributed.is_initialized() else (0, 1)
        return
    gpu = resolve_device(device).type == "cuda"
    if gpu:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if gpu else "gloo", init_method="env://")
    try:
        yield rank, world
        torch.distributed.barrier()  # no rank leaves while another still talks to it
    finally:
        torch.distributed.destroy_process_group()


def rank_spread(*modules: nn.Module) -> float:
    """Inside a group: the largest difference of any parameter between two ranks (0.0: DDP kept every rank's
    weights equal, as it must; a gradient that was not averaged shows here)."""
    flat = torch.cat([p.detach().flatten().double() for m in modules for p in m.parameters()])
    high, low = flat.clone(), flat.clone()
    torch.distributed.all_reduce(high, torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, torch.distributed.ReduceOp.MIN)
    return float((high - low).max())


def _member(rank: int, world: int, rendezvous: str, result: str, train: Callable[..., dict], inputs: str) -> None:
    """One process of the group: ``train(*args)`` inside it, the arguments read from ``inputs`` onto the CPU,
    memory-mapped copy-on-write: the ranks share the pages they only read (the samples) and each gets its own copy
    of what it writes (the model's weights); rank 0 saves what it returns to ``result``."""
    torch.set_num_threads(1)
    args = torch.load(inputs, mmap=True, map_location="cpu", weights_only=False)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        record = train(*args)
        if rank == 0:
            torch.save(record, result)
        torch.distributed.barrier()  # no rank leaves while another still talks to it
    finally:
        torch.distributed.destroy_process_group()


def _run_group(world: int, train: Callable[..., dict], *args: Any) -> dict:
    """``train(*args)`` (a module-level function) in ``world`` spawned processes of one DDP group; rank 0's record.

    The arguments travel in a file, not through the spawn pickler: that pickler would move every tensor of the
    caller's to shared memory (``/dev/shm``, 64 MB in a default container) and hand all ranks the same storage,
    so a rank writing a tensor (an optimizer stepping the weights) would write every rank's."""
    with tempfile.TemporaryDirectory(prefix="medloop-ddp-") as tmp:
        rendezvous, result, inputs = (str(Path(tmp) / name) for name in ("rendezvous", "result.pt", "inputs.pt"))
        torch.save(args, inputs)
        torch.multiprocessing.start_processes(_member, args=(world, rendezvous, result, train, inputs),
                                              nprocs=world, join=True, start_method="spawn")
        return torch.load(result, weights_only=False)


def _samples(ds: MedDataset | None) -> list[Sample] | None:
    return None if ds is None else [ds[i] for i in range(len(ds))]


def _fit_rank(model: nn.Module, train: list[Sample], val: list[Sample] | None, info: DatasetInfo,
              config: TrainConfig) -> dict:
    from medloop.training.trainer import fit

    train_ds = MedDataset.from_samples(train, info)
    val_ds = MedDataset.from_samples(val, info) if val else None
    out = fit(model, train_ds, val_ds, dataclasses.replace(config, device="cpu"), progress=False)
    return {"state_dict": model.state_dict(), "fit": dataclasses.asdict(out)}


def fit_distributed(model: nn.Module, train_ds: MedDataset, val_ds: MedDataset | None, config: TrainConfig,
                    progress: bool = True) -> Any:
    """``fit`` in ``config.workers`` processes (DDP over gloo); ``model`` gets the trained weights, as from ``fit``.

    Returns the ``FitResult`` of rank 0 (``workers`` says how many processes trained).
    """
    from medloop.training.trainer import FitResult, trainable_subset

    train_ds = trainable_subset(train_ds, config.task)
    val_ds = trainable_subset(val_ds, config.task) if val_ds is not None and len(val_ds) else None
    record = _run_group(config.workers, _fit_rank, model, _samples(train_ds), _samples(val_ds), train_ds.info,
                        config)
    model.load_state_dict(record["state_dict"])
    model.eval()
    return FitResult(**record["fit"])


def _pix2pix_rank(state: dict, in_channels: int, num_classes: int, size: int, config: Pix2PixConfig,
                  images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, seed: int, progress: bool,
                  epochs: int | None) -> dict:
    trainer = Pix2PixTrainer(in_channels, num_classes, size, config.replace(device="cpu"))
    trainer.load_state_dict(state)
    history = train_pix2pix(trainer, images, labels, weights, seed, progress, epochs)
    return {"state": trainer.state_dict(), "history": history, "rank_spread": rank_spread(trainer.G, trainer.D)}


def train_pix2pix_distributed(trainer: Pix2PixTrainer, images: torch.Tensor, labels: torch.Tensor,
                              weights: torch.Tensor, seed: int, progress: bool = True,
                              epochs: int | None = None) -> list[dict[str, float]]:
    """``train_pix2pix`` in ``trainer.config.workers`` processes (DDP over gloo); ``trainer`` gets the trained
    networks, optimizer states and class weights, as from ``train_pix2pix``. Returns the history."""
    trainer.seed_dropout(seed)  # the caller's streams restart from ``seed``, as in a one-process call
    record = _run_group(trainer.config.workers, _pix2pix_rank, trainer.state_dict(), trainer.in_channels,
                        trainer.num_classes, trainer.size, trainer.config, images, labels, weights, seed, progress,
                        epochs)
    trainer.load_state_dict(record["state"])
    trainer.G.eval()
    trainer.D.eval()
    trainer.rank_spread = record["rank_spread"]
    return record["history"]
