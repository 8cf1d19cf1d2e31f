"""A whole experiment: every strategy x seed track, the baselines, savings, ``results.json`` and the report.

Layout of a run directory::

    config.yaml            the resolved experiment config
    run.json               version, seeds, machine, configs
    tracks/<strategy>-seed<k>/   one track each (see medloop.loop.engine; resumable)
    generators/seed<k>.pt  the cGAN of the generative strategy, trained on the seed's initial labeled set
    baselines/*.json       fully supervised baselines (each written once, skipped on resume)
    results.json           everything, machine-readable; report.md / report.html / *.png built from it
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.data import kfold_by_case
from medloop.errors import ConfigError
from medloop.loop.config import ExperimentConfig
from medloop.loop.engine import Context, _plain, _seed, initial_set, prepare, run_track, train_classifier, train_segmenter
from medloop.runinfo import write_run_record
from medloop.training import evaluate

__all__ = ["run_experiment", "savings", "fsl_baselines"]


def _json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _supervised(ctx: Context, train_idx: np.ndarray, test_ds, seed: int, val_ds=None) -> dict:
    """Train classifier (and UNet) on dataset positions ``train_idx`` with their stored labels; test metrics."""
    ds = ctx.dataset
    samples = [ds[int(i)] for i in train_idx if ds.labels[int(i)] >= 0]
    cls = train_classifier(ctx, None, samples * ctx.config.augment_copies, val_ds, seed)
    out = {"n_train": len(samples), "test": _plain(evaluate(cls, test_ds, "classify"))}
    if ctx.config.segmenter is not None:
        seg_samples = [ds[int(i)] for i in train_idx if ds.has_mask[int(i)]]
        seg = train_segmenter(ctx, seg_samples, val_ds, seed)
        out["seg"] = _plain(evaluate(seg, test_ds, "segment"))
    return out


def fsl_baselines(ctx: Context, folder: Path) -> dict:
    """Full supervision per seed (whole training pool, same test split), FSL on random subsets (first seed),
    and k-fold cross-validation by case over the whole dataset (the paper's FSL protocol)."""
    cfg = ctx.config
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"fsl": {}, "random_subset": [], "fsl_cv": None}
    for seed in cfg.seeds:
        path = folder / f"fsl-seed{seed}.json"
        if not path.exists():
            split = ctx.splits[seed]
            _json(path, _supervised(ctx, split.train, ctx.test(seed), _seed(seed, 0, 7), ctx.val(seed)))
        result["fsl"][str(seed)] = json.loads(path.read_text())
    seed0 = cfg.seeds[0]
    split = ctx.splits[seed0]
    for draw in range(cfg.random_subset_draws):
        path = folder / f"random-subset-{draw}.json"
        if not path.exists():
            rng = np.random.default_rng([seed0, draw, 55])
            n = max(ctx.num_classes, int(round(cfg.random_subset_fraction * len(split.train))))
            idx = np.sort(rng.choice(split.train, n, replace=False))
            _json(path, {"draw": draw, "fraction": cfg.random_subset_fraction,
                         **_supervised(ctx, idx, ctx.test(seed0), _seed(seed0, draw, 8), ctx.val(seed0))})
        result["random_subset"].append(json.loads(path.read_text()))
    if cfg.fsl_folds:
        path = folder / f"fsl-cv{cfg.fsl_folds}.json"
        if not path.exists():
            folds = []
            for k, (train_idx, test_idx) in enumerate(kfold_by_case(ctx.dataset, k=cfg.fsl_folds, seed=seed0)):
                folds.append(_supervised(ctx, train_idx, ctx.dataset.subset(test_idx), _seed(seed0, k, 9)))
            _json(path, {"folds": folds})
        result["fsl_cv"] = json.loads(path.read_text())
    return result


def savings(rounds: list[dict], fsl_auc: float, tolerance: float) -> dict | None:
    """The first round whose test AUC is within ``tolerance`` of ``fsl_auc``: its labeled and pixel fractions."""
    for r in rounds:
        auc = r["test"].get("auc")
        if auc is not None and auc >= fsl_auc - tolerance:
            return {"round": r["round"], "image_fraction": r["fraction"],
                    "pixel_fraction": r["cost"]["pixel_fraction"], "auc": auc}
    return None


def _sampler_factory(ctx: Context, out: Path):
    from medloop.synth.generator import MaskConditionedSampler, fit_generator
    from medloop.training.cgan import CGANConfig

    cache: dict[int, Any] = {}

    def sampler_for(seed: int):
        if seed in cache:
            return cache[seed]
        path = out / "generators" / f"seed{seed}.pt"
        if path.exists():
            cache[seed] = MaskConditionedSampler.load(path)
            return cache[seed]
        pool = ctx.pool(seed)
        idx = [i for i in initial_set(ctx, seed) if pool.has_mask[i]]
        if len(idx) < 2:
            raise ConfigError("the generative strategy needs lung masks for the initial labeled images; "
                              f"only {len(idx)} of them have masks")
        images = torch.stack([pool[i].image for i in idx])
        masks = torch.stack([(pool[i].mask > 0).long() for i in idx])
        gcfg = CGANConfig.from_dict({**ctx.config.generator, "seed": seed, "device": ctx.config.device})
        sampler, _ = fit_generator(images, masks, gcfg, pool.labels[idx], progress=ctx.progress)
        sampler.save(path)
        cache[seed] = sampler
        return sampler

    return sampler_for


def run_experiment(config: ExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True,
                   interrupt=None, oracle_factory=None, console=None) -> dict:
    """Run an experiment, or with ``resume`` continue one in ``out`` (completed rounds and baselines are kept,
    the round in progress at the kill is redone); writes results.json and the report."""
    from medloop.report.experiment import build_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    if saved.exists() and not resume:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if saved.exists():
        previous, current = ExperimentConfig.from_yaml(saved).to_dict(), config.to_dict()
        if previous != current:
            changed = sorted(k for k, v in current.items() if previous.get(k) != v)
            raise ConfigError(f"{out} holds a run with a different config (changed: {', '.join(changed)}); "
                              "use a new --out folder, or the same config to resume")
    ctx = prepare(config, progress=progress, oracle_factory=oracle_factory)
    config.to_yaml(saved)
    write_run_record(out, config.seeds[0], {"experiment": config.to_dict()}, "medloop run")
    started = time.time()
    sampler_for = _sampler_factory(ctx, out)
    tracks: dict[str, dict[str, list[dict]]] = {}
    for seed in config.seeds:
        for spec in config.strategies:
            label = config.strategy_label(spec)
            if console is not None:
                console.print(f"[bold]{label}[/bold] seed {seed}")
            rounds = run_track(ctx, seed, spec, out / "tracks" / f"{label}-seed{seed}", sampler_for, interrupt)
            tracks.setdefault(label, {})[str(seed)] = rounds
    baselines = fsl_baselines(ctx, out / "baselines")
    save: dict[str, Any] = {}
    for label, by_seed in tracks.items():
        per_seed = {}
        for seed, rounds in by_seed.items():
            fsl_auc = baselines["fsl"][seed]["test"]["auc"]
            per_seed[seed] = savings(rounds, fsl_auc, config.savings_tolerance) if fsl_auc is not None else None
        save[label] = per_seed
    from medloop import __version__

    results = {
        "experiment": config.name, "medloop_version": __version__, "config": config.to_dict(),
        "data": {"root": ctx.dataset.info.root, "n_samples": len(ctx.dataset), "class_names": list(ctx.dataset.info.class_names),
                 "pool_size": {str(s): len(ctx.splits[s].train) for s in config.seeds},
                 "val_size": {str(s): len(ctx.splits[s].val) for s in config.seeds},
                 "test_size": {str(s): len(ctx.splits[s].test) for s in config.seeds}},
        "tracks": tracks, "baselines": baselines, "savings": save,
        "stopping": "validation split (the paper stops on its test set; medloop never looks at test to stop)",
        "minutes": round((time.time() - started) / 60, 2),
    }
    _json(out / "results.json", results)
    build_report(out)
    return results
