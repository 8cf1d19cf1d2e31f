"""The protocol of collaborative segmentation (``medloop run`` of a ``ravanbakhsh2018`` experiment):
cross-validation by volume (case) of Algorithm 1 for every strategy, budget and number of cycles, the base model
of each fold, and a fully supervised cGAN (every pool slice with its true labels).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.data import kfold_by_case
from medloop.engine.rounds import engine_session
from medloop.errors import ConfigError
from medloop.loop.oracle import GroundTruthOracle
from medloop.loop.round import run_track
from medloop.loop.rundir import check_resume, once
from medloop.loop.state import RunState
from medloop.methods.base import refuse_simulated_reads
from medloop.methods.ravanbakhsh.config import CollaborativeConfig
from medloop.methods.ravanbakhsh.method import CollabData, Ravanbakhsh, load_collab_data, test_metrics
from medloop.query import build_strategy
from medloop.seeding import seed_for, stream
from medloop.storage import save_npz, save_torch, write_json
from medloop.training.pix2pix import Pix2PixTrainer, train_pix2pix
from medloop.uncertainty.discriminator import discriminator_scores
from medloop.uncertainty.qc import DiceCalibration, qc_metrics, slice_dice

__all__ = ["algorithm1", "quality_control_summary", "run_collaborative"]


def algorithm1(data: CollabData, train_idx: np.ndarray, test_idx: np.ndarray, base_case: str, spec: dict | str,
               budget: float, cycles: int, config: CollaborativeConfig, folder: Path, progress: bool = True,
               interrupt=None, oracle_factory=None, base: Path | None = None, observers=()) -> list[dict]:
    """Run (or resume) Algorithm 1 for one fold, strategy, budget and number of cycles; returns the records.

    ``base``: weights of the model trained on the base volume (``run_collaborative`` trains it once per fold);
    round 0 uses it instead of training the same model again. ``observers`` get the loop's events.
    """
    spec = {"name": spec} if isinstance(spec, str) else spec
    strategy = build_strategy(spec["name"], spec.get("params"))
    method = Ravanbakhsh(data, train_idx, test_idx, base_case, budget, cycles, config, config.seed, progress, base)
    oracle = oracle_factory(data.dataset) if oracle_factory else GroundTruthOracle.from_dataset(data.dataset)
    return run_track(method, strategy, RunState(folder, oracle), config.seed, interrupt, observers)


def _graded(trainer: Pix2PixTrainer, data: CollabData, test_idx, config: CollaborativeConfig
            ) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A model's test slices, judged once: its test metrics, and per slice the discriminator's plausibility
    (``slice_reduction``) and the Dice (mean over the foreground classes present); with the plausibility maps and
    predicted label maps."""
    masks = data.masks[test_idx]
    scores, pmap, pred = discriminator_scores(trainer.G, trainer.D, data.images[test_idx],
                                              reduction=config.slice_reduction, q=config.q)
    cases = [str(data.dataset.case_ids[i]) for i in test_idx]
    return ({"plausibility": (1.0 - scores).tolist(), "dice": slice_dice(pred, masks, data.num_classes).tolist(),
             "test": test_metrics(pred, masks, data.names, cases)}, pmap, pred)


def _fit(data: CollabData, idx: list[int] | np.ndarray, config: CollaborativeConfig, seed: int, progress: bool,
         *names: int | str) -> Pix2PixTrainer:
    """A pix2pix trained on the slices ``idx`` with their true label maps."""
    trainer = Pix2PixTrainer(data.images.shape[1], data.num_classes, data.images.shape[-1],
                             config.pix2pix_config.replace(seed=seed_for(seed, *names, "init")))
    train_pix2pix(trainer, data.images[idx], data.masks[idx], torch.ones(len(idx)), seed_for(seed, *names, "fit"),
                  progress)
    return trainer


def _base_model(data: CollabData, train_idx, test_idx, base_case: str, config: CollaborativeConfig, fold: int,
                out: Path, progress: bool) -> dict:
    """The base model (one volume), saved for the fold's tracks: the discriminator-Dice correlation on the test
    volumes, and a figure."""
    cases = np.array(data.dataset.case_ids)
    base = [int(i) for i in train_idx if cases[i] == base_case]
    trainer = _fit(data, base, config, config.seed, progress, "fold", fold, "base")
    save_torch(out / f"fold{fold}-base.pt", trainer.state_dict())
    graded, pmap, pred = _graded(trainer, data, test_idx, config)
    at = np.linspace(0, len(test_idx) - 1, min(4, len(test_idx))).astype(int)  # the figure's slices
    shown = np.asarray(test_idx)[at]
    save_npz(out / f"fold{fold}-figure.npz", image=data.images[shown, 0].numpy(), truth=data.masks[shown].numpy(),
             pred=pred[at].numpy(), plausibility=pmap[at].numpy(), ids=np.array([data.ids[i] for i in shown]))
    return {"base_case": base_case, **graded, "ids": [data.ids[i] for i in test_idx]}


def _fsl_model(data: CollabData, train_idx, test_idx, config: CollaborativeConfig, fold: int, progress: bool) -> dict:
    """The fully supervised pix2pix (every training slice with its true label map): test Dice, and the
    discriminator-Dice correlation of a model that segments well."""
    return _graded(_fit(data, train_idx, config, config.seed, progress, "fold", fold, "fsl"), data, test_idx,
                   config)[0]


def _pearson(corr: dict[str, list[float]]) -> dict[str, Any]:
    """Pearson r (and p) between per-slice plausibility and Dice, with the values."""
    from scipy.stats import pearsonr

    out: dict[str, Any] = {"pearson_r": None, "p_value": None, "n_slices": len(corr["dice"]), **corr}
    if len(corr["dice"]) >= 3 and np.std(corr["dice"]) > 0 and np.std(corr["plausibility"]) > 0:
        r, p = pearsonr(corr["plausibility"], corr["dice"])
        out.update(pearson_r=float(r), p_value=float(p))
    return out


def _test_qc(track: Path, base_rec: dict) -> dict | None:
    """The base model's test slices, their Dice predicted by the track's first calibration (fitted on the slices
    the expert labeled in its first cycle, before any model trained on them) and their true Dice; and how many
    pseudo-labels the track's last cycle flagged, of how many."""
    files = sorted((track / "qc").glob("round_*.json"))
    if not files:
        return None
    cal = json.loads(files[0].read_text())["calibration"]
    last = json.loads(files[-1].read_text())
    return {"predicted": None if cal is None else DiceCalibration.from_dict(cal).predict(base_rec["plausibility"]).tolist(),
            "true": list(base_rec["dice"]), "flagged": len(last["flagged"]), "pseudo": len(last["predicted_dice"])}


def quality_control_summary(per_fold: dict[str, dict[str, dict[str, dict]]], threshold: float) -> dict:
    """``per_fold[label][budget][fold]`` -> per label and budget, ``qc_metrics`` over the test slices of every fold
    (each fold's base model graded by its own calibration) with the mean over folds of the pseudo-labels flagged
    (``flagged_mean`` of ``pseudo_mean``), and per label pooled over budgets."""
    out: dict[str, dict] = {}
    for label, by_budget in per_fold.items():
        out[label] = {}
        pooled: dict[str, list[float]] = {"predicted": [], "true": []}
        for b, folds in by_budget.items():
            got = [v for v in folds.values() if v is not None and v["predicted"] is not None]
            if got:
                pred = [x for v in got for x in v["predicted"]]
                true = [x for v in got for x in v["true"]]
                out[label][b] = {**qc_metrics(pred, true, threshold),
                                 "flagged_mean": float(np.mean([v["flagged"] for v in got])),
                                 "pseudo_mean": float(np.mean([v["pseudo"] for v in got]))}
                pooled["predicted"] += pred
                pooled["true"] += true
        if pooled["true"]:
            out[label]["all"] = qc_metrics(pooled["predicted"], pooled["true"], threshold)
    return out


class _Protocol:
    """The cross-validation protocol's units of work, each computed once into the run folder: per fold the base
    model, one track per (strategy, cycles, budget), and the fully supervised model. ``unit(key)`` computes (or
    reads back) one; the tracks and the FSL model of a fold need its base model first."""

    def __init__(self, config: CollaborativeConfig, out: Path, data: CollabData, progress: bool,
                 interrupt=None, oracle_factory=None, observers=()):
        self.config, self.out, self.data, self.progress = config, out, data, progress
        self.interrupt, self.oracle_factory, self.observers = interrupt, oracle_factory, observers
        self.folds = kfold_by_case(data.dataset, k=config.folds, seed=config.seed)[: config.max_folds or None]
        cases = np.array(data.dataset.case_ids)
        self.base_cases = [str(stream(config.seed, "fold", f, "base case").choice(sorted(set(cases[tr]))))
                           for f, (tr, _) in enumerate(self.folds)]

    def keys(self) -> tuple[list[tuple], list[tuple]]:
        """(base-model units, the units that need them), in the order a single process runs them."""
        cfg = self.config
        tracks = [("track", f, j, n, b) for f in range(len(self.folds)) for j in range(len(cfg.strategy_specs))
                  for n in cfg.cycles for b in cfg.budgets]
        fsl = [("fsl", f) for f in range(len(self.folds))] if cfg.fsl else []
        return [("base", f) for f in range(len(self.folds))], tracks + fsl

    def folder(self, f: int, label: str, b: float) -> Path:
        return self.out / "tracks" / f"fold{f}" / f"{label}-b{int(round(b * 100)):03d}"

    def unit(self, key: tuple) -> Any:
        kind, f = key[0], key[1]
        train_idx, test_idx = self.folds[f]
        cfg, data, base_dir = self.config, self.data, self.out / "baselines"
        if kind == "base":
            return once(base_dir / f"fold{f}-base.json", lambda: _base_model(
                data, train_idx, test_idx, self.base_cases[f], cfg, f, base_dir, self.progress))
        if kind == "fsl":
            return once(base_dir / f"fold{f}-fsl.json", lambda: _fsl_model(
                data, train_idx, test_idx, cfg, f, self.progress))
        _, _, j, n, b = key
        spec = cfg.strategy_specs[j]
        return algorithm1(data, train_idx, test_idx, self.base_cases[f], spec, b, n, cfg,
                          self.folder(f, f"{spec['label']}-n{n}", b), self.progress, self.interrupt,
                          self.oracle_factory, base_dir / f"fold{f}-base.pt", self.observers)


_WORKER: dict[str, _Protocol] = {}


def _worker_init(config: dict, out: str) -> None:
    torch.set_num_threads(1)  # one core per process: the processes, not the threads, use the machine
    cfg = CollaborativeConfig.from_dict(config)
    _WORKER["protocol"] = _Protocol(cfg, Path(out), load_collab_data(cfg, progress=False), progress=False)


def _worker_unit(key: tuple) -> tuple:
    _WORKER["protocol"].unit(key)
    return key


def _run_parallel(protocol: _Protocol, processes: int, progress: bool) -> None:
    """Every unit in ``processes`` worker processes (spawned; one thread each), base models first; what they
    write is what a single process would (each unit is seeded by its own streams), read back afterwards."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from medloop.progress import make_progress

    first, rest = protocol.keys()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(protocol.config.to_dict(), str(protocol.out))) as pool, \
            make_progress(transient=not progress) as bar:
        task = bar.add_task(f"collaborative protocol, {processes} processes", total=len(first) + len(rest),
                            visible=progress)
        for stage in (first, rest):
            for done in as_completed([pool.submit(_worker_unit, key) for key in stage]):
                done.result()  # a failed unit fails the run (what finished stays in the run folder)
                bar.update(task, advance=1)


def run_collaborative(config: CollaborativeConfig, out: str | Path, resume: bool = False, progress: bool = True,
                      interrupt=None, oracle_factory=None, console=None, observers=()) -> dict:
    """Cross-validation by volume of Algorithm 1 and its baselines; writes results.json and the report. With
    ``config.processes`` > 1 the units of work run in that many processes first, then are read back here.
    ``observers`` get every track's events (``loop.round.Event``)."""
    from medloop.runinfo import write_run_record

    out = Path(out)
    refuse_simulated_reads(config)
    check_resume(out, config, resume)
    if config.processes > 1 and (interrupt is not None or oracle_factory is not None or observers):
        raise ConfigError("'processes' > 1 runs the protocol in other processes, where a test hook, an observer or "
                          "a custom oracle cannot follow; set processes: 1")
    data = load_collab_data(config, progress)
    out.mkdir(parents=True, exist_ok=True)
    config.to_yaml(out / "config.yaml")
    write_run_record(out, config.seed, {"experiment": config.to_dict()}, "medloop run")
    started = time.time()
    protocol = _Protocol(config, out, data, progress, interrupt, oracle_factory, observers)
    with engine_session(config.engine, config.engine_address):  # engine: ray connects once for the run
        if config.processes > 1:
            _run_parallel(protocol, config.processes, progress)
        return _gather(protocol, config, data, console, started)


def _gather(protocol: _Protocol, config: CollaborativeConfig, data: CollabData, console, started: float) -> dict:
    """Every unit of the protocol (run here where ``processes`` did not run it), gathered into results.json and
    the report."""
    from medloop import __version__
    from medloop.report.collaborative import build_collaborative_report, case_comparisons

    out = protocol.out
    tracks: dict[str, dict] = {}
    fsl: dict[str, dict] = {}
    corr: dict[str, list[float]] = {"plausibility": [], "dice": []}
    corr_fsl: dict[str, list[float]] = {"plausibility": [], "dice": []}
    qc: dict[str, dict[str, dict]] = {}
    for f in range(len(protocol.folds)):
        base_rec = protocol.unit(("base", f))
        for j, spec in enumerate(config.strategy_specs):
            for n in config.cycles:
                for b in config.budgets:
                    label = f"{spec['label']}-n{n}"
                    if console is not None:
                        console.print(f"fold {f}: {spec['label']}, budget {b:.0%}, {n} cycle(s)")
                    recs = protocol.unit(("track", f, j, n, b))
                    tracks.setdefault(label, {}).setdefault(f"{b:.2f}", {})[str(f)] = recs
                    qc.setdefault(label, {}).setdefault(f"{b:.2f}", {})[str(f)] = _test_qc(
                        protocol.folder(f, label, b), base_rec)
        corr["plausibility"] += base_rec["plausibility"]
        corr["dice"] += base_rec["dice"]
        if config.fsl:
            fsl[str(f)] = protocol.unit(("fsl", f))
            corr_fsl["plausibility"] += fsl[str(f)]["plausibility"]
            corr_fsl["dice"] += fsl[str(f)]["dice"]
    results = {"experiment": config.name, "method": config.method, "medloop_version": __version__,
               "config": config.to_dict(), "class_names": data.names,
               "data": {"root": data.dataset.info.root, "n_slices": len(data.dataset),
                        "n_volumes": len(set(data.dataset.case_ids)), "folds_run": len(protocol.folds)},
               "tracks": tracks, "fsl": fsl, "correlation": _pearson(corr), "correlation_fsl": _pearson(corr_fsl),
               "quality_control": quality_control_summary(qc, config.qc_threshold),
               "minutes": round((time.time() - started) / 60, 2)}
    results["comparisons"] = case_comparisons(results, seed=config.seed)
    write_json(out / "results.json", results)
    build_collaborative_report(out)
    return results
