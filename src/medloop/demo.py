"""`medloop demo`: everything medloop does today, for real, on the built-in phantoms.

Renders both phantoms, inspects them (counts, label values, intensities, mask coverage), writes their
preview montages and seeded stratified splits by case; then trains a Bayesian ResNet-18 on the chest
phantom and a Bayesian UNet on the cardiac phantom (short CPU schedules), scores held-out images with MC
dropout (every uncertainty measure, maps for segmentation), and records config, versions and seed.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medloop.config import DataConfig, TrainConfig
from medloop.data import load_dataset, save_preview, split_by_case, summarize
from medloop.jobs import score_job, train_job
from medloop.report.console import summary_table
from medloop.runinfo import write_run_record

__all__ = ["run_demo"]


def _split_table(name: str, ds, split) -> Table:
    table = Table(title=f"{name}: split by case (seed-stratified)")
    for col in ("side", "samples", "cases", "classes"):
        table.add_column(col)
    for side in ("train", "val", "test"):
        idx = getattr(split, side)
        sub = ds.subset(idx)
        counts = {}
        for lab in sorted(sub.labels.tolist()):
            key = ds.info.class_names[lab] if lab >= 0 and ds.info.class_names else "unlabeled"
            counts[key] = counts.get(key, 0) + 1
        table.add_row(side, str(len(idx)), str(len(set(sub.case_ids))), ", ".join(f"{k} {v}" for k, v in counts.items()))
    return table


def _model_table(results: dict) -> Table:
    table = Table(title="Bayesian models (test split, deterministic pass)")
    for col in ("phantom", "model", "metrics", "scored"):
        table.add_column(col)
    for name, r in results.items():
        test = r["metrics"]["test"]
        if "auc" in test:
            text = f"AUC {test['auc']:.3f}, sens {test['sensitivity']:.3f}, spec {test['specificity']:.3f}, ECE {test['ece']:.3f}"
        else:
            text = f"Dice {', '.join(f'{k} {v:.3f}' for k, v in test['dice'].items())}; HD95 " + ", ".join(
                f"{k} {v:.1f}px" for k, v in test["hd95"].items())
        table.add_row(name, r["model"], text, str(r["scores"]))
    return table


def run_demo(out: Path, seed: int = 0, size: int = 128, console: Console | None = None, epochs: int = 12) -> dict:
    """Run the demo; returns {phantom: {summary, preview, splits, metrics}} and writes everything under ``out``."""
    console = console or Console()
    out = Path(out)
    configs = {
        "chest-xray": DataConfig(source="builtin:chest-xray", size=size, seed=seed),
        "cardiac-mr": DataConfig(source="builtin:cardiac-mr", size=size, seed=seed),
    }
    results = {}
    for name, config in configs.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        ds = load_dataset(config)
        summary = summarize(ds)
        console.print(summary_table(summary))
        preview = save_preview(ds, folder / "preview.png", seed=seed)
        split = split_by_case(ds, seed=seed)
        console.print(_split_table(name, ds, split))
        (folder / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
        (folder / "splits.json").write_text(json.dumps({k: [ds.sample_ids[i] for i in v] for k, v in split.to_dict().items()}, indent=2))
        config.to_yaml(folder / "data.yaml")
        results[name] = {"summary": summary.to_dict(), "preview": str(preview), "splits": split.to_dict()}
    trainings = {
        "chest-xray": TrainConfig(task="classify", model="resnet18", model_params={"width": 16}, epochs=epochs,
                                  patience=max(3, epochs // 2), seed=seed, lr=2e-3),
        "cardiac-mr": TrainConfig(task="segment", model="unet", model_params={"channels": [16, 32, 64, 128]},
                                  epochs=epochs, patience=max(3, epochs // 2), seed=seed, lr=3e-3),
    }
    model_results = {}
    for name, train_cfg in trainings.items():
        console.print(f"\n[bold]{name}[/bold]: training {train_cfg.model} ({train_cfg.task}), {epochs} epochs")
        folder = out / name
        metrics = train_job(configs[name], train_cfg, folder / "model")
        scores = score_job(folder / "model" / "checkpoint.pt", configs[name], folder / "scores", n_mc_samples=20,
                           seed=seed, max_maps=8, progress=True)
        results[name]["metrics"] = metrics
        model_results[name] = {"model": train_cfg.model, "metrics": metrics, "scores": scores}
    console.print(_model_table(model_results))
    record = write_run_record(out, seed, {**{k: v.to_dict() for k, v in configs.items()},
                                          **{f"train-{k}": v.to_dict() for k, v in trainings.items()}}, "medloop demo")
    console.print(f"\n[bold]Written to {out}/[/bold]: run.json (versions, seed, configs), and per phantom "
                  "preview.png (montage with mask overlays), summary.json, splits.json, data.yaml, model/ (checkpoint, "
                  "metrics.json, report.md, history.png) and scores/ (scores.csv; maps/ for segmentation)")
    console.print(f"run record: {record}")
    return results
