"""Human-machine collaborative segmentation (Ravanbakhsh et al.): Algorithm 1 on medloop's engine.

Inputs: a labeled set S_true (the slices of one volume), an unlabeled pool (the slices of the other training
volumes), a total budget k (a fraction of the pool) and n cycles. Each cycle: train G, D (pix2pix) on
S = S_true + S_pseudo; rank the pool by the discriminator (least plausible first); query the top k/n from the
oracle (they join S_true); pseudo-label every remaining pool slice with G (S_pseudo); repeat. A final G, D is
trained on the last S and evaluated (Dice per class) on the test volumes, which are never trained on.

Baselines with the same budgets: ``random`` queries and MC-dropout ``entropy`` queries; and a fully
supervised cGAN (every pool slice with its true labels). Cross-validation by volume (case).

The run directory and resume machinery are the AL engine's: an ``AnswerLog`` per track (answers persisted
before use, never asked twice), one line per completed cycle in ``rounds.jsonl``, weights and pseudo-labels
after every cycle, ``done.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.config import Config, DataConfig
from medloop.data import MedDataset, kfold_by_case, load_dataset
from medloop.errors import ConfigError, DataError
from medloop.loop.engine import _append_line, _plain, _read_rounds, _seed
from medloop.loop.oracle import AnswerLog, GroundTruthOracle, PersistentOracle, collect
from medloop.metrics import mask_dice, segmentation_metrics
from medloop.runinfo import write_run_record
from medloop.training.pix2pix import Pix2PixConfig, Pix2PixTrainer, train_pix2pix
from medloop.uncertainty import score_pool
from medloop.uncertainty.discriminator import SLICE_REDUCTIONS, discriminator_scores

__all__ = ["CollaborativeConfig", "algorithm1", "run_collaborative", "query_counts"]

COLLAB_STRATEGIES = ("discriminator", "random", "entropy")


@dataclasses.dataclass(frozen=True)
class CollaborativeConfig(Config):
    """The collaborative-segmentation experiment (``experiments/ravanbakhsh2018.yaml``).

    Attributes:
        method: ``ravanbakhsh2018`` (how ``medloop run`` knows this file).
        data: ``DataConfig`` fields; volumes are read as 2D slices.
        folds: cross-validation folds by volume (case); ``max_folds`` runs only the first few.
        budgets: total budgets k as fractions of the pool slices (the paper: 10% ... 90%).
        cycles: numbers of cycles n to run for every budget (the paper: 1; several shows the cycling).
        strategies: ``discriminator`` (the method), ``random``, ``entropy`` (MC dropout).
        pix2pix: ``Pix2PixConfig`` fields.
        slice_reduction, q: per-slice reduction of the discriminator map (``mean`` or ``low_q``).
        pseudo_threshold: keep a pseudo-label only when its slice's mean plausibility is at least this
            (``null``: keep all).
        repseudo: re-pseudo-label every remaining pool slice each cycle (else keep the first pseudo-label).
        n_mc_samples: MC-dropout passes of the entropy baseline.
        fsl: also train the fully supervised cGAN per fold.
        seed, device.
    """

    method: typing.Literal["ravanbakhsh2018"] = "ravanbakhsh2018"
    name: str = "ravanbakhsh2018"
    data: dict = dataclasses.field(default_factory=lambda: {"source": "builtin:cardiac-mr", "size": 64})
    folds: int = 10
    max_folds: int | None = None
    budgets: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    cycles: tuple[int, ...] = (1, 3)
    strategies: tuple[str, ...] = COLLAB_STRATEGIES
    pix2pix: dict = dataclasses.field(default_factory=dict)
    slice_reduction: str = "mean"
    q: float = 0.1
    pseudo_threshold: float | None = None
    repseudo: bool = True
    n_mc_samples: int = 10
    fsl: bool = True
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        DataConfig.from_dict(self.data, where="data")
        Pix2PixConfig.from_dict(self.pix2pix, where="pix2pix")
        if self.folds < 2:
            raise ConfigError(f"The 'folds' parameter must be >= 2 (cross-validation by volume); got {self.folds}")
        if self.max_folds is not None and self.max_folds < 1:
            raise ConfigError(f"The 'max_folds' parameter must be >= 1 or null; got {self.max_folds}")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise ConfigError(f"The 'budgets' parameter must list fractions in (0, 1]; got {list(self.budgets)}")
        if not self.cycles or any(n < 1 for n in self.cycles):
            raise ConfigError(f"The 'cycles' parameter must list integers >= 1; got {list(self.cycles)}")
        for s in self.strategies:
            if s not in COLLAB_STRATEGIES:
                from medloop.registry import did_you_mean

                raise ConfigError(f"unknown strategy '{s}' for collaborative segmentation{did_you_mean(s, COLLAB_STRATEGIES)}; "
                                  f"allowed: {', '.join(COLLAB_STRATEGIES)}")
        if self.slice_reduction not in SLICE_REDUCTIONS:
            raise ConfigError(f"The 'slice_reduction' parameter must be one of {list(SLICE_REDUCTIONS)}; "
                              f"got {self.slice_reduction!r}")
        if self.pseudo_threshold is not None and not 0 <= self.pseudo_threshold <= 1:
            raise ConfigError(f"The 'pseudo_threshold' parameter must be in [0, 1] or null; got {self.pseudo_threshold}")

    @property
    def pix2pix_config(self) -> Pix2PixConfig:
        return Pix2PixConfig.from_dict({"device": self.device, **self.pix2pix})


def query_counts(k: int, n: int) -> list[int]:
    """Exactly ``k`` queries over ``n`` cycles, ``k // n`` each, the remainder one by one in the first cycles."""
    return [k // n + (1 if c < k % n else 0) for c in range(n)]


@dataclasses.dataclass
class _Data:
    dataset: MedDataset
    images: torch.Tensor  # [N, C, H, W]
    masks: torch.Tensor  # [N, H, W]
    num_classes: int
    names: dict[int, str]


def _load(config: CollaborativeConfig, progress: bool) -> _Data:
    ds = load_dataset(DataConfig.from_dict(config.data), progress=progress)
    if ds.config.size is None:
        raise ConfigError("The 'data.size' parameter must be set (e.g. 64 or 128) so slices can be batched")
    keep = np.nonzero(ds.has_mask)[0]
    if len(keep) < len(ds):
        ds = ds.subset(keep)  # slices without masks cannot be evaluated or simulated by the ground-truth oracle
    if len(set(ds.case_ids)) < config.folds:
        raise DataError(f"{ds.info.root}: {len(set(ds.case_ids))} volumes with masks, fewer than folds = {config.folds}; "
                        "lower 'folds' or add volumes")
    images = torch.stack([s.image for s in ds])
    masks = torch.stack([s.mask for s in ds])
    num_classes = max(max(ds.info.mask_labels, default=1) + 1, int(masks.max()) + 1, 2)
    names = {c: ds.info.mask_labels.get(c, f"label {c}") for c in range(1, num_classes)}
    return _Data(ds, images, masks, num_classes, names)


def _rank(strategy: str, trainer: Pix2PixTrainer, images: torch.Tensor, config: CollaborativeConfig,
          rng: np.random.Generator, mc_seed: int) -> np.ndarray:
    """Scores of the pool slices, higher = query first."""
    if strategy == "random":
        return rng.random(len(images))
    if strategy == "discriminator":
        scores, _, _ = discriminator_scores(trainer.G, trainer.D, images, reduction=config.slice_reduction, q=config.q)
        return scores.numpy().astype(np.float64)
    from medloop.data.record import DatasetInfo, Sample

    samples = [Sample(images[i], None, None, str(i), str(i), "pool") for i in range(len(images))]
    pool = MedDataset.from_samples(samples, DatasetInfo("pool", "memory"))
    cols = score_pool(trainer.G, pool, n_mc_samples=config.n_mc_samples, seed=mc_seed, device=trainer.device,
                      reductions=("mean",), progress=False).columns
    return np.asarray(cols["entropy_mean"], dtype=np.float64)


def _evaluate(trainer: Pix2PixTrainer, images: torch.Tensor, masks: torch.Tensor, names: dict[int, str]) -> dict:
    _, _, pred = discriminator_scores(trainer.G, trainer.D, images)
    m = segmentation_metrics(pred, masks, {0: "background", **names})
    return _plain(m)


def algorithm1(data: _Data, train_idx: np.ndarray, test_idx: np.ndarray, base_case: str, strategy: str,
               budget: float, cycles: int, config: CollaborativeConfig, folder: Path, progress: bool = True,
               interrupt=None, oracle_factory=None) -> list[dict]:
    """Run (or resume) Algorithm 1 for one fold, strategy, budget and number of cycles; returns the records.

    ``train_idx`` / ``test_idx`` index ``data``; the labeled set starts as the slices of ``base_case``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "done.json").exists():
        return _read_rounds(folder / "rounds.jsonl")
    hook = interrupt or (lambda point, c: None)
    ds = data.dataset
    ids = ds.sample_ids
    cases = np.array(ds.case_ids)
    base = [int(i) for i in train_idx if cases[i] == base_case]
    pool = [int(i) for i in train_idx if cases[i] != base_case]
    if not base or not pool:
        raise DataError(f"fold has no base volume slices or no pool (base case '{base_case}')")
    k = int(round(budget * len(pool)))
    per_cycle = query_counts(k, cycles)
    pos = {ids[i]: i for i in range(len(ds))}
    inner = oracle_factory(ds) if oracle_factory else GroundTruthOracle.from_dataset(ds)
    oracle = PersistentOracle(inner, AnswerLog(folder / "answers"))
    answers = collect(oracle, [ids[i] for i in base])
    s_true = list(base)
    pseudo: dict[int, np.ndarray] = {}  # dataset index -> pseudo label map
    records = _read_rounds(folder / "rounds.jsonl")
    cfg = config.pix2pix_config
    size = data.images.shape[-1]
    trainer = None
    for rec in records:  # replay completed cycles
        got = collect(oracle, rec["queried"]) if rec["queried"] else {}
        answers.update(got)
        s_true += [pos[s] for s in rec["queried"]]
    if records and not records[-1].get("final"):
        last = records[-1]["cycle"]
        saved = np.load(folder / f"pseudo_cycle_{last:03d}.npz")
        pseudo = {int(i): saved["labels"][j] for j, i in enumerate(saved["index"])}
        trainer = Pix2PixTrainer(data.images.shape[1], data.num_classes, size, cfg.replace(seed=_seed(config.seed, last, 21)))
        trainer.load_state_dict(torch.load(folder / f"model_cycle_{last:03d}.pt", weights_only=True))
    start = len(records)

    def training_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """S = S_true (expert masks, weight 1) + S_pseudo (G's label maps, weight pseudo_weight)."""
        pseudo_idx = sorted(pseudo)  # a fixed order, the same after a resume; disjoint from S_true
        idx = s_true + pseudo_idx
        labels = [torch.from_numpy(np.asarray(answers[ids[i]].mask)).long() for i in s_true]
        labels += [torch.from_numpy(pseudo[i]).long() for i in pseudo_idx]
        weights = [1.0] * len(s_true) + [cfg.pseudo_weight] * len(pseudo)
        return data.images[idx], torch.stack(labels), torch.tensor(weights)

    for c in range(start, cycles + 1):
        t0 = time.time()
        final = c == cycles
        x, y, w = training_set()
        seed_c = _seed(config.seed, c, 21)
        trainer = Pix2PixTrainer(data.images.shape[1], data.num_classes, size, cfg.replace(seed=seed_c)) \
            if trainer is None else trainer
        train_pix2pix(trainer, x, y, w, seed_c, progress)
        hook("trained", c)
        record: dict[str, Any] = {"cycle": c, "final": final, "n_true": len(s_true), "n_pseudo": len(pseudo),
                                  "queried": [], "query_scores": []}
        if final:
            record["test"] = _evaluate(trainer, data.images[test_idx], data.masks[test_idx], data.names)
        else:
            labeled = set(s_true)
            remaining = [i for i in pool if i not in labeled]
            rng = np.random.default_rng([config.seed, c, 23])
            scores = _rank(strategy, trainer, data.images[remaining], config, rng, _seed(config.seed, c, 24))
            order = np.lexsort((np.arange(len(scores)), -scores))[: per_cycle[c]]
            queried = [remaining[j] for j in order]
            record["queried"] = [ids[i] for i in queried]
            record["query_scores"] = [float(scores[j]) for j in order]
            got = collect(oracle, record["queried"])
            hook("answered", c)
            answers.update(got)
            s_true += queried
            labeled |= set(queried)
            for i in queried:
                pseudo.pop(i, None)  # an expert label replaces a pseudo-label
            # pseudo-label every remaining pool slice with G (optionally only plausible ones)
            rest = [i for i in pool if i not in labeled and (config.repseudo or i not in pseudo)]
            if rest:
                d_scores, _, pred = discriminator_scores(trainer.G, trainer.D, data.images[rest])
                plaus = 1.0 - d_scores.numpy()
                for j, i in enumerate(rest):
                    if config.pseudo_threshold is None or plaus[j] >= config.pseudo_threshold:
                        pseudo[i] = pred[j].numpy().astype(np.int64)
                    else:
                        pseudo.pop(i, None)
            record["n_pseudo_after"] = len(pseudo)
            np.savez_compressed(folder / f"pseudo_cycle_{c:03d}.npz", index=np.array(sorted(pseudo), dtype=np.int64),
                                labels=np.stack([pseudo[i] for i in sorted(pseudo)]) if pseudo else np.zeros((0, 1, 1)))
            torch.save(trainer.state_dict(), folder / f"model_cycle_{c:03d}.pt")
        record["seconds"] = round(time.time() - t0, 2)
        _append_line(folder / "rounds.jsonl", record)
        records.append(record)
    (folder / "done.json").write_text(json.dumps({"cycles": cycles}))
    return records


def _correlation(trainer: Pix2PixTrainer, images: torch.Tensor, masks: torch.Tensor, config: CollaborativeConfig,
                 num_classes: int) -> dict[str, list[float]]:
    """Per-slice plausibility (1 - score) and Dice (mean over foreground classes present) of a model."""
    scores, _, pred = discriminator_scores(trainer.G, trainer.D, images, reduction=config.slice_reduction, q=config.q)
    classes = range(1, num_classes)
    dice = torch.stack([mask_dice(pred == c, masks == c) for c in classes], 1)  # [N, K-1]
    present = torch.stack([((pred == c) | (masks == c)).flatten(1).any(1) for c in classes], 1)
    per_slice = torch.where(present.any(1), (dice * present).sum(1) / present.sum(1).clamp_min(1), torch.ones(len(dice)))
    return {"plausibility": (1.0 - scores).tolist(), "dice": per_slice.tolist()}


def run_collaborative(config: CollaborativeConfig, out: str | Path, resume: bool = False, progress: bool = True,
                      interrupt=None, oracle_factory=None, console=None) -> dict:
    """Cross-validation by volume of Algorithm 1 and its baselines; writes results.json and the report."""
    from scipy.stats import pearsonr

    from medloop import __version__
    from medloop.report.collaborative import build_collaborative_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.yaml"
    if saved.exists():
        if not resume:
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        if CollaborativeConfig.from_yaml(saved).to_dict() != config.to_dict():
            raise ConfigError(f"{out} holds a run with a different config; use a new --out folder")
    data = _load(config, progress)
    config.to_yaml(saved)
    write_run_record(out, config.seed, {"experiment": config.to_dict()}, "medloop run")
    started = time.time()
    folds = kfold_by_case(data.dataset, k=config.folds, seed=config.seed)
    if config.max_folds:
        folds = folds[: config.max_folds]
    cases = np.array(data.dataset.case_ids)
    tracks: dict[str, dict] = {}
    fsl: dict[str, dict] = {}
    corr: dict[str, list[float]] = {"plausibility": [], "dice": []}
    for f, (train_idx, test_idx) in enumerate(folds):
        rng = np.random.default_rng([config.seed, f, 31])
        base_case = str(rng.choice(sorted(set(cases[train_idx]))))
        for strategy in config.strategies:
            for n in config.cycles:
                for b in config.budgets:
                    label = f"{strategy}-n{n}"
                    if console is not None:
                        console.print(f"fold {f}: {strategy}, budget {b:.0%}, {n} cycle(s)")
                    recs = algorithm1(data, train_idx, test_idx, base_case, strategy, b, n, config,
                                      out / "tracks" / f"fold{f}" / f"{label}-b{int(round(b * 100)):03d}", progress,
                                      interrupt, oracle_factory)
                    tracks.setdefault(label, {}).setdefault(f"{b:.2f}", {})[str(f)] = recs
        # base model (one volume) for the discriminator-Dice correlation, and the fully supervised cGAN
        base_path = out / "baselines" / f"fold{f}-base.json"
        if not base_path.exists():
            base_path.parent.mkdir(parents=True, exist_ok=True)
            base = [int(i) for i in train_idx if cases[i] == base_case]
            trainer = Pix2PixTrainer(data.images.shape[1], data.num_classes, data.images.shape[-1],
                                     config.pix2pix_config.replace(seed=_seed(config.seed, f, 41)))
            train_pix2pix(trainer, data.images[base], data.masks[base], torch.ones(len(base)),
                          _seed(config.seed, f, 41), progress)
            c = _correlation(trainer, data.images[test_idx], data.masks[test_idx], config, data.num_classes)
            shown = np.asarray(test_idx)[np.linspace(0, len(test_idx) - 1, min(4, len(test_idx))).astype(int)]
            _, pmap, pred = discriminator_scores(trainer.G, trainer.D, data.images[shown])
            np.savez_compressed(out / "baselines" / f"fold{f}-figure.npz", image=data.images[shown, 0].numpy(),
                                truth=data.masks[shown].numpy(), pred=pred.numpy(), plausibility=pmap.numpy(),
                                ids=np.array([data.dataset.sample_ids[i] for i in shown]))
            base_path.write_text(json.dumps({"base_case": base_case, **c,
                                             "test": _evaluate(trainer, data.images[test_idx], data.masks[test_idx], data.names)}))
        base_rec = json.loads(base_path.read_text())
        corr["plausibility"] += base_rec["plausibility"]
        corr["dice"] += base_rec["dice"]
        if config.fsl:
            fsl_path = out / "baselines" / f"fold{f}-fsl.json"
            if not fsl_path.exists():
                trainer = Pix2PixTrainer(data.images.shape[1], data.num_classes, data.images.shape[-1],
                                         config.pix2pix_config.replace(seed=_seed(config.seed, f, 42)))
                train_pix2pix(trainer, data.images[train_idx], data.masks[train_idx], torch.ones(len(train_idx)),
                              _seed(config.seed, f, 42), progress)
                fsl_path.write_text(json.dumps({"test": _evaluate(trainer, data.images[test_idx], data.masks[test_idx],
                                                                  data.names)}))
            fsl[str(f)] = json.loads(fsl_path.read_text())
    if len(corr["dice"]) >= 3 and np.std(corr["dice"]) > 0 and np.std(corr["plausibility"]) > 0:
        r, p = pearsonr(corr["plausibility"], corr["dice"])
        correlation = {"pearson_r": float(r), "p_value": float(p), "n_slices": len(corr["dice"]), **corr}
    else:
        correlation = {"pearson_r": None, "p_value": None, "n_slices": len(corr["dice"]), **corr}
    results = {"experiment": config.name, "method": config.method, "medloop_version": __version__,
               "config": config.to_dict(), "class_names": data.names,
               "data": {"root": data.dataset.info.root, "n_slices": len(data.dataset),
                        "n_volumes": len(set(data.dataset.case_ids)), "folds_run": len(folds)},
               "tracks": tracks, "fsl": fsl, "correlation": correlation,
               "minutes": round((time.time() - started) / 60, 2)}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out / "results.json")
    build_collaborative_report(out)
    return results
