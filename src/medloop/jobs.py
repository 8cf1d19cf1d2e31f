"""Library entry points behind ``medloop train``, ``medloop pretrain`` and ``medloop score`` (the CLI only parses
arguments)."""

from __future__ import annotations

import csv
import heapq
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medloop.config import DataConfig, TrainConfig
from medloop.data import MedDataset, load_dataset, split_by_case
from medloop.device import resolve_device
from medloop.errors import ConfigError
from medloop.models import MODEL_TASKS, build_model, load_pretrained
from medloop.runinfo import write_run_record
from medloop.seeding import torch_init
from medloop.storage import save_figure, write_json, write_text
from medloop.training import evaluate, fit, load_checkpoint, save_checkpoint
from medloop.uncertainty import score_pool

if TYPE_CHECKING:
    from medloop.training.selfsup import SelfSupConfig

__all__ = ["train_job", "pretrain_job", "score_job", "model_params_for"]


def check_model_task(config: TrainConfig) -> None:
    """Fail before any data is read when the model does not do the task."""
    if config.model not in MODEL_TASKS:
        from medloop.models import MODELS

        MODELS.get(config.model)  # raises the did-you-mean error
    if MODEL_TASKS[config.model] != config.task:
        raise ConfigError(f"model '{config.model}' does a '{MODEL_TASKS[config.model]}' task, not '{config.task}'; "
                          f"use --model {'unet' if config.task == 'segment' else 'resnet18 or vgg16'}")


def model_params_for(ds: MedDataset, config: TrainConfig) -> dict[str, Any]:
    """Constructor parameters: channels and classes from the data, the rest from ``config.model_params``."""
    check_model_task(config)
    if config.task == "classify":
        num_classes = ds.num_classes
        if num_classes < 2:
            raise ConfigError(f"classification needs at least 2 classes; {ds.info.root} has {num_classes}")
    else:
        num_classes = ds.num_mask_classes
    return {"in_channels": int(ds[0].image.shape[0]), "num_classes": num_classes, **config.model_params}


def _plot_history(history: list[dict], monitor: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h["epoch"] + 1 for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss", color="#0072B2")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    key = f"val_{monitor}"
    if history and key in history[0]:
        ax2 = ax.twinx()
        ax2.plot(epochs, [h[key] for h in history], label=f"val {monitor}", color="#D55E00")
        ax2.set_ylabel(f"validation {monitor}")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def train_job(data: DataConfig, config: TrainConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Split by case, train with early stopping on validation, evaluate on test, write everything to ``out``.

    Writes ``checkpoint.pt``, ``metrics.json``, ``report.md``, ``history.png`` and ``run.json``. Started by torchrun
    (``torchrun --nproc-per-node N -m medloop train ...``, on one machine or several) every process trains its share
    of each batch in one DDP group (``training.distributed.launched_group``) and rank 0 writes the outputs.
    """
    from medloop.training.distributed import launched, launched_group

    if launched()[1] > 1 and config.workers > 1:
        raise ConfigError(f"The 'workers' parameter ({config.workers}) spawns training processes on this machine, but "
                          f"this command was started by a launcher with {launched()[1]} processes, which are the "
                          "workers: set workers: 1")
    with launched_group(config.device) as (rank, world):
        return _train_job(data, config, Path(out), progress and rank == 0, rank, world)


def _train_job(data: DataConfig, config: TrainConfig, out: Path, progress: bool, rank: int,
               world: int) -> dict[str, Any]:
    check_model_task(config)
    if config.pretrained == "selfsup":
        raise ConfigError("pretrained 'selfsup' pretrains per seed inside an experiment; for 'medloop train' run "
                          "'medloop pretrain --data ... --out DIR' first and pass --pretrained DIR/selfsup.pt")
    if config.task == "segment" and data.size is None:
        raise ConfigError("segmentation needs a working size (e.g. --size 128) so images can be batched")
    if config.model == "unet":
        from medloop.models.unet import DEFAULT_CHANNELS

        divisor = 2 ** (len(config.model_params.get("channels", DEFAULT_CHANNELS)) - 1)
        if data.size % divisor:
            raise ConfigError(f"working size {data.size} is not divisible by {divisor} (the UNet downsamples "
                              f"{divisor.bit_length() - 1} times); use --size {data.size // divisor * divisor or divisor}")
    ds = load_dataset(data, progress=progress)
    split = split_by_case(ds, val=config.val_fraction, test=config.test_fraction, seed=config.seed)
    params = model_params_for(ds, config)
    with torch_init(config.seed):  # parameter initialization, without touching the caller's global generator
        model = build_model(config.model, **params)
    pretrained = load_pretrained(model, config.pretrained).__dict__ if config.pretrained else None
    result = fit(model, ds.subset(split.train), ds.subset(split.val), config, progress=progress)
    device = resolve_device(config.device)
    metrics = {
        "test": evaluate(model, ds.subset(split.test), config.task, config.batch_size, device),
        "val": evaluate(model, ds.subset(split.val), config.task, config.batch_size, device),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "split": {k: len(v) for k, v in split.to_dict().items()},
        "ranks": result.workers,
    }
    if rank != 0:  # every rank holds the same model: one writes
        return metrics
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "checkpoint.pt", model.cpu(), config.model, params, data_config=data.to_dict(),
                    train_config=config.to_dict(), class_names=list(ds.info.class_names),
                    mask_labels=ds.info.mask_labels, metrics=metrics, pretrained=pretrained,
                    split={k: [ds.sample_ids[i] for i in v] for k, v in split.to_dict().items()})
    write_json(out / "metrics.json", {**metrics, "history": result.history}, indent=2)
    _plot_history(result.history, result.monitor, out / "history.png")
    lines = [f"# medloop train: {config.model} ({config.task}) on {data.source}", "",
             f"Split by case (seed {config.seed}), samples per side: {metrics['split']}. Best epoch {result.best_epoch + 1} of "
             f"{len(result.history)} by validation {result.monitor}" + (" (stopped early)." if result.stopped_early else "."),
             "", "| metric | validation | test |", "|---|---|---|"]
    for key in metrics["test"]:
        if key != "n":
            lines.append(f"| {key} | {_fmt(metrics['val'][key])} | {_fmt(metrics['test'][key])} |")
    lines += ["", f"Pretrained: {pretrained['path'] if pretrained else 'none (trained from scratch)'}; fine-tune: "
              f"{config.fine_tune}; learning rate: {config.lr:g}, {config.schedule}"
              + (f"; data-parallel over {metrics['ranks']} processes (DDP)." if metrics["ranks"] > 1 else "."), "",
              "![history](history.png)", ""]
    write_text(out / "report.md", "\n".join(lines))
    write_run_record(out, config.seed, {"data": data.to_dict(), "train": config.to_dict()}, "medloop train")
    return metrics


def _save_maps(path: Path, image: np.ndarray, pred: np.ndarray, maps: dict[str, np.ndarray], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("image", image, "gray"), ("prediction", pred, "viridis"), ("epistemic", maps["epistemic"], "magma"),
              ("aleatoric", maps["aleatoric"], "magma"), ("combined (Eq. 6)", maps["combined"], "magma")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (name, arr, cmap) in zip(axes, panels):
        im = ax.imshow(arr, cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        if name not in ("image", "prediction"):
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def score_job(checkpoint: str | Path, data: DataConfig, out: str | Path, n_mc_samples: int = 20, batch_size: int = 32,
              seed: int = 0, max_maps: int = 24, device: str = "auto", progress: bool = True, engine: str = "local",
              address: str | None = None, top_k: int = 100) -> Path:
    """Score a pool with every uncertainty measure; write ``scores.csv`` (and ``maps/`` for segmentation).

    The pool is read at the checkpoint's working size and channels. For segmentation, the ``max_maps``
    images with the highest mean combined uncertainty get a PNG (image, prediction, epistemic, aleatoric,
    combined maps); only those maps are kept in memory while streaming. Dropout masks are seeded per image id,
    so the scores do not depend on the batch size or the engine.

    ``engine="ray"`` scores on a Ray cluster (``address``, or a local one) into Parquet instead
    (``medloop.engine.ray.score_ray``: ``scores/<model version>/*.parquet`` and the ``top_k`` in ``topk.csv``,
    which is returned); it needs ``pip install medloop[ray]``.
    """
    from medloop.engine import check_engine

    check_engine(engine, address)
    out = Path(out)
    if engine == "ray":
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--device {device} does not apply with --engine ray: each worker scores on its CPU")
        if top_k < 1:
            raise ConfigError(f"--top-k must be >= 1; got {top_k}")
        from medloop.engine import ScoreSpec
        from medloop.engine.ray import score_ray

        spec = ScoreSpec.for_checkpoint(checkpoint, data, n_mc_samples=n_mc_samples, batch_size=batch_size, seed=seed)
        summary = score_ray(spec, out, address=address, k=top_k, progress=progress)
        write_json(out / "summary.json", summary, indent=2)
        write_run_record(out, seed, {"data": spec.data.to_dict(), "checkpoint": str(checkpoint),
                                     "n_mc_samples": n_mc_samples, "batch_size": batch_size, "engine": "ray",
                                     "address": address, "top_k": top_k}, "medloop score")
        return Path(summary["topk_csv"])
    from medloop.training.checkpoint import data_as_trained

    model, record = load_checkpoint(checkpoint)
    data = data_as_trained(data, record)
    ds = load_dataset(data, progress=progress)
    heap: list[tuple[float, int, dict]] = []

    def keep_maps(indices: list[int], maps: dict[str, torch.Tensor], mean_probs: torch.Tensor) -> None:
        score = maps["combined"].flatten(1).mean(1)
        for j, i in enumerate(indices):
            item = (float(score[j]), i, {k: maps[k][j].numpy() for k in ("epistemic", "aleatoric", "combined")}
                    | {"pred": mean_probs[j].argmax(0).numpy()})
            if len(heap) < max_maps:
                heapq.heappush(heap, item)
            elif item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)

    scores = score_pool(model, ds, n_mc_samples=n_mc_samples, batch_size=batch_size, seed=seed,
                        device=resolve_device(device), on_maps=keep_maps if max_maps > 0 else None, progress=progress,
                        seeding="sample")
    out.mkdir(parents=True, exist_ok=True)
    rows = scores.rows()
    rank_key = "combined" if "combined" in scores.columns else "combined_mean"
    order = np.argsort(-scores.columns[rank_key], kind="stable")
    for rank, i in enumerate(order, start=1):
        rows[i]["rank"] = rank
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path = write_text(out / "scores.csv", text.getvalue())
    if heap:
        (out / "maps").mkdir(exist_ok=True)
        for score, i, maps in sorted(heap, reverse=True):
            s = ds[i]
            name = s.sample_id.replace("/", "_").replace(":", "_")
            _save_maps(out / "maps" / f"{name}.png", s.image[0].numpy(), maps.pop("pred"), maps,
                       f"{s.sample_id}  mean combined uncertainty {score:.4f}")
    write_run_record(out, seed, {"data": data.to_dict(), "checkpoint": str(checkpoint), "n_mc_samples": n_mc_samples,
                                 "batch_size": batch_size}, "medloop score")
    return path


def pretrain_job(data: DataConfig, model: str, model_params: dict[str, Any], config: "SelfSupConfig", out: str | Path,
                 val_fraction: float = 0.15, test_fraction: float = 0.2, progress: bool = True) -> dict[str, Any]:
    """Self-supervised pretraining of a classifier trunk on the training split's images (labels unused), then a
    linear probe (logistic regression on frozen features, trained on the training split's labels, ROC AUC on the
    test split) for the pretrained trunk and for the same trunk at random initialisation.

    Writes ``selfsup.pt`` (load it with ``classifier.pretrained`` / ``--pretrained``), ``metrics.json``,
    ``loss.png``, ``config.yaml`` and ``run.json``.
    """
    from medloop.training.selfsup import features, linear_probe, pretrain

    out = Path(out)
    check_model_task(TrainConfig(task="classify", model=model))
    if data.size is None:
        raise ConfigError("pretraining needs a working size (e.g. --size 128) so images can be batched")
    ds = load_dataset(data, progress=progress)
    split = split_by_case(ds, val=val_fraction, test=test_fraction, seed=config.seed)
    pool = ds.subset(split.train)
    params = {"in_channels": int(ds[0].image.shape[0]), "num_classes": max(ds.num_classes, 2), **model_params}
    with torch_init(config.seed, "selfsup", "init"):
        net = build_model(model, **params)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", config.to_yaml())
    write_run_record(out, config.seed, {"data": data.to_dict(), "model": model, "model_params": model_params,
                                        "selfsup": config.to_dict()}, "medloop pretrain")
    labeled = bool((ds.labels >= 0).any()) and ds.num_classes >= 2
    test = ds.subset(split.test)

    def probe() -> dict[str, Any] | None:
        if not labeled:
            return None
        tr = np.nonzero(pool.labels >= 0)[0]
        te = np.nonzero(test.labels >= 0)[0]
        return linear_probe(features(net, pool.subset(tr)), pool.labels[tr], features(net, test.subset(te)),
                            test.labels[te])

    before = probe()
    images = torch.stack([s.image for s in pool])
    result = pretrain(net, images, config, progress=progress, out=out / "selfsup.pt",
                      meta={"model": model, "model_params": model_params, "in_channels": params["in_channels"],
                            "data": data.to_dict(), "n_images": int(len(images))})
    after = probe()
    metrics = {"n_images": int(len(images)), "seconds": result["seconds"], "history": result["history"],
               "linear_probe": {"pretrained": after, "random_init": before}}
    write_json(out / "metrics.json", metrics, indent=2)
    _plot_history([{"epoch": h["epoch"], "train_loss": h["loss"]} for h in result["history"]], "loss",
                  out / "loss.png")
    return metrics
