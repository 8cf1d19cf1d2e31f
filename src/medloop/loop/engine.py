"""The active-learning round engine: train -> candidates -> score -> select -> ask the oracle -> add -> record.

One *track* is one strategy with one seed. Its folder holds everything needed to resume after a kill:
``answers/`` (every oracle answer, fsynced before use), ``rounds.jsonl`` (one line per completed round),
``model_round_NNN.pt`` / ``unet_round_NNN.pt`` (weights after a round), ``synthetic/round_NNN.pt`` (synthetic
samples that joined the training set) and ``done.json``. Every random draw of round ``r`` comes from
generators seeded by ``(seed, r)``, and round ``r`` starts from the weights saved after round ``r - 1``, so a
resumed track reaches exactly the results of an uninterrupted one; answers already given are served from
the log, never asked again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.data import MedDataset, Sample, split_by_case
from medloop.data.record import DatasetInfo
from medloop.device import resolve_device
from medloop.errors import ConfigError, DataError
from medloop.loop.config import ExperimentConfig
from medloop.loop.oracle import AnswerLog, GroundTruthOracle, Oracle, PersistentOracle, collect
from medloop.models import build_model
from medloop.progress import make_progress
from medloop.query import build_strategy
from medloop.training import evaluate, fit, predict
from medloop.uncertainty import score_pool

__all__ = ["Context", "prepare", "run_track", "train_classifier", "train_segmenter", "new_classifier", "new_segmenter",
           "Interrupt"]


class Interrupt(Exception):
    """Raised by a test hook to simulate a kill at a named point of a round."""


@dataclasses.dataclass
class Context:
    """What every track of an experiment shares: config, data, splits, model parameters."""

    config: ExperimentConfig
    dataset: MedDataset
    num_classes: int
    in_channels: int
    splits: dict[int, Any]
    progress: bool = True
    oracle_factory: Callable[[MedDataset], Oracle] | None = None
    _pixels: dict[int, float] = dataclasses.field(default_factory=dict)

    def pool(self, seed: int) -> MedDataset:
        return self.dataset.subset(self.splits[seed].train)

    def val(self, seed: int) -> MedDataset:
        return self.dataset.subset(self.splits[seed].val)

    def test(self, seed: int) -> MedDataset:
        return self.dataset.subset(self.splits[seed].test)

    def budget_count(self, pool_size: int) -> int:
        b = self.config.budget
        return int(round(b * pool_size)) if b <= 1 else int(b)

    @property
    def seg_classes(self) -> int:
        return max(max(self.dataset.info.mask_labels, default=1) + 1, 2)

    def pool_mask_pixels(self, seed: int) -> float:
        """Foreground pixels of every mask in the seed's pool (the denominator of the pixel cost), read once."""
        if seed not in self._pixels:
            pool = self.pool(seed)
            self._pixels[seed] = float(sum(int((pool[i].mask > 0).sum()) for i in np.nonzero(pool.has_mask)[0])) or 1.0
        return self._pixels[seed]


def prepare(config: ExperimentConfig, progress: bool = True, oracle_factory=None) -> Context:
    """Load the data once, split per seed, and check the protocol fits the data (before any training)."""
    from medloop.data import load_dataset

    ds = load_dataset(config.data_config, progress=progress)
    labels = ds.labels
    known = labels[labels >= 0]
    if len(known) == 0:
        raise DataError(f"no image labels in {ds.info.root}; the active-learning experiment needs image labels "
                        "(labels.csv label column, or a layout that provides them)")
    num_classes = max(len(ds.info.class_names), int(known.max()) + 1)
    if num_classes < 2:
        raise DataError(f"{ds.info.root}: only one image class; active learning of a classifier needs two or more")
    if config.segmenter is not None and not ds.has_mask.any():
        raise DataError(f"{ds.info.root}: no masks, but the experiment trains a segmenter; set 'segmenter: null' "
                        "or use data with masks")
    if config.data_config.size is None:
        raise ConfigError("The 'data.size' parameter must be set (e.g. 128) so images can be batched")
    seg_cfg = config.segmenter_config
    if seg_cfg is not None:
        from medloop.models.unet import DEFAULT_CHANNELS

        divisor = 2 ** (len(seg_cfg.model_params.get("channels", DEFAULT_CHANNELS)) - 1)
        size = config.data_config.size
        if size % divisor or size // divisor < 2:
            raise ConfigError(f"The 'data.size' parameter ({size}) does not fit the UNet: it downsamples "
                              f"{divisor.bit_length() - 1} times, so the size must be a multiple of {divisor} and at "
                              f"least {2 * divisor}; change data.size or segmenter.model_params.channels")
    splits = {}
    for seed in config.seeds:
        split = split_by_case(ds, val=config.val_fraction, test=config.test_fraction, seed=seed)
        pool_labels = labels[split.train]
        for c in range(num_classes):
            have = int((pool_labels == c).sum())
            if have < config.initial_per_class:
                name = ds.info.class_names[c] if c < len(ds.info.class_names) else str(c)
                raise DataError(f"{ds.info.root}: the training pool (seed {seed}) has {have} images of class '{name}' "
                                f"but the initial set needs initial_per_class = {config.initial_per_class}; lower "
                                "initial_per_class or use more data")
        pool_size = len(split.train)
        initial = config.initial_per_class * num_classes
        budget = int(round(config.budget * pool_size)) if config.budget <= 1 else int(config.budget)
        if budget < initial or budget > pool_size:
            raise ConfigError(f"The 'budget' parameter gives {budget} labeled images but it must lie between the "
                              f"initial set ({initial}) and the training pool ({pool_size}); got {config.budget}")
        splits[seed] = split
    return Context(config, ds, num_classes, int(ds[0].image.shape[0]), splits, progress, oracle_factory)


# ------------------------------------------------------------------------------------------------ training


def _info(ctx: Context, name: str) -> DatasetInfo:
    i = ctx.dataset.info
    return DatasetInfo(name, i.root, i.class_names, i.mask_labels, i.volumetric)


def new_classifier(ctx: Context, seed: int) -> torch.nn.Module:
    cfg = ctx.config.classifier_config
    torch.manual_seed(seed)
    return build_model(cfg.model, in_channels=ctx.in_channels, num_classes=ctx.num_classes, **cfg.model_params)


def new_segmenter(ctx: Context, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", in_channels=ctx.in_channels, num_classes=ctx.seg_classes,
                       **ctx.config.segmenter_config.model_params)


def train_classifier(ctx: Context, model: torch.nn.Module | None, samples: list[Sample], val: MedDataset,
                     seed: int) -> torch.nn.Module:
    """Fit (or continue fitting) the classifier on ``samples``; early stopping on ``val``."""
    cfg = ctx.config.classifier_config.replace(seed=seed)
    model = model if model is not None else new_classifier(ctx, seed)
    fit(model, MedDataset.from_samples(samples, _info(ctx, "labeled")), val, cfg, progress=ctx.progress)
    return model.cpu()


def train_segmenter(ctx: Context, samples: list[Sample], val: MedDataset | None, seed: int) -> torch.nn.Module:
    """A UNet trained from scratch on the samples that have masks (real and synthetic); early stopping on the
    validation samples with masks, if any."""
    cfg = ctx.config.segmenter_config.replace(seed=seed)
    with_masks = [s for s in samples if s.mask is not None]
    model = new_segmenter(ctx, seed)
    val = val.subset(np.nonzero(val.has_mask)[0]) if val is not None else None
    fit(model, MedDataset.from_samples(with_masks, _info(ctx, "labeled")), val if val is not None and len(val) else None, cfg,
        progress=ctx.progress)
    return model.cpu()


def _save_model(path: Path, model: torch.nn.Module) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def _append_line(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _read_rounds(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: that round did not complete
    return out


def _seed(seed: int, round_idx: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, round_idx + 1, stream]).generate_state(1)[0] % (2**31 - 1))


def initial_set(ctx: Context, seed: int) -> list[int]:
    """``initial_per_class`` pool images per class (pool positions), drawn with the seed.

    Drawing per class uses the stored labels (as the paper's protocol does); the oracle is still asked
    (and charged) for every one of them.
    """
    rng = np.random.default_rng([seed, 0, 99])
    labels = ctx.pool(seed).labels
    chosen = []
    for c in range(ctx.num_classes):
        idx = np.nonzero(labels == c)[0]
        chosen += sorted(int(i) for i in rng.choice(idx, ctx.config.initial_per_class, replace=False))
    return chosen


# ---------------------------------------------------------------------------------------------------- track


@dataclasses.dataclass
class _State:
    labeled: list[int]  # pool positions, in acquisition order
    answers: dict[str, Any]
    synthetic: list[Sample]
    rounds: list[dict]


def _labeled_samples(pool: MedDataset, state: _State, copies: int) -> list[Sample]:
    """Real labeled samples with the oracle's label and mask, each repeated ``copies`` times."""
    out = []
    for i in state.labeled:
        s = pool[i]
        a = state.answers[s.sample_id]
        mask = torch.from_numpy(np.asarray(a.mask)).long() if a.mask is not None else None
        out += [dataclasses.replace(s, label=a.label, mask=mask)] * copies
    return out


def _patience(best: float, stale: int, value: float) -> tuple[float, int]:
    """(best validation score so far, rounds since it improved) after a round scoring ``value``."""
    return (value, 0) if value > best else (best, stale + 1)


def _stage_hits(config: ExperimentConfig, fraction: float, done: set[float]) -> list[float]:
    return [f for f in config.record_at if fraction + 1e-9 >= f and f not in done]


def run_track(ctx: Context, seed: int, spec: dict, folder: Path, sampler_for: Callable[[int], Any] | None = None,
              interrupt: Callable[[str, int], None] | None = None) -> list[dict]:
    """Run (or resume) one strategy with one seed; returns the round records.

    Args:
        sampler_for: ``seed -> MaskConditionedSampler`` for the generative strategy.
        interrupt: test hook called as ``interrupt(point, round_idx)`` at points of a round; raising there
            simulates a kill.
    """
    cfg = ctx.config
    folder.mkdir(parents=True, exist_ok=True)
    done_path = folder / "done.json"
    rounds_path = folder / "rounds.jsonl"
    if done_path.exists():
        return _read_rounds(rounds_path)
    strategy = build_strategy(spec["name"], spec.get("params"))
    pool, val, test = ctx.pool(seed), ctx.val(seed), ctx.test(seed)
    pool_ids = pool.sample_ids
    pos_of = {s: i for i, s in enumerate(pool_ids)}
    budget = ctx.budget_count(len(pool))
    total_pixels = ctx.pool_mask_pixels(seed)
    log = AnswerLog(folder / "answers")
    inner = ctx.oracle_factory(pool) if ctx.oracle_factory else GroundTruthOracle.from_dataset(pool, with_masks=True)
    oracle = PersistentOracle(inner, log)
    hook = interrupt or (lambda point, r: None)

    # restore completed rounds
    rounds = _read_rounds(rounds_path)
    initial = initial_set(ctx, seed)
    answers = collect(oracle, [pool_ids[i] for i in initial], cfg.oracle_timeout)
    state = _State(list(initial), dict(answers), [], rounds)
    for rec in rounds:
        new = collect(oracle, rec["queried"], cfg.oracle_timeout) if rec["queried"] else {}
        state.answers.update(new)
        state.labeled += [pos_of[s] for s in rec["queried"]]
        syn = folder / "synthetic" / f"round_{rec['round']:03d}.pt"
        if syn.exists():
            state.synthetic += _load_synthetic(syn, state.answers)
    start_round = len(rounds)
    model = seg = None
    if start_round > 0:
        model = new_classifier(ctx, seed)
        model.load_state_dict(torch.load(folder / f"model_round_{start_round - 1:03d}.pt", weights_only=True))
        seg_rounds = [r["round"] for r in rounds if r.get("seg") is not None]
        if seg_rounds:
            seg = new_segmenter(ctx, seed)
            seg.load_state_dict(torch.load(folder / f"unet_round_{seg_rounds[-1]:03d}.pt", weights_only=True))
    stages_done = {f for r in rounds for f in r.get("stages", [])}
    best_val, stale = -np.inf, 0
    for r in rounds:  # the same bookkeeping as in the loop, replayed
        best_val, stale = _patience(best_val, stale, r["val"]["auc_or_acc"])

    for round_idx in range(start_round, cfg.max_rounds + 1):
        t0 = time.time()
        fraction = len(state.labeled) / len(pool)
        samples = _labeled_samples(pool, state, cfg.augment_copies) + state.synthetic
        n_synthetic = len(state.synthetic)
        if cfg.fine_tune == "restart":
            model = None
        model = train_classifier(ctx, model, samples, val, _seed(seed, round_idx, 1))
        device = resolve_device(cfg.device)
        val_m = evaluate(model, val, "classify", device=device)
        test_m = evaluate(model, test, "classify", device=device)
        val_score = val_m["auc"] if np.isfinite(val_m["auc"]) else val_m["accuracy"]
        hook("trained", round_idx)
        # segmentation at recorded stages (and at round 0: the generative strategy needs masks)
        hits = _stage_hits(cfg, fraction, stages_done)
        seg_metrics = None
        if cfg.segmenter is not None and (hits or (round_idx == 0 and strategy.generative)):
            seg_samples = _labeled_samples(pool, state, 1) + state.synthetic
            seg = train_segmenter(ctx, seg_samples, val, _seed(seed, round_idx, 2))
            seg_metrics = evaluate(seg, test, "segment", device=device)
            shown = test.subset([i for i in range(len(test)) if test.has_mask[i]][:4])
            overlays = predict(seg, shown)["pred"].numpy().astype(np.uint8)
            _save_model(folder / f"unet_round_{round_idx:03d}.pt", seg)
            np.savez_compressed(folder / f"overlay_round_{round_idx:03d}.npz", pred=overlays,
                                image=np.stack([s.image[0].numpy() for s in shown]),
                                truth=np.stack([s.mask.numpy() for s in shown]).astype(np.uint8))
        stages_done |= set(hits)
        # stopping
        best_val, stale = _patience(best_val, stale, val_score)
        stop = None
        if len(state.labeled) >= budget:
            stop = "budget"
        elif round_idx >= cfg.max_rounds:
            stop = "max_rounds"
        elif cfg.patience and stale >= cfg.patience:
            stop = f"no validation improvement for {cfg.patience} rounds"
        elif len(state.labeled) >= len(pool):
            stop = "pool exhausted"
        queried: list[str] = []
        query_scores: list[float] = []
        n_candidates = 0
        if stop is None:
            rng = np.random.default_rng([seed, round_idx + 1, 3])
            k_max = budget - len(state.labeled)
            queried, query_scores, n_candidates, new_syn, gallery = _query(
                ctx, strategy, model, seg, pool, state, seed, round_idx, rng, k_max, sampler_for)
            hook("selected", round_idx)
            answers = collect(oracle, queried, cfg.oracle_timeout)
            hook("answered", round_idx)
            state.answers.update(answers)
            labeled_syn = [dataclasses.replace(s, label=answers[s.meta["source_sample"]].label) for s in new_syn]
            if new_syn:
                _save_synthetic(folder / "synthetic" / f"round_{round_idx:03d}.pt", labeled_syn)
            if gallery is not None:
                np.savez_compressed(folder / f"gallery_round_{round_idx:03d}.npz", **gallery)
            state.synthetic += labeled_syn
        _save_model(folder / f"model_round_{round_idx:03d}.pt", model)
        pixels = sum(state.answers[pool_ids[i]].pixels for i in state.labeled)
        record = {
            "round": round_idx, "n_labeled": len(state.labeled), "fraction": fraction,
            "n_synthetic": n_synthetic,
            "cost": {"images": len(state.labeled), "pixels": pixels, "pixel_fraction": pixels / total_pixels},
            "val": {**_plain(val_m), "auc_or_acc": val_score}, "test": _plain(test_m),
            "seg": _plain(seg_metrics) if seg_metrics is not None else None, "stages": hits,
            "queried": queried, "query_scores": query_scores, "n_candidates": n_candidates, "stop": stop,
            "seconds": round(time.time() - t0, 2),
        }
        _append_line(rounds_path, record)
        hook("recorded", round_idx)
        state.rounds.append(record)
        state.labeled += [pos_of[s] for s in queried]
        (folder / f"model_round_{round_idx - 2:03d}.pt").unlink(missing_ok=True)  # keep the last two
        if stop is not None:
            break
    done_path.write_text(json.dumps({"rounds": len(state.rounds), "stop": state.rounds[-1]["stop"]}))
    return state.rounds


def _plain(metrics: dict | None) -> dict | None:
    if metrics is None:
        return None

    def conv(v):
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (np.floating, float)):
            return None if not np.isfinite(v) else float(v)
        if isinstance(v, (np.integer,)):
            return int(v)
        return v

    return conv(metrics)


def _save_synthetic(path: Path, samples: list[Sample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"images": torch.stack([s.image for s in samples]),
                "masks": torch.stack([s.mask for s in samples]),
                "ids": [s.sample_id for s in samples], "sources": [s.meta["source_sample"] for s in samples],
                "case_ids": [s.case_id for s in samples], "scores": [float(s.meta.get("score", 0.0)) for s in samples],
                "ops": [json.dumps(s.meta.get("ops", [])) for s in samples]}, tmp)
    os.replace(tmp, path)


def _load_synthetic(path: Path, answers: dict) -> list[Sample]:
    d = torch.load(path, weights_only=True)
    return [Sample(d["images"][i], d["masks"][i], answers[d["sources"][i]].label, d["case_ids"][i], d["ids"][i],
                   "synthetic", meta={"source_sample": d["sources"][i], "score": d["scores"][i],
                                      "ops": json.loads(d["ops"][i])})
            for i in range(len(d["ids"]))]


def _query(ctx: Context, strategy, model, seg, pool: MedDataset, state: _State, seed: int, round_idx: int,
           rng: np.random.Generator, k_max: int, sampler_for):
    """Candidates -> scores -> selection. Returns (queried ids, their scores, #candidates, synthetic, gallery)."""
    cfg = ctx.config
    labeled = set(state.labeled)
    unlabeled = np.array([i for i in range(len(pool)) if i not in labeled], dtype=np.int64)
    mc_seed = _seed(seed, round_idx, 4)
    device = resolve_device(cfg.device)
    if not strategy.generative:
        cand = pool.subset(unlabeled)
        if strategy.needs_mc:
            scores = score_pool(model, cand, n_mc_samples=cfg.n_mc_samples, seed=mc_seed, device=device,
                                progress=ctx.progress)
            columns = dict(scores.columns)
        else:
            columns = {}
        columns["index"] = np.arange(len(unlabeled))
        chosen, values = strategy.select(columns, cfg.query_per_class, ctx.num_classes, rng)
        chosen = chosen[:k_max]
        return ([pool.sample_ids[int(unlabeled[j])] for j in chosen], [float(values[j]) for j in chosen],
                len(unlabeled), [], None)
    # generative: variants of (a sample of) the unlabeled images, masks from the current segmenter
    sampler = sampler_for(seed)
    n_src = len(unlabeled) if strategy.candidates == 0 else min(strategy.candidates, len(unlabeled))
    sources = np.sort(rng.choice(unlabeled, n_src, replace=False))
    src_ds = pool.subset(sources)
    masks = predict(seg, src_ds)["pred"].numpy() > 0
    variants: list[Sample] = []
    with make_progress(transient=not ctx.progress) as bar:
        task = bar.add_task("generating candidates", total=n_src * strategy.per_image, visible=ctx.progress)
        for j, pos in enumerate(sources):
            s = pool[int(pos)]
            for v_idx, v in enumerate(sampler.variants(s.image.numpy(), masks[j].astype(np.int64),
                                                        strategy.per_image, rng)):
                variants.append(Sample(torch.from_numpy(v.image), torch.from_numpy(v.mask.astype(np.int64)), None,
                                       s.case_id, f"{s.sample_id}~r{round_idx}v{v_idx:03d}", "synthetic",
                                       meta={"source_sample": s.sample_id, "ops": v.ops}))
            bar.update(task, advance=strategy.per_image)
    cand = MedDataset.from_samples(variants, _info(ctx, "candidates"))
    scores = score_pool(model, cand, n_mc_samples=cfg.n_mc_samples, seed=mc_seed, device=device, progress=ctx.progress)
    columns = {**scores.columns, "index": np.arange(len(variants))}
    chosen, values = strategy.select(columns, cfg.query_per_class, ctx.num_classes, rng)
    # one oracle query per distinct source, within the budget
    queried: list[str] = []
    kept = []
    for j in chosen:
        src = variants[int(j)].meta["source_sample"]
        if src not in queried:
            if len(queried) >= k_max:
                continue
            queried.append(src)
        kept.append(int(j))
    selected = [dataclasses.replace(variants[j], meta={**variants[j].meta, "score": float(values[j])}) for j in kept]
    order = np.argsort(-values, kind="stable")
    top, bottom = order[:4], order[::-1][:4]
    gallery = {"top_images": np.stack([variants[i].image[0].numpy() for i in top]),
               "top_scores": values[top], "bottom_images": np.stack([variants[i].image[0].numpy() for i in bottom]),
               "bottom_scores": values[bottom],
               "top_ids": np.array([variants[i].sample_id for i in top]),
               "bottom_ids": np.array([variants[i].sample_id for i in bottom])}
    q_scores = []
    for src in queried:
        q_scores.append(max(float(values[j]) for j in kept if variants[j].meta["source_sample"] == src))
    return queried, q_scores, len(variants), selected, gallery
