"""The config of generative active learning (``experiments/mahapatra2018.yaml``), validated before any training."""

from __future__ import annotations

import dataclasses
import typing

from typing import Any

from medloop.config import Config, DataConfig, TrainConfig
from medloop.errors import ConfigError
from medloop.methods.base import check_reads_per_image_key, strategy_specs

__all__ = ["ExperimentConfig", "RENAMED"]

# Keys renamed because each had two meanings: the old name is refused with the new one in the message.
RENAMED = {"fine_tune": "retrain", "patience": "round_patience"}
# Keys removed, with the reason given when an old file still sets them.
REMOVED = {"savings_tolerance": "a saving is now judged by bootstrap intervals against random and against FSL "
                                "(the report's 'Annotation savings'), not by a fixed tolerance"}


def _refuse_old_keys(cls: type, data: dict | None, where: str) -> None:
    """Refuse a renamed or removed experiment key (one the config class no longer has) with what to do instead."""
    fields = {f.name for f in dataclasses.fields(cls)}
    for old in sorted(set(data or {}) & (set(RENAMED) | set(REMOVED)) - fields):
        prefix = f"{where}: " if where else ""
        if old in RENAMED:
            raise ConfigError(f"{prefix}the experiment key '{old}' is now '{RENAMED[old]}' (the classifier's own "
                              f"'{old}' keeps its name); rename it")
        raise ConfigError(f"{prefix}the experiment key '{old}' was removed: {REMOVED[old]}; delete it")




@dataclasses.dataclass(frozen=True)
class ExperimentConfig(Config):
    """Generative active learning (Mahapatra et al. 2018): data, models, strategies, protocol, baselines.

    Attributes:
        method: ``mahapatra2018`` (``ravanbakhsh2018`` files use ``CollaborativeConfig``).
        name: experiment name (report title).
        data: ``DataConfig`` fields (source, size, layout, options...).
        seeds: one run of every strategy per seed (split, initial set, training, MC masks all follow it).
        val_fraction, test_fraction: split by case; validation decides stopping, test is reported.
        classifier: ``TrainConfig`` fields of the classifier (task classify) trained every round; its
            ``pretrained`` checkpoint initialises every classifier of the run (rounds and baselines): a path (an
            ImageNet torchvision file, or a ``medloop pretrain`` checkpoint), or ``selfsup``: pretrain the trunk
            on each seed's training pool (images only) before round 0 (``medloop.loop.pretraining``).
        selfsup: ``SelfSupConfig`` fields (epochs, batch_size, lr, temperature...) for ``pretrained: selfsup``;
            the seed and device come from the experiment.
        segmenter: ``TrainConfig`` fields of the segmenter (``model``: a registered segmentation network) trained
            at recorded stages (``null``: no segmentation).
        strategies: list of strategy names or ``{name, params, label}``; names from the strategy registry.
        generator: ``CGANConfig`` fields for the generative strategy.
        initial_per_class: labeled images per class at the start (the paper: 16).
        query_per_class: images queried per class and round (the paper: 16); strategies that are not
            class-balanced query ``query_per_class * num_classes`` per round.
        augment_copies: each real labeled image appears this many times per epoch, each copy randomly
            rotated / translated (the paper augments x200; fewer on a CPU).
        n_mc_samples: MC-dropout passes T for scoring.
        record_at: labeled fractions (of the training pool) at which the segmenter is trained and the table
            reports; every round is recorded regardless. Empty: segmentation is not evaluated (no stage, no fully
            supervised segmenter); a segmenter still trains at round 0 where a strategy needs synthetic variants.
        budget: stop when this many images are labeled (a fraction of the training pool when <= 1).
        max_rounds: stop after this many query rounds.
        round_patience: stop when the validation AUC has not improved for this many rounds (0: never). The
            classifier's own ``patience`` counts epochs.
        retrain: ``continue`` (each round's training starts from the last round's weights) or ``restart``
            (from a new initialisation, or the pretrained checkpoint). The classifier's ``fine_tune`` says which
            layers train.
        recipe: how each round's classifier is trained. ``finetune``: the network from its initialisation (or
            the last round's weights), on augmented images (``classifier.fine_tune`` says which layers).
            ``frozen``: the trunk stays as initialised (``classifier.pretrained``, else the seed's random trunk);
            its features of every image are computed once per seed (synthetic variants when rendered) and only
            the head (MC dropout + log-variance) trains on them (``medloop.training.head``): the seed paper's
            last-layer fine-tuning at a small fraction of the cost. Augmentation cannot apply to cached
            features, so ``augment_copies`` must be 1 and ``classifier.augment`` unset; the head trains in one
            process, so ``classifier.workers`` must be 1.
        split_seed: draw the train/val/test split (and the screening pool) once from this seed for every seed
            (``null``: each seed draws its own). Seeds then vary the initial set, the queries and training; the
            test split and a self-supervised trunk (``classifier.pretrained: selfsup``, pretrained with this
            seed) are shared, and the bootstrap intervals resample the test images.
        pool_positive_share: the share of ``positive_class`` images in the training pool, kept by dropping
            images of the other side at random (``null``: the pool as split). Screening populations hold few
            positives (e.g. 0.1); validation and test splits are unchanged.
        positive_class: the class ``pool_positive_share`` counts.
        initial: how the labeled set before round 0 is chosen. ``per_class``: ``initial_per_class`` images of
            each class, drawn with the stored labels (the paper's protocol); ``random``: ``initial_size`` images
            at random, no label used; ``label_free``: ``initial_size`` images chosen without any label, by
            ``initial_strategy`` on the initial trunk's features, or at random for a strategy that needs no
            model input (the random baseline): the cold start.
        initial_size: images in a ``random`` or ``label_free`` initial set.
        initial_strategy: an embeddings-only strategy (``typiclust``, ``probcover``, ``coreset``) for
            ``initial: label_free``.
        fsl_folds: folds of the fully supervised cross-validation baseline (0: skip).
        random_subset_fraction, random_subset_draws: fully supervised training on random subsets.
        oracle_timeout: seconds to wait for a (human) oracle per round (``null``: forever).
        device: ``auto``, ``cpu`` or ``cuda``.
        reads_per_image: different annotators who label each image under ``medloop serve`` (their consensus is
            what the model trains on; ``medloop serve --reads-per-image`` overrides it); ``medloop run`` refuses > 1.
        engine, engine_address: where each round's pool is scored: ``local`` (in process) or ``ray`` (a Ray
            Data job, as ``medloop score --engine ray``, on the cluster at ``engine_address`` or a local one; per-sample
            dropout seeds; ``medloop.engine.rounds``): the pool's images, or the generative strategy's variants,
            rendered and scored on the workers (a random stream per source image). Refused with ``recipe: frozen``
            (a head scored on cached trunk features: nothing to distribute).
    """

    method: typing.Literal["mahapatra2018"] = "mahapatra2018"
    name: str = "experiment"
    data: dict = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    classifier: dict = dataclasses.field(default_factory=dict)
    selfsup: dict = dataclasses.field(default_factory=dict)
    segmenter: dict | None = dataclasses.field(default_factory=dict)
    strategies: tuple[Any, ...] = ({"name": "generative"}, {"name": "class_balanced"}, {"name": "random"})
    generator: dict = dataclasses.field(default_factory=dict)
    initial_per_class: int = 16
    query_per_class: int = 16
    augment_copies: int = 200
    n_mc_samples: int = 20
    record_at: tuple[float, ...] = (0.10, 0.15, 0.25, 0.30, 0.35)
    budget: float = 0.5
    max_rounds: int = 20
    round_patience: int = 3
    retrain: typing.Literal["continue", "restart"] = "continue"
    recipe: typing.Literal["finetune", "frozen"] = "finetune"
    split_seed: int | None = None
    pool_positive_share: float | None = None
    positive_class: int = 1
    initial: typing.Literal["per_class", "random", "label_free"] = "per_class"
    initial_size: int = 10
    initial_strategy: str = "typiclust"
    fsl_folds: int = 5
    random_subset_fraction: float = 0.35
    random_subset_draws: int = 10
    oracle_timeout: float | None = None
    device: str = "auto"
    reads_per_image: int = 1
    engine: str = "local"
    engine_address: str | None = None

    PROVIDES = frozenset({"mc", "synthetic", "embeddings"})  # inputs for strategies (``synthetic``: with a segmenter)

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "") -> "ExperimentConfig":
        _refuse_old_keys(cls, data, where)
        return super().from_dict(data, where)

    def validate(self) -> None:
        from medloop.models import MODEL_TASKS, MODELS
        from medloop.training.cgan import CGANConfig

        DataConfig.from_dict(self.data, where="data")
        check_reads_per_image_key(self.reads_per_image)
        cls = TrainConfig.from_dict({"task": "classify", **self.classifier}, where="classifier")
        if cls.task != "classify":
            raise ConfigError(f"The 'classifier.task' parameter must be 'classify'; got {cls.task!r}")
        self._check_selfsup(cls.pretrained)
        provides = set(self.PROVIDES) - {"synthetic"}
        if self.segmenter is not None:
            seg = TrainConfig.from_dict({"task": "segment", "model": "unet", **self.segmenter}, where="segmenter")
            if seg.task != "segment":
                raise ConfigError(f"The 'segmenter.task' parameter must be 'segment'; got {seg.task!r}")
            MODELS.get(seg.model)  # did-you-mean on a typo
            if MODEL_TASKS.get(seg.model) != "segment":
                raise ConfigError(f"The 'segmenter.model' parameter must be a segmentation network "
                                  f"({', '.join(k for k, v in MODEL_TASKS.items() if v == 'segment')}); got {seg.model!r}")
            if seg.pretrained:
                raise ConfigError("The 'segmenter.pretrained' parameter is not supported: pretrained ImageNet weights "
                                  "exist for the classifiers only; remove it")
            provides.add("synthetic")  # variants need the segmenter's masks of unlabeled images
        CGANConfig.from_dict(self.generator, where="generator")
        if not self.seeds:
            raise ConfigError("The 'seeds' parameter must list at least one seed")
        try:
            strategy_specs(self.strategies, frozenset(provides), self.method)
        except ConfigError as exc:
            if "synthetic" in str(exc) and self.segmenter is None:
                raise ConfigError("the generative strategy needs a segmenter (masks of unlabeled images come from "
                                  "its predictions); set 'segmenter' or drop the strategy") from None
            raise
        self._check_regime()
        self._check_engine()
        for name in ("initial_per_class", "query_per_class", "augment_copies", "n_mc_samples", "max_rounds",
                     "initial_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The '{name}' parameter of ExperimentConfig must be >= 1; got {getattr(self, name)}")
        for name in ("round_patience", "fsl_folds", "random_subset_draws"):
            if getattr(self, name) < 0:
                raise ConfigError(f"The '{name}' parameter of ExperimentConfig must be >= 0; got {getattr(self, name)}")
        if self.fsl_folds == 1:
            raise ConfigError("The 'fsl_folds' parameter must be 0 (skip) or >= 2")
        if self.budget <= 0:
            raise ConfigError(f"The 'budget' parameter must be > 0 (a fraction <= 1 or a count); got {self.budget}")
        if any(not 0 < f <= 1 for f in self.record_at):
            raise ConfigError(f"The 'record_at' parameter must hold fractions in (0, 1]; got {list(self.record_at)}")
        if not 0 < self.random_subset_fraction <= 1:
            raise ConfigError(f"The 'random_subset_fraction' parameter must be in (0, 1]; got {self.random_subset_fraction}")
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise ConfigError(f"The '{name}' parameter must be in (0, 0.5); got {getattr(self, name)}")

    def _check_engine(self) -> None:
        """``engine`` / ``engine_address`` (see the class docstring)."""
        from medloop.engine import check_engine

        check_engine(self.engine, self.engine_address, where="engine")
        if self.engine != "ray":
            return
        if self.recipe == "frozen":
            raise ConfigError("The 'engine' parameter 'ray' cannot apply with recipe: frozen: each round scores a head "
                              "on trunk features computed once, in process, so there is nothing to distribute; set "
                              "engine: local, or recipe: finetune")

    def _check_regime(self) -> None:
        """The recipe, the pool and the initial set (see the class docstring)."""
        if self.recipe == "frozen":
            if self.augment_copies != 1:
                raise ConfigError(f"The 'augment_copies' parameter must be 1 with recipe: frozen (trunk features are "
                                  f"computed once per image, so augmented copies would be identical); got "
                                  f"{self.augment_copies}: set augment_copies: 1 or recipe: finetune")
            if self.classifier.get("augment"):
                raise ConfigError("The 'classifier.augment' parameter cannot apply with recipe: frozen (the head trains "
                                  "on features computed once per image); remove it (classifier.augment: {}) or use "
                                  "recipe: finetune")
            if self.classifier.get("workers", 1) != 1:
                raise ConfigError(f"The 'classifier.workers' parameter must be 1 with recipe: frozen (each round trains "
                                  f"the head on trunk features computed once, in one process); got "
                                  f"{self.classifier['workers']}: set classifier.workers: 1 or recipe: finetune")
            if self.classifier.get("fine_tune", "head") != "head":
                raise ConfigError("The 'classifier.fine_tune' parameter must be 'head' (or unset) with recipe: frozen, "
                                  f"which trains the head only; got {self.classifier['fine_tune']!r}")
        if self.pool_positive_share is not None and not 0 < self.pool_positive_share < 1:
            raise ConfigError(f"The 'pool_positive_share' parameter must be in (0, 1) or null; got {self.pool_positive_share}")
        if self.positive_class < 0:
            raise ConfigError(f"The 'positive_class' parameter must be a class index >= 0; got {self.positive_class}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        unused = {"per_class": ("initial_size", "initial_strategy"), "random": ("initial_per_class", "initial_strategy"),
                  "label_free": ("initial_per_class",)}[self.initial]
        if self.pool_positive_share is None:
            unused += ("positive_class",)
        applies = {"initial_size": "initial: random or label_free", "initial_strategy": "initial: label_free",
                   "initial_per_class": "initial: per_class", "positive_class": "a pool_positive_share"}
        for name in unused:
            if getattr(self, name) != defaults[name]:
                raise ConfigError(f"The '{name}' parameter ({getattr(self, name)!r}) applies only with {applies[name]}, "
                                  f"and this experiment has initial: {self.initial}"
                                  + ("" if self.pool_positive_share is None else f", pool_positive_share: "
                                     f"{self.pool_positive_share}") + f"; remove '{name}' or set {applies[name]}")
        if self.split_seed is not None and self.split_seed < 0:
            raise ConfigError(f"The 'split_seed' parameter must be >= 0 or null; got {self.split_seed}")
        if self.initial == "label_free":
            from medloop.query import build_strategy

            needs = build_strategy(self.initial_strategy).needs
            if needs != frozenset({"embeddings"}):
                raise ConfigError(f"The 'initial_strategy' parameter must name a strategy that needs only embeddings "
                                  f"(typiclust, probcover, coreset): no label exists before round 0; got "
                                  f"{self.initial_strategy!r}, which needs {', '.join(sorted(needs)) or 'nothing'}")

    def _check_selfsup(self, pretrained: str | None) -> None:
        from medloop.training.selfsup import SelfSupConfig

        if self.selfsup and pretrained != "selfsup":
            raise ConfigError("The 'selfsup' parameter is set but classifier.pretrained is "
                              f"{pretrained!r}; set classifier.pretrained: selfsup or remove 'selfsup'")
        for key in ("seed", "device"):
            if key in self.selfsup:
                raise ConfigError(f"The 'selfsup.{key}' parameter is not allowed: the experiment's {key}s apply; "
                                  "remove it")
        SelfSupConfig.from_dict(self.selfsup, where="selfsup")

    @property
    def selfsup_config(self):
        """``SelfSupConfig`` of ``pretrained: selfsup`` (seed and device are set per seed by the loop)."""
        from medloop.training.selfsup import SelfSupConfig

        return SelfSupConfig.from_dict(self.selfsup)

    @property
    def data_config(self) -> DataConfig:
        return DataConfig.from_dict(self.data)

    @property
    def classifier_config(self) -> TrainConfig:
        return TrainConfig.from_dict({"task": "classify", "device": self.device, **self.classifier})

    @property
    def segmenter_config(self) -> TrainConfig | None:
        if self.segmenter is None:
            return None
        return TrainConfig.from_dict({"task": "segment", "model": "unet", "device": self.device, **self.segmenter})

    @property
    def strategy_specs(self) -> list[dict]:
        """The strategies as ``{name, params, label}``."""
        return strategy_specs(self.strategies, self.PROVIDES, self.method)
