"""The protocol of generative active learning (``medloop run`` of a ``mahapatra2018`` experiment): every
strategy with every seed through the loop, the cGAN of the generative strategy cached per seed, and the fully
supervised baselines.

Run directory::

    config.yaml, run.json        the resolved config; versions, seeds, machine
    tracks/<strategy>-seed<k>/   one track each (``loop.state``; resumable)
    generators/seed<k>.pt        the cGAN of the generative strategy, trained on the seed's initial labeled set
    baselines/*.json             fully supervised baselines (each written once, skipped on resume)
    results.json                 everything, machine-readable; report.md / report.html / *.png built from it
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.data import kfold_by_case
from medloop.engine.rounds import engine_session
from medloop.errors import ConfigError
from medloop.loop.round import run_track
from medloop.loop.rundir import check_resume, once
from medloop.loop.state import RunState
from medloop.methods.base import refuse_simulated_reads
from medloop.methods.mahapatra.config import ExperimentConfig
from medloop.methods.mahapatra.method import (Context, Mahapatra, _classify, _classify_features, prepare,
                                              train_classifier, train_head, train_segmenter)
from medloop.metrics import plain
from medloop.query import build_strategy
from medloop.seeding import stream
from medloop.storage import write_json
from medloop.training import evaluate

__all__ = ["fsl_baselines", "run_experiment", "run_mahapatra_track", "sampler_factory"]


def _supervised(ctx: Context, train_idx: np.ndarray, test_idx: np.ndarray, seed: int, name: str,
                val_idx: np.ndarray | None = None) -> dict:
    """Train classifier (and segmenter) on dataset positions ``train_idx`` with their stored labels; test on
    ``test_idx``, early stopping on ``val_idx``."""
    ds = ctx.dataset
    train_idx = np.asarray([int(i) for i in train_idx if ds.labels[int(i)] >= 0], dtype=np.int64)
    test_ds = ds.subset(test_idx)
    if ctx.frozen:
        cls = train_head(ctx, None, ctx.trunk_features(seed)[train_idx], ds.labels[train_idx], val_idx, seed, name,
                         "classifier")
        test_m, test_probs = _classify_features(ctx, cls, seed, test_idx)
    else:
        samples = [ds[int(i)] for i in train_idx]
        val_ds = ds.subset(val_idx) if val_idx is not None else None
        cls = train_classifier(ctx, None, samples * ctx.config.augment_copies, val_ds, seed, name, "classifier")
        test_m, test_probs = _classify(cls, test_ds)
    out = {"n_train": len(train_idx), "test": plain(test_m), "test_probs": test_probs}
    if ctx.config.segmenter is not None and ctx.config.record_at:
        seg_samples = [ds[int(i)] for i in train_idx if ds.has_mask[int(i)]]
        seg = train_segmenter(ctx, seg_samples, val_ds, seed, name, "segmenter")
        out["seg"] = plain(evaluate(seg, test_ds, "segment"))
    return out


def fsl_baselines(ctx: Context, folder: Path) -> dict:
    """Full supervision per seed (whole training pool, same test split), FSL on random subsets (first seed),
    and k-fold cross-validation by case over the whole dataset (the paper's FSL protocol)."""
    cfg = ctx.config
    result: dict[str, Any] = {"fsl": {}, "random_subset": [], "fsl_cv": None}
    for seed in cfg.seeds:
        result["fsl"][str(seed)] = once(folder / f"fsl-seed{seed}.json", lambda: _supervised(
            ctx, ctx.splits[seed].train, ctx.splits[seed].test, seed, "fsl", ctx.splits[seed].val))
    seed0 = cfg.seeds[0]
    train = ctx.splits[seed0].train

    def subset(draw: int) -> dict:
        n = max(ctx.num_classes, int(round(cfg.random_subset_fraction * len(train))))
        idx = np.sort(stream(seed0, "random subset", draw).choice(train, n, replace=False))
        return {"draw": draw, "fraction": cfg.random_subset_fraction,
                **_supervised(ctx, idx, ctx.splits[seed0].test, seed0, f"random subset {draw}",
                              ctx.splits[seed0].val)}

    for draw in range(cfg.random_subset_draws):
        result["random_subset"].append(once(folder / f"random-subset-{draw}.json", lambda: subset(draw)))
    if cfg.fsl_folds:
        result["fsl_cv"] = once(folder / f"fsl-cv{cfg.fsl_folds}.json", lambda: {"folds": [
            _supervised(ctx, train_idx, test_idx, seed0, f"fsl fold {k}")
            for k, (train_idx, test_idx) in enumerate(kfold_by_case(ctx.dataset, k=cfg.fsl_folds, seed=seed0))]})
    return result


def sampler_factory(ctx: Context, out: Path):
    """``(seed, initial pool positions) -> MaskConditionedSampler``: the cGAN trained on the seed's initial labeled
    images, cached on disk."""
    cache: dict[int, Any] = {}

    def sampler_for(seed: int, initial: list[int]):
        from medloop.synth import MaskConditionedSampler
        from medloop.training.cgan import CGANConfig, fit_generator

        if seed in cache:
            return cache[seed]
        path = out / "generators" / f"seed{seed}.pt"
        if path.exists():
            cache[seed] = MaskConditionedSampler.load(path)
            return cache[seed]
        pool = ctx.pool(seed)
        idx = [i for i in initial if pool.has_mask[i]]
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


def run_mahapatra_track(ctx: Context, seed: int, spec: dict, folder: Path, sampler_for=None,
                        interrupt=None, observers=()) -> list[dict]:
    """One strategy with one seed through the loop (resumes from ``folder``); ``observers`` get its events."""
    strategy = build_strategy(spec["name"], spec.get("params"))
    method = Mahapatra(ctx, seed, strategy, sampler_for)
    return run_track(method, strategy, RunState(folder, method.oracle(), ctx.config.oracle_timeout), seed, interrupt,
                     observers)


def run_experiment(config: ExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True,
                   interrupt=None, oracle_factory=None, console=None, observers=()) -> dict:
    """Run an experiment, or with ``resume`` continue one in ``out`` (completed rounds and baselines are kept,
    the round in progress at the kill is redone); writes results.json and the report. ``observers`` get every
    track's events (``loop.round.Event``)."""
    from medloop import __version__
    from medloop.report.experiment import build_report
    from medloop.runinfo import write_run_record

    out = Path(out)
    refuse_simulated_reads(config)
    check_resume(out, config, resume)
    ctx = prepare(config, progress=progress, oracle_factory=oracle_factory)
    ctx.workdir = out
    out.mkdir(parents=True, exist_ok=True)
    config.to_yaml(out / "config.yaml")
    write_run_record(out, config.seeds[0], {"experiment": config.to_dict()}, "medloop run")
    started = time.time()
    sampler_for = sampler_factory(ctx, out)
    tracks: dict[str, dict[str, list[dict]]] = {}
    with engine_session(config.engine, config.engine_address):  # engine: ray connects once for the run
        for seed in config.seeds:
            for spec in config.strategy_specs:
                if console is not None:
                    console.print(f"[bold]{spec['label']}[/bold] seed {seed}")
                tracks.setdefault(spec["label"], {})[str(seed)] = run_mahapatra_track(
                    ctx, seed, spec, out / "tracks" / f"{spec['label']}-seed{seed}", sampler_for, interrupt, observers)
    baselines = fsl_baselines(ctx, out / "baselines")
    results = {
        "experiment": config.name, "method": config.method, "medloop_version": __version__, "config": config.to_dict(),
        "data": {"root": ctx.dataset.info.root, "n_samples": len(ctx.dataset),
                 "class_names": list(ctx.dataset.info.class_names),
                 "pool_size": {str(s): len(ctx.splits[s].train) for s in config.seeds},
                 "val_size": {str(s): len(ctx.splits[s].val) for s in config.seeds},
                 "test_size": {str(s): len(ctx.splits[s].test) for s in config.seeds},
                 # the labels of the images each record's ``test_probs`` scores, in the same order
                 "test_labels": {str(s): [int(y) for y in ctx.test(s).labels if y >= 0] for s in config.seeds}},
        "tracks": tracks, "baselines": baselines,
        "stopping": "validation split (the paper stops on its test set; medloop never looks at test to stop)",
        "minutes": round((time.time() - started) / 60, 2),
    }
    write_json(out / "results.json", results)
    build_report(out)
    return results

