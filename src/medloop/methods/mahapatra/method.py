"""Generative active learning (Mahapatra et al., MICCAI 2018) as a configuration of the loop.

Each round trains the Bayesian classifier (continuing from the last round's weights, or from scratch with
``retrain: restart``) on the labeled images (augmented ``augment_copies`` times) and the synthetic samples
that joined so far; the segmenter is trained at the recorded stages (and at round 0 when a strategy needs
synthetic candidates, whose masks come from it). Candidates are the unlabeled pool, or, for a strategy that
needs ``synthetic``, variants of sampled unlabeled images rendered by the mask-conditioned cGAN; a variant
selected by the strategy joins the training set with its source's label (one oracle query per source).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.data import MedDataset, Sample, split_by_case
from medloop.data.record import DatasetInfo
from medloop.device import resolve_device
from medloop.errors import ConfigError, DataError
from medloop.loop.oracle import GroundTruthOracle, Oracle
from medloop.loop.round import Candidates, Method, Proposal, QuerySize
from medloop.loop.state import RunState
from medloop.methods.mahapatra.config import ExperimentConfig
from medloop.metrics import classification_metrics, plain
from medloop.metrics.bootstrap import stored_probs
from medloop.models import build_model, load_pretrained
from medloop.progress import make_progress
from medloop.query import QueryStrategy, build_strategy
from medloop.seeding import seed_for, stream, torch_init
from medloop.storage import save_npz
from medloop.training import evaluate, fit, predict
from medloop.training.head import FeatureHead, fit_head, predict_head
from medloop.training.selfsup import features, trunk_state
from medloop.training.trainer import trainable_subset
from medloop.uncertainty import score_pool
from medloop.uncertainty.mc import score_features

__all__ = ["Context", "prepare", "Mahapatra", "initial_set"]


def budget_count(budget: float, pool_size: int) -> int:
    """Images to label in all: ``budget`` is a fraction of the pool when <= 1, else a count."""
    return int(round(budget * pool_size)) if budget <= 1 else int(budget)


@dataclasses.dataclass
class Context:
    """What every track of an experiment shares: config, data, splits."""

    config: ExperimentConfig
    dataset: MedDataset
    splits: dict[int, Any]
    progress: bool = True
    oracle_factory: Callable[[MedDataset], Oracle] | None = None
    workdir: Path | None = None
    _pixels: dict[int, float] = dataclasses.field(default_factory=dict)
    _selfsup: dict[int, str] = dataclasses.field(default_factory=dict)
    _features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def frozen(self) -> bool:
        """Rounds train the head on trunk features computed once (``recipe: frozen``)."""
        return self.config.recipe == "frozen"

    def trunk_seed(self, seed: int) -> int:
        """The seed of the split, the screening pool and a self-supervised trunk (shared with ``split_seed``)."""
        return self.config.split_seed if self.config.split_seed is not None else seed

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def in_channels(self) -> int:
        return int(self.dataset[0].image.shape[0])

    def pool(self, seed: int) -> MedDataset:
        return self.dataset.subset(self.splits[seed].train)

    def val(self, seed: int) -> MedDataset:
        return self.dataset.subset(self.splits[seed].val)

    def test(self, seed: int) -> MedDataset:
        return self.dataset.subset(self.splits[seed].test)

    def budget_count(self, pool_size: int) -> int:
        return budget_count(self.config.budget, pool_size)

    def pool_mask_pixels(self, seed: int) -> float:
        """Foreground pixels of every mask in the seed's pool (the denominator of the pixel cost), read once."""
        if seed not in self._pixels:
            pool = self.pool(seed)
            self._pixels[seed] = float(sum(int((pool[i].mask > 0).sum()) for i in np.nonzero(pool.has_mask)[0])) or 1.0
        return self._pixels[seed]

    def new_classifier(self, seed: int, *names: int | str) -> torch.nn.Module:
        """A classifier initialised from the stream ``(seed, *names)``, then from ``classifier.pretrained``."""
        cfg = self.config.classifier_config
        with torch_init(seed, *names):
            model = build_model(cfg.model, in_channels=self.in_channels, num_classes=self.num_classes,
                                **cfg.model_params)
        if cfg.pretrained:
            load_pretrained(model, self.pretrained_path(seed))
        elif self.frozen and names:  # the frozen trunk is the seed's initial one in every round
            model.load_state_dict(trunk_state(self.new_classifier(seed)), strict=False)
        return model

    def trunk_features(self, seed: int) -> np.ndarray:
        """Features ``[len(dataset), F]`` of every image (dataset positions) from the seed's initial trunk,
        computed once and shared by the seeds that share the trunk (the same ``pretrained`` checkpoint)."""
        key = self.pretrained_path(seed) if self.config.classifier_config.pretrained else f"seed {seed}"
        if key not in self._features:
            trunk = self.new_classifier(seed).to(resolve_device(self.config.device))
            self._features[key] = features(trunk, self.dataset).astype(np.float32)
        return self._features[key]

    def pretrained_path(self, seed: int) -> str:
        """``classifier.pretrained``, or with ``selfsup`` the seed's self-supervised checkpoint (pretrained on
        the seed's pool the first time it is needed, then cached)."""
        cfg = self.config.classifier_config
        if cfg.pretrained != "selfsup":
            return cfg.pretrained
        shared = self.trunk_seed(seed)
        if shared not in self._selfsup:
            from medloop.loop.pretraining import selfsup_checkpoint

            self._selfsup[shared] = str(selfsup_checkpoint(self.config, self.pool(seed), shared, self.workdir,
                                                           self.progress))
        return self._selfsup[shared]

    def new_segmenter(self, seed: int, *names: int | str) -> torch.nn.Module:
        cfg = self.config.segmenter_config
        with torch_init(seed, *names):
            return build_model(cfg.model, in_channels=self.in_channels, num_classes=self.dataset.num_mask_classes,
                               **cfg.model_params)


def prepare(config: ExperimentConfig, progress: bool = True, oracle_factory=None) -> Context:
    """Load the data once, split per seed, and check the protocol and models fit the data (before any training)."""
    from medloop.data import load_dataset

    if config.data_config.size is None:
        raise ConfigError("The 'data.size' parameter must be set (e.g. 128) so images can be batched")
    ds = load_dataset(config.data_config, progress=progress)
    labels = ds.labels
    if not (labels >= 0).any():
        raise DataError(f"no image labels in {ds.info.root}; the active-learning experiment needs image labels "
                        "(labels.csv label column, or a layout that provides them)")
    if ds.num_classes < 2:
        raise DataError(f"{ds.info.root}: only one image class; active learning of a classifier needs two or more")
    seg_cfg = config.segmenter_config
    if seg_cfg is not None and not ds.has_mask.any():
        raise DataError(f"{ds.info.root}: no masks, but the experiment trains a segmenter; set 'segmenter: null' "
                        "or use data with masks")
    if seg_cfg is not None and seg_cfg.model == "unet":
        from medloop.models.unet import DEFAULT_CHANNELS

        divisor = 2 ** (len(seg_cfg.model_params.get("channels", DEFAULT_CHANNELS)) - 1)
        size = config.data_config.size
        if size % divisor or size // divisor < 2:
            raise ConfigError(f"The 'data.size' parameter ({size}) does not fit the UNet: it downsamples "
                              f"{divisor.bit_length() - 1} times, so the size must be a multiple of {divisor} and at "
                              f"least {2 * divisor}; change data.size or segmenter.model_params.channels")
    if config.pool_positive_share is not None and config.positive_class >= ds.num_classes:
        raise ConfigError(f"The 'positive_class' parameter ({config.positive_class}) is not a class of "
                          f"{ds.info.root}, which has {ds.num_classes}; set it to one of 0..{ds.num_classes - 1}")
    splits = {}
    for seed in config.seeds:
        split_seed = config.split_seed if config.split_seed is not None else seed
        split = split_by_case(ds, val=config.val_fraction, test=config.test_fraction, seed=split_seed)
        if config.pool_positive_share is not None:
            split = dataclasses.replace(split, train=screening_pool(
                split.train, labels, config.pool_positive_share, config.positive_class, split_seed))
        pool_labels = labels[split.train]
        for c in range(ds.num_classes):
            have = int((pool_labels == c).sum())
            if config.initial == "per_class" and have < config.initial_per_class:
                name = ds.info.class_names[c] if c < len(ds.info.class_names) else str(c)
                raise DataError(f"{ds.info.root}: the training pool (seed {seed}) has {have} images of class '{name}' "
                                f"but the initial set needs initial_per_class = {config.initial_per_class}; lower "
                                "initial_per_class or use more data")
        pool_size = len(split.train)
        initial = config.initial_per_class * ds.num_classes if config.initial == "per_class" else config.initial_size
        budget = budget_count(config.budget, pool_size)
        if budget < initial or budget > pool_size:
            raise ConfigError(f"The 'budget' parameter gives {budget} labeled images but it must lie between the "
                              f"initial set ({initial}) and the training pool ({pool_size}); got {config.budget}")
        splits[seed] = split
    ctx = Context(config, ds, splits, progress, oracle_factory)
    if config.classifier_config.pretrained != "selfsup":
        ctx.new_classifier(config.seeds[0])  # a missing or mismatched pretrained checkpoint fails here, named
    return ctx


def screening_pool(train: np.ndarray, labels: np.ndarray, share: float, positive: int, seed: int) -> np.ndarray:
    """The training pool (dataset positions, sorted) with ``share`` of it in class ``positive``: images of the
    over-represented side are dropped at random (stream ``(seed, "screening pool")``); unlabeled images stay."""
    train = np.asarray(train)
    pos = train[labels[train] == positive]
    neg = train[(labels[train] >= 0) & (labels[train] != positive)]
    if not len(pos) or not len(neg):
        raise DataError(f"the training pool (split seed {seed}) holds {len(pos)} images of class {positive} and "
                        f"{len(neg)} of the others, so no pool with pool_positive_share = {share} can be drawn; check "
                        "'positive_class' or remove 'pool_positive_share'")
    rng = stream(seed, "screening pool")
    if len(pos) > share * (len(pos) + len(neg)):
        pos = rng.choice(pos, max(1, int(round(share * len(neg) / (1 - share)))), replace=False)
    else:
        neg = rng.choice(neg, int(round(len(pos) * (1 - share) / share)), replace=False)
    return np.sort(np.concatenate([pos, neg, train[labels[train] < 0]]))


def _info(ctx: Context, name: str) -> DatasetInfo:
    i = ctx.dataset.info
    return DatasetInfo(name, i.root, i.class_names, i.mask_labels, i.volumetric)


def train_classifier(ctx: Context, model: torch.nn.Module | None, samples: list[Sample], val: MedDataset | None,
                     seed: int, *names: int | str) -> torch.nn.Module:
    """Fit (or continue fitting) the classifier on ``samples``; early stopping on ``val``."""
    cfg = ctx.config.classifier_config.replace(seed=seed_for(seed, *names, "fit"))
    model = model if model is not None else ctx.new_classifier(seed, *names)
    fit(model, MedDataset.from_samples(samples, _info(ctx, "labeled")), val, cfg, progress=ctx.progress)
    return model.cpu()


def train_head(ctx: Context, model: torch.nn.Module | None, feats: np.ndarray, labels: np.ndarray,
               val_idx: np.ndarray | None, seed: int, *names: int | str) -> torch.nn.Module:
    """The frozen-trunk recipe: fit (or continue fitting) the classifier's head on trunk features ``[N, F]``;
    early stopping on the validation images (dataset positions ``val_idx``)."""
    cfg = ctx.config.classifier_config.replace(seed=seed_for(seed, *names, "fit"))
    model = model if model is not None else ctx.new_classifier(seed, *names)
    all_feats = ctx.trunk_features(seed)
    val = (all_feats[val_idx], ctx.dataset.labels[val_idx]) if val_idx is not None else (None, None)
    fit_head(model, feats, labels, *val, cfg, reference=all_feats[ctx.splits[seed].train])
    return model


def train_segmenter(ctx: Context, samples: list[Sample], val: MedDataset | None, seed: int,
                    *names: int | str) -> torch.nn.Module:
    """A segmenter trained from scratch on the samples that have masks (real and synthetic); early stopping on
    the validation samples with masks, if any."""
    cfg = ctx.config.segmenter_config.replace(seed=seed_for(seed, *names, "fit"))
    model = ctx.new_segmenter(seed, *names)
    val = val.subset(np.nonzero(val.has_mask)[0]) if val is not None else None
    fit(model, MedDataset.from_samples([s for s in samples if s.mask is not None], _info(ctx, "labeled")),
        val if val is not None and len(val) else None, cfg, progress=ctx.progress)
    return model.cpu()


def initial_set(ctx: Context, seed: int, strategy: QueryStrategy | None = None) -> list[int]:
    """The labeled set before round 0 (pool positions), drawn with the seed (``initial`` in the config).

    ``per_class`` draws ``initial_per_class`` per class with the stored labels (as the paper's protocol does);
    ``random`` draws ``initial_size`` at random; ``label_free`` lets ``initial_strategy`` choose ``initial_size``
    on the initial trunk's features of the pool, or draws at random when the track's ``strategy`` needs no model
    input. The oracle is still asked (and charged) for every one of them.
    """
    cfg = ctx.config
    rng = stream(seed, "initial set")
    labels = ctx.pool(seed).labels
    if cfg.initial == "per_class":
        chosen = []
        for c in range(ctx.num_classes):
            idx = np.nonzero(labels == c)[0]
            chosen += sorted(int(i) for i in rng.choice(idx, cfg.initial_per_class, replace=False))
        return chosen
    if cfg.initial == "random" or strategy is None or not strategy.needs:
        return sorted(int(i) for i in rng.choice(len(labels), cfg.initial_size, replace=False))
    emb = (ctx.trunk_features(seed)[ctx.splits[seed].train] if ctx.frozen
           else features(ctx.new_classifier(seed), ctx.pool(seed)))
    inputs = {"embeddings": emb, "labeled_embeddings": emb[:0], "labeled_labels": np.zeros(0, np.int64),
              "index": np.arange(len(emb))}
    chosen, _ = build_strategy(cfg.initial_strategy).select(inputs, cfg.initial_size, rng)
    return sorted(int(i) for i in chosen)


def variant_samples(sampler: Any, source: Sample, mask: np.ndarray, n: int, rng: np.random.Generator,
                    round_idx: int) -> list[Sample]:
    """Up to ``n`` synthetic variants of pool sample ``source`` with lung ``mask [H, W]`` as samples of round
    ``round_idx`` (ids ``<source>~r<round>v<index>``, the source and the perturbations in ``meta``)."""
    return [Sample(torch.from_numpy(v.image), torch.from_numpy(v.mask.astype(np.int64)), None, source.case_id,
                   f"{source.sample_id}~r{round_idx}v{v_idx:03d}", "synthetic",
                   meta={"source_sample": source.sample_id, "ops": v.ops})
            for v_idx, v in enumerate(sampler.variants(source.image.numpy(), np.asarray(mask).astype(np.int64), n,
                                                       rng))]


class VariantRenderer:
    """A source's variants in round ``round_idx`` from its own random stream, so any process renders the same:
    picklable (it travels to Ray's workers, which load the generator once), or given the ``sampler`` in hand."""

    def __init__(self, generator: str, per_image: int, seed: int, round_idx: int, sampler: Any = None):
        self.generator, self.per_image, self.seed, self.round_idx = generator, per_image, seed, round_idx
        self._sampler = sampler

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sampler": None}  # each process loads the generator from its path

    def __call__(self, source: Sample, mask: np.ndarray) -> list[Sample]:
        if self._sampler is None:
            from medloop.synth.generator import MaskConditionedSampler

            self._sampler = MaskConditionedSampler.load(self.generator)
        rng = stream(self.seed, "round", self.round_idx, "variants", source.sample_id)
        return variant_samples(self._sampler, source, mask, self.per_image, rng, self.round_idx)


@dataclasses.dataclass
class Models:
    """Method 1's models after a round: the classifier, and the segmenter last trained (``seg_round``)."""

    classifier: torch.nn.Module | None = None
    segmenter: torch.nn.Module | None = None
    seg_round: int | None = None
    stages: list[float] = dataclasses.field(default_factory=list)  # record_at stages reached this round


class Mahapatra(Method):
    """Classifier (+ segmenter) of one seed; candidates from the pool or synthetic variants."""

    provides = ExperimentConfig.PROVIDES

    def __init__(self, ctx: Context, seed: int, strategy: QueryStrategy, sampler_for=None):
        self.ctx, self.seed, self.cfg = ctx, seed, ctx.config
        self.pool, self.val, self.test = ctx.pool(seed), ctx.val(seed), ctx.test(seed)
        self.pos = {s: i for i, s in enumerate(self.pool.sample_ids)}
        self.budget = ctx.budget_count(len(self.pool))
        self.needs_masks = "synthetic" in strategy.needs
        self.sampler_for = sampler_for
        self.device = resolve_device(self.cfg.device)
        self.strategy = strategy
        self.split = ctx.splits[seed]
        self._initial: list[int] | None = None
        self._engine_dir: Path | None = None  # engine: ray
        self._synthetic_feats: dict[str, np.ndarray] = {}  # frozen recipe: variant id -> trunk features

    def _feats(self, pool_positions) -> np.ndarray:
        """Trunk features of pool images (frozen recipe)."""
        return self.ctx.trunk_features(self.seed)[self.split.train[np.asarray(pool_positions, dtype=np.int64)]]

    def _sample_feats(self, samples: list[Sample]) -> np.ndarray:
        """Trunk features of synthetic samples: kept from when they were rendered (computed once more after a
        resume)."""
        missing = [s for s in samples if s.sample_id not in self._synthetic_feats]
        if missing:
            trunk = self.ctx.new_classifier(self.seed).to(self.device)
            for s, f in zip(missing, features(trunk, MedDataset.from_samples(missing, _info(self.ctx, "synthetic")))):
                self._synthetic_feats[s.sample_id] = f
        return np.stack([self._synthetic_feats[s.sample_id] for s in samples]) if samples else \
            np.zeros((0, self.ctx.trunk_features(self.seed).shape[1]), np.float32)

    def oracle(self) -> Oracle:
        if self.ctx.oracle_factory:
            return self.ctx.oracle_factory(self.pool)
        return GroundTruthOracle.from_dataset(self.pool, with_masks=True)

    def _initial_positions(self) -> list[int]:
        if self._initial is None:  # a label-free start clusters the pool: choose once per track
            self._initial = initial_set(self.ctx, self.seed, self.strategy)
        return self._initial

    def initial_ids(self) -> list[str]:
        return [self.pool.sample_ids[i] for i in self._initial_positions()]

    def restore(self, state: RunState) -> Models | None:
        if not state.records:
            return None
        saved = state.load_model(state.records[-1]["round"])
        models = Models(self.ctx.new_classifier(self.seed), seg_round=saved.get("seg_round"))
        models.classifier.load_state_dict(saved["classifier"])
        if saved.get("segmenter") is not None:
            models.segmenter = self.ctx.new_segmenter(self.seed)
            models.segmenter.load_state_dict(saved["segmenter"])
        return models

    def _labeled_samples(self, state: RunState, copies: int) -> list[Sample]:
        """Real labeled samples with the oracle's label and mask, each repeated ``copies`` times."""
        out = []
        for sid in state.labeled:
            a = state.answers[sid]
            mask = torch.from_numpy(np.asarray(a.mask)).long() if a.mask is not None else None
            out += [dataclasses.replace(self.pool[self.pos[sid]], label=a.label, mask=mask)] * copies
        return out

    def train(self, state: RunState, model: Models | None, round_idx: int) -> Models:
        prev = model or Models()
        fraction = len(state.labeled) / len(self.pool)
        start = prev.classifier if self.cfg.retrain == "continue" else None
        names = ("round", round_idx, "classifier")
        if self.ctx.frozen:
            labels = [state.answers[s].label for s in state.labeled] + [s.label for s in state.synthetic]
            feats = np.concatenate([self._feats([self.pos[s] for s in state.labeled]),
                                    self._sample_feats(state.synthetic)])
            labels = np.array([-1 if y is None else int(y) for y in labels], dtype=np.int64)
            classifier = train_head(self.ctx, start, feats, labels, self.split.val, self.seed, *names)
        else:
            samples = self._labeled_samples(state, self.cfg.augment_copies) + state.synthetic
            classifier = train_classifier(self.ctx, start, samples, self.val, self.seed, *names)
        done = {f for r in state.records for f in r.get("stages", [])}
        stages = [f for f in self.cfg.record_at if fraction + 1e-9 >= f and f not in done]
        models = Models(classifier, prev.segmenter, prev.seg_round, stages)
        if self.cfg.segmenter is not None and (stages or (round_idx == 0 and self.needs_masks)):
            seg_samples = self._labeled_samples(state, 1) + state.synthetic
            models.segmenter = train_segmenter(self.ctx, seg_samples, self.val, self.seed, "round", round_idx, "segmenter")
            models.seg_round = round_idx
        return models

    def evaluate(self, state: RunState, model: Models, round_idx: int) -> dict:
        if self.ctx.frozen:
            val_m, _ = _classify_features(self.ctx, model.classifier, self.seed, self.split.val)
            test_m, test_probs = _classify_features(self.ctx, model.classifier, self.seed, self.split.test)
        else:
            val_m = evaluate(model.classifier, self.val, "classify", device=self.device)
            test_m, test_probs = _classify(model.classifier, self.test, self.device)
        seg = None
        if model.seg_round == round_idx:
            seg = evaluate(model.segmenter, self.test, "segment", device=self.device)
            shown = self.test.subset([i for i in range(len(self.test)) if self.test.has_mask[i]][:4])
            save_npz(state.folder / f"overlay_round_{round_idx:03d}.npz",
                     pred=predict(model.segmenter, shown)["pred"].numpy().astype(np.uint8),
                     image=np.stack([s.image[0].numpy() for s in shown]),
                     truth=np.stack([s.mask.numpy() for s in shown]).astype(np.uint8))
        pixels = sum(state.answers[s].pixels for s in state.labeled)
        return {"n_labeled": len(state.labeled), "fraction": len(state.labeled) / len(self.pool),
                "n_synthetic": len(state.synthetic),
                "cost": {"images": len(state.labeled), "pixels": pixels,
                         "pixel_fraction": pixels / self.ctx.pool_mask_pixels(self.seed)},
                "val": {**plain(val_m), "auc_or_acc": val_m["auc"] if np.isfinite(val_m["auc"]) else val_m["accuracy"]},
                "test": plain(test_m), "test_probs": test_probs, "seg": plain(seg) if seg is not None else None,
                "stages": model.stages}

    def stop(self, state: RunState, round_idx: int, record: dict) -> str | None:
        if len(state.labeled) >= self.budget:
            return "budget"
        if round_idx >= self.cfg.max_rounds:
            return "max_rounds"
        scores = [r["val"]["auc_or_acc"] for r in state.records] + [record["val"]["auc_or_acc"]]
        stale = len(scores) - 1 - int(np.argmax(scores))  # rounds since the best (the first best on ties)
        if self.cfg.round_patience and stale >= self.cfg.round_patience:
            return f"no validation improvement for {self.cfg.round_patience} rounds"
        if len(state.labeled) >= len(self.pool):
            return "pool exhausted"
        return None

    def query_size(self, state: RunState, round_idx: int) -> QuerySize:
        per_class = self.cfg.query_per_class
        return QuerySize(per_class * self.ctx.num_classes, self.budget - len(state.labeled), per_class)

    @staticmethod
    def _answered(state: RunState) -> dict[str, int]:
        return {s: int(state.answers[s].label) if state.answers[s].label is not None else -1 for s in state.labeled}

    def candidates(self, strategy: QueryStrategy, state: RunState, model: Models, round_idx: int,
                   rng: np.random.Generator) -> Candidates:
        self._engine_dir = state.folder / "engine"  # engine: ray scores the round's model there
        labeled = set(state.labeled)
        unlabeled = np.array([i for i, s in enumerate(self.pool.sample_ids) if s not in labeled], dtype=np.int64)
        if "synthetic" not in strategy.needs:
            return Candidates(self.pool.subset(unlabeled), [self.pool.sample_ids[i] for i in unlabeled],
                              labeled=self._answered(state),
                              features=self._feats(unlabeled) if self.ctx.frozen else None)
        # variants of (a sample of) the unlabeled images, masks from the current segmenter
        sampler = self.sampler_for(self.seed, self._initial_positions())
        n_src = len(unlabeled) if strategy.candidates == 0 else min(strategy.candidates, len(unlabeled))
        sources = np.sort(rng.choice(unlabeled, n_src, replace=False))
        masks = predict(model.segmenter, self.pool.subset(sources))["pred"].numpy() > 0
        if self.cfg.engine == "ray":
            return self._engine_candidates(strategy, state, model, round_idx, sampler, sources, masks)
        variants: list[Sample] = []
        with make_progress(transient=not self.ctx.progress) as bar:
            task = bar.add_task("generating candidates", total=n_src * strategy.per_image, visible=self.ctx.progress)
            for j, pos in enumerate(sources):
                variants += variant_samples(sampler, self.pool[int(pos)], masks[j], strategy.per_image, rng, round_idx)
                bar.update(task, advance=strategy.per_image)
        return Candidates(MedDataset.from_samples(variants, _info(self.ctx, "candidates")),
                          [v.meta["source_sample"] for v in variants], join=True, labeled=self._answered(state),
                          features=self._sample_feats(variants) if self.ctx.frozen else None)

    def _model_build(self) -> tuple[str, dict[str, Any]]:
        """The classifier's model name and parameters, as a checkpoint records them."""
        cfg = self.ctx.config.classifier_config
        return cfg.model, {"in_channels": self.ctx.in_channels, "num_classes": self.ctx.num_classes,
                           **cfg.model_params}

    def _engine_candidates(self, strategy: QueryStrategy, state: RunState, model: Models, round_idx: int,
                           sampler: Any, sources: np.ndarray, masks: np.ndarray) -> Candidates:
        """Synthetic candidates with ``engine: ray``: each source's variants are rendered and MC-scored on the
        workers (a random stream per source, dropout seeded per variant); only their scores come back. A variant
        the round keeps (or shows in its gallery) is rendered again here from the same stream."""
        from medloop.engine.rounds import score_model_derived
        from medloop.engine.pool import model_version

        generator = self._engine_dir / "generators" / f"seed{self.seed}.pt"
        sampler.save(generator)  # the sampler in hand, also when a file of an earlier one is there
        render = VariantRenderer(str(generator), strategy.per_image, self.seed, round_idx)
        items = [(self.pool.entry_of(int(p)), self.pool.sample_ids[int(p)], masks[j]) for j, p in enumerate(sources)]
        drawn = hashlib.sha256()  # which sources, with which masks: a redo that draws others is another job
        for _, sid, mask in items:
            drawn.update(sid.encode() + b"\0" + np.packbits(mask).tobytes())
        key = {"generator": model_version(generator), "per_image": strategy.per_image, "seed": self.seed,
               "round": round_idx, "sources": drawn.hexdigest()[:16]}
        cols = score_model_derived(model.classifier, *self._model_build(), self.pool.config, items, render, key,
                                   self._engine_dir, f"round_{round_idx:03d}", n_mc_samples=self.cfg.n_mc_samples,
                                   seed=seed_for(self.seed, "round", round_idx, "mc"),
                                   address=self.cfg.engine_address, progress=self.ctx.progress)
        group = {sid: j for j, (_, sid, _) in enumerate(items)}
        order = sorted((i for i, src in enumerate(cols["source_sample"]) if src in group),
                       key=lambda i: (group[cols["source_sample"][i]], cols["sample_id"][i]))
        scores = {k: v[order] for k, v in cols.items() if k not in ("source_sample", "entry_id", "case_id", "embedding")}
        ids = list(scores.pop("sample_id"))
        here = VariantRenderer(str(generator), strategy.per_image, self.seed, round_idx, sampler=sampler)
        cases = self.pool.case_ids
        dataset = MedDataset.derived(
            _info(self.ctx, "candidates"), [(sid, cases[int(p)]) for (_, sid, _), p in zip(items, sources)],
            [(group[cols["source_sample"][i]], sid) for i, sid in zip(order, ids)],
            lambda j: here(self.pool[int(sources[j])], masks[j]))
        return Candidates(dataset, [cols["source_sample"][i] for i in order], join=True,
                          labeled=self._answered(state), scores=scores)

    def inputs(self, needs: frozenset[str], model: Models, candidates: Candidates, round_idx: int) -> dict[str, np.ndarray]:
        mc_seed = seed_for(self.seed, "round", round_idx, "mc")
        if candidates.scores is not None:  # scored where they were made
            return {**candidates.scores, "index": np.arange(len(candidates))}
        if self.cfg.engine == "ray" and needs & {"mc", "embeddings"}:
            return self._engine_inputs(needs, model, candidates, round_idx, mc_seed)
        columns: dict[str, np.ndarray] = {}
        if "mc" in needs and candidates.features is not None:
            columns.update(score_features(FeatureHead(model.classifier), candidates.features,
                                          n_mc_samples=self.cfg.n_mc_samples, seed=mc_seed))
        elif "mc" in needs:
            columns.update(score_pool(model.classifier, candidates.dataset, n_mc_samples=self.cfg.n_mc_samples,
                                      seed=mc_seed, device=self.device, progress=self.ctx.progress).columns)
        if "embeddings" in needs:
            labeled = [self.pos[s] for s in candidates.labeled]
            if candidates.features is not None:
                cand, lab = candidates.features, self._feats(labeled)
            else:
                cand = features(model.classifier, candidates.dataset)
                lab = features(model.classifier, self.pool.subset(labeled))
            columns.update(self._embeddings(model, candidates, cand, lab))
        columns["index"] = np.arange(len(candidates))
        return columns

    @staticmethod
    def _embeddings(model: Models, candidates: Candidates, cand: np.ndarray, lab: np.ndarray) -> dict[str, np.ndarray]:
        """What the head sees: the trunk's features standardised by its buffers (the identity unless the head was
        trained on a frozen trunk's features), of the candidates and of the labeled images, with their labels."""
        head = model.classifier.head
        shift, scale = head.feat_shift.cpu().numpy(), head.feat_scale.cpu().numpy()
        return {"embeddings": (cand - shift) * scale, "labeled_embeddings": (lab - shift) * scale,
                "labeled_labels": np.array(list(candidates.labeled.values()), dtype=np.int64)}

    def _engine_inputs(self, needs: frozenset[str], model: Models, candidates: Candidates, round_idx: int,
                       mc_seed: int) -> dict[str, np.ndarray]:
        """``inputs`` with the pool scored on Ray (``engine: ray``): the whole training pool (the labeled images'
        embeddings are needed too) is MC-scored once by the round's classifier, with per-sample dropout seeds."""
        from medloop.engine.rounds import score_model

        entries = list({e.entry_id: e for e in (self.pool.entry_of(i) for i in range(len(self.pool)))}.values())
        cols = score_model(model.classifier, *self._model_build(), self.pool.config, entries, self._engine_dir,
                           f"round_{round_idx:03d}", n_mc_samples=self.cfg.n_mc_samples, seed=mc_seed,
                           address=self.cfg.engine_address, progress=self.ctx.progress)
        row = {sid: i for i, sid in enumerate(cols.pop("sample_id"))}
        try:
            cand = np.array([row[s] for s in candidates.dataset.sample_ids], dtype=np.int64)
            lab = np.array([row[s] for s in candidates.labeled], dtype=np.int64)
        except KeyError as err:
            raise DataError(f"pool sample {err} has no scores in the engine's output", self._engine_dir,
                            "changed") from None
        embedding = cols.pop("embedding")
        columns = {k: v[cand] for k, v in cols.items() if k not in ("case_id", "entry_id")} if "mc" in needs else {}
        if "embeddings" in needs:
            columns.update(self._embeddings(model, candidates, embedding[cand], embedding[lab]))
        columns["index"] = np.arange(len(candidates))
        return columns

    def proposals(self, model: Models, sample_ids: list[str]) -> dict[str, Proposal]:
        """For an annotator: the classifier's MC-mean class probabilities and, once a segmenter is trained, its
        MC-mean mask with the per-pixel predictive entropy (divided by its maximum, log K) as uncertainty."""
        ds = self.pool.subset([self.pos[s] for s in sample_ids])
        mc = dict(n_mc_samples=self.cfg.n_mc_samples, device=self.device, progress=False)
        cols = score_pool(model.classifier, ds, seed=seed_for(self.seed, "proposals", "classifier"), **mc).columns
        probs = np.stack([cols[f"prob_{c}"] for c in range(self.ctx.num_classes)], 1)  # [N, K]
        masks: list[np.ndarray | None] = [None] * len(ds)
        maps: list[np.ndarray | None] = [None] * len(ds)

        def keep(idx: list[int], umaps: dict[str, torch.Tensor], mean_probs: torch.Tensor) -> None:
            top = float(np.log(mean_probs.shape[1]))
            for j, i in enumerate(idx):
                masks[i] = mean_probs[j].argmax(0).numpy()
                maps[i] = (umaps["entropy"][j] / top).clamp(0, 1).numpy()

        if model.segmenter is not None:
            score_pool(model.segmenter, ds, seed=seed_for(self.seed, "proposals", "segmenter"), reductions=("mean",),
                       on_maps=keep, **mc)
        return {s: Proposal(masks[j], probs[j], maps[j]) for j, s in enumerate(sample_ids)}

    def after_query(self, state: RunState, round_idx: int, candidates: Candidates, scores: np.ndarray) -> None:
        if not candidates.join:
            return
        order = np.argsort(-scores, kind="stable")
        top, bottom = order[:4], order[::-1][:4]
        ds = candidates.dataset
        save_npz(state.folder / f"gallery_round_{round_idx:03d}.npz",
                 top_images=np.stack([ds[int(i)].image[0].numpy() for i in top]), top_scores=scores[top],
                 bottom_images=np.stack([ds[int(i)].image[0].numpy() for i in bottom]), bottom_scores=scores[bottom],
                 top_ids=np.array([ds.sample_ids[int(i)] for i in top]),
                 bottom_ids=np.array([ds.sample_ids[int(i)] for i in bottom]))

    def save(self, state: RunState, model: Models, round_idx: int) -> None:
        state.save_model(round_idx, {"classifier": model.classifier.state_dict(), "seg_round": model.seg_round,
                                     "segmenter": model.segmenter.state_dict() if model.segmenter is not None else None})


# ------------------------------------------------------------------------------------------------ test metrics


def _classify(model: torch.nn.Module, test: MedDataset, device: Any = "cpu") -> tuple[dict, list]:
    """Test metrics and the per-image probabilities they come from (one pass; images with a label, in split
    order), the latter as stored for bootstrap intervals."""
    test = trainable_subset(test, "classify")
    probs = predict(model, test, device=device)["probs"].numpy()  # [N, K]
    return classification_metrics(probs, test.labels), stored_probs(probs)


def _classify_features(ctx: Context, model: torch.nn.Module, seed: int, positions: np.ndarray) -> tuple[dict, list]:
    """``_classify`` for the frozen-trunk recipe: the head on the cached features of dataset ``positions``."""
    positions = np.asarray(positions)
    positions = positions[ctx.dataset.labels[positions] >= 0]
    probs = predict_head(model, ctx.trunk_features(seed)[positions])
    return classification_metrics(probs, ctx.dataset.labels[positions]), stored_probs(probs)
