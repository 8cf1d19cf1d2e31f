"""`medloop demo`: everything medloop does today, for real, on the built-in phantoms, in minutes on a CPU.

Renders both phantoms, inspects them (counts, label values, intensities, mask coverage), writes their
preview montages and seeded stratified splits by case; then runs a reduced version of the generative
active-learning experiment (Mahapatra et al. 2018, ``experiments/mahapatra2018.yaml``) on the chest phantom:
the mask-conditioned cGAN, generative / uncertainty / random strategies with the ground-truth oracle, the
fully supervised baselines, results.json and the report; and a reduced collaborative-segmentation experiment
(Ravanbakhsh et al., ``experiments/ravanbakhsh2018.yaml``) on the cardiac phantom.
"""

from __future__ import annotations

import os

from pathlib import Path

from rich.console import Console
from rich.table import Table

from medloop.config import DataConfig
from medloop.data import load_dataset, save_preview, split_by_case, summarize
from medloop.report.console import summary_table
from medloop.runinfo import write_run_record
from medloop.storage import write_json

__all__ = ["run_demo", "demo_experiment", "demo_collaborative", "demo_phantoms", "DEMO_CHEST_OPTIONS"]

# The demo works at 64 px, where the default phantom's nodules (contrast 0.09-0.18) sit at the level of the ribs,
# vessels and look-alikes: no classifier tried learned them from the demo's ~170 training images (test AUC
# 0.44-0.60; benchmarks/RESULTS.md 4.1-4.2). The demo draws conspicuous nodules instead (about three times the
# default contrast), so its few-minute run has something to learn and the strategies something to compare; the
# default phantom stays the harder benchmark.
DEMO_CHEST_OPTIONS = {"nodule_contrast": [0.3, 0.5]}


def demo_collaborative(seed: int = 0, quick: bool = False) -> dict:
    """The reduced collaborative-segmentation experiment of the demo (Ravanbakhsh et al.)."""
    if quick:
        return {"method": "ravanbakhsh2018", "name": "ravanbakhsh2018-quick", "seed": seed,
                "data": {"source": "builtin:cardiac-mr", "size": 32, "seed": seed,
                         "options": {"n_volumes": 4, "min_slices": 4, "max_slices": 5}},
                "folds": 2, "max_folds": 1, "budgets": [0.5], "cycles": [1], "strategies": ["discriminator", "random"],
                "pix2pix": {"epochs": 1, "batch_size": 8, "g_channels": [4, 8, 8], "d_features": 4}}
    return {"method": "ravanbakhsh2018", "name": "ravanbakhsh2018-demo", "seed": seed,
            "data": {"source": "builtin:cardiac-mr", "size": 64, "seed": seed, "crop": 0.5},
            "folds": 5, "max_folds": 1, "budgets": [0.1, 0.5], "cycles": [1],
            "strategies": ["discriminator", "random"], "processes": min(2, os.cpu_count() or 1),
            "pix2pix": {"epochs": 10, "min_steps": 200, "batch_size": 8, "lr": 0.001, "g_channels": [8, 16, 32, 64],
                        "d_features": 8}}


def demo_experiment(size: int = 64, seed: int = 0, quick: bool = False) -> dict:
    """The reduced generative AL experiment of the demo (sizes chosen to finish in minutes on 2 cores).

    Every strategy runs with two seeds (``seed`` and ``seed + 1``: two splits, initial sets and trainings), so
    the comparison with random sampling is not one draw. ``quick`` shrinks it to a smoke test (24 phantom
    cases, one seed, one epoch each): it checks the machinery, not results.
    """
    if quick:
        return {
            "name": "mahapatra2018-quick", "seeds": [seed],
            "data": {"source": "builtin:chest-xray", "size": 32, "seed": seed, "options": {"n_normal": 12, "n_nodule": 12}},
            "classifier": {"model": "resnet18", "model_params": {"width": 4}, "epochs": 1, "batch_size": 8, "patience": 0},
            "segmenter": {"epochs": 1, "batch_size": 8, "model_params": {"channels": [4, 8, 8, 8]}},
            "strategies": [{"name": "generative", "params": {"per_image": 2, "candidates": 3}},
                           {"name": "class_balanced", "label": "uncertainty"}, {"name": "random"}],
            "generator": {"epochs": 1, "ae_epochs": 1, "vgg_epochs": 1, "vgg_width": 4, "g_features": 8, "g_blocks": 1,
                          "d_features": 4, "d_dense": 8, "latent_dim": 8, "ae_channels": [8, 8]},
            "initial_per_class": 2, "query_per_class": 2, "augment_copies": 1, "n_mc_samples": 3,
            "record_at": [0.1, 0.3], "budget": 0.6, "max_rounds": 1, "round_patience": 0,
            "fsl_folds": 0, "random_subset_draws": 1,
        }
    return {
        "name": "mahapatra2018-demo",
        "data": {"source": "builtin:chest-xray", "size": size, "seed": seed, "options": dict(DEMO_CHEST_OPTIONS)},
        "seeds": [seed, seed + 1],
        "classifier": {"model": "resnet18", "model_params": {"width": 16}, "epochs": 25, "batch_size": 16,
                       "lr": 0.002, "patience": 0, "schedule": "cosine"},
        "segmenter": {"epochs": 5, "batch_size": 8, "lr": 0.003, "patience": 3,
                      "model_params": {"channels": [8, 16, 32, 64]}},
        "strategies": [{"name": "generative", "params": {"per_image": 10, "candidates": 16}},
                       {"name": "class_balanced", "label": "uncertainty"}, {"name": "random"}],
        "generator": {"epochs": 6, "ae_epochs": 20, "vgg_epochs": 4, "g_features": 32, "g_blocks": 4,
                      "d_features": 16, "d_dense": 128},
        "initial_per_class": 9, "query_per_class": 8, "augment_copies": 2, "n_mc_samples": 10,
        "record_at": [0.1, 0.3], "budget": 0.35, "max_rounds": 2, "round_patience": 0,
        "fsl_folds": 0, "random_subset_fraction": 0.35, "random_subset_draws": 1,
    }


def demo_phantoms(size: int = 64, seed: int = 0, quick: bool = False) -> dict[str, DataConfig]:
    """The phantoms the demo inspects and previews: the chest phantom as the experiment draws it."""
    return {
        "chest-xray": DataConfig(source="builtin:chest-xray", size=size, seed=seed,
                                 options=dict(DEMO_CHEST_OPTIONS) if not quick else {}),
        "cardiac-mr": DataConfig(source="builtin:cardiac-mr", size=size, seed=seed),
    }


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


def run_demo(out: Path, seed: int = 0, size: int = 64, console: Console | None = None, quick: bool = False) -> dict:
    """Run the demo; returns {phantom: {summary, preview, splits, metrics}} and writes everything under ``out``."""
    console = console or Console()
    out = Path(out)
    configs = demo_phantoms(size, seed, quick)
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
        write_json(folder / "summary.json", summary.to_dict(), indent=2)
        write_json(folder / "splits.json", {k: [ds.sample_ids[i] for i in v] for k, v in split.to_dict().items()}, indent=2)
        config.to_yaml(folder / "data.yaml")
        results[name] = {"summary": summary.to_dict(), "preview": str(preview), "splits": split.to_dict()}
    from medloop.methods.mahapatra import ExperimentConfig, run_experiment
    from medloop.report.console import experiment_summary

    experiment = ExperimentConfig.from_dict(demo_experiment(min(size, 64), seed, quick))
    console.print("\n[bold]generative active learning[/bold] (reduced Mahapatra et al. 2018 on builtin:chest-xray)")
    al_dir = out / "mahapatra2018"
    results["mahapatra2018"] = run_experiment(experiment, al_dir, resume=(al_dir / "config.yaml").exists(),
                                              console=console)
    console.print(experiment_summary(results["mahapatra2018"]))
    from medloop.methods.ravanbakhsh import CollaborativeConfig, run_collaborative
    from medloop.report.console import collaborative_summary

    collab = CollaborativeConfig.from_dict(demo_collaborative(seed, quick))
    console.print("\n[bold]collaborative segmentation[/bold] (reduced Ravanbakhsh et al. on builtin:cardiac-mr)")
    collab_dir = out / "ravanbakhsh2018"
    results["ravanbakhsh2018"] = run_collaborative(collab, collab_dir, resume=(collab_dir / "config.yaml").exists(),
                                                   console=console)
    console.print(collaborative_summary(results["ravanbakhsh2018"]))
    record = write_run_record(out, seed, {**{k: v.to_dict() for k, v in configs.items()},
                                          "experiment": experiment.to_dict(), "collaborative": collab.to_dict()},
                              "medloop demo")
    console.print(f"\n[bold]Written to {out}/[/bold]: run.json (versions, seed, configs); per phantom preview.png "
                  "(montage with mask overlays), summary.json, splits.json, data.yaml; mahapatra2018/ (results.json, "
                  "report.md, report.html, curves.png, gallery.png, overlays.png, tracks/, baselines/); "
                  "ravanbakhsh2018/ (results.json, report.md, report.html, dice_by_budget.png, correlation.png, "
                  "discriminator.png)")
    console.print(f"reports: {al_dir / 'report.md'} and {collab_dir / 'report.md'}")
    console.print(f"run record: {record}")
    return results
