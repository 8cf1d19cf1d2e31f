"""The experiment config of the active-learning engine (``experiments/*.yaml``), validated before any training."""

from __future__ import annotations

import dataclasses
import typing

from medloop.config import Config, DataConfig, TrainConfig
from medloop.errors import ConfigError

__all__ = ["ExperimentConfig"]


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(Config):
    """One active-learning experiment: data, models, strategies, protocol, baselines.

    Attributes:
        method: ``mahapatra2018`` (generative AL; ``ravanbakhsh2018`` files use ``CollaborativeConfig``).
        name: experiment name (report title).
        data: ``DataConfig`` fields (source, size, layout, options...).
        seeds: one run of every strategy per seed (split, initial set, training, MC masks all follow it).
        val_fraction, test_fraction: split by case; validation decides stopping, test is reported.
        classifier: ``TrainConfig`` fields of the classifier (task classify) trained every round.
        segmenter: ``TrainConfig`` fields of the UNet trained at recorded stages (``null``: no segmentation).
        strategies: list of ``{name, params, label}``; names from the strategy registry.
        generator: ``CGANConfig`` fields for the generative strategy.
        initial_per_class: labeled images per class at the start (the paper: 16).
        query_per_class: images queried per class and round (the paper: 16); strategies that are not
            class-balanced query ``query_per_class * num_classes`` per round.
        augment_copies: each real labeled image appears this many times per epoch, each copy randomly
            rotated / translated (the paper augments x200; fewer on a CPU).
        n_mc_samples: MC-dropout passes T for scoring.
        record_at: labeled fractions (of the training pool) at which the UNet is trained and the table
            reports; every round is recorded regardless.
        budget: stop when this many images are labeled (a fraction of the training pool when <= 1).
        max_rounds: stop after this many query rounds.
        patience: stop when the validation AUC has not improved for this many rounds (0: never).
        fine_tune: ``continue`` (each round starts from the last round's weights) or ``restart``.
        fsl_folds: folds of the fully supervised cross-validation baseline (0: skip).
        random_subset_fraction, random_subset_draws: fully supervised training on random subsets.
        savings_tolerance: AL "reaches FSL" when its test AUC is within this of FSL's.
        oracle_timeout: seconds to wait for a (human) oracle per round (``null``: forever).
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    method: typing.Literal["mahapatra2018"] = "mahapatra2018"
    name: str = "experiment"
    data: dict = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    classifier: dict = dataclasses.field(default_factory=dict)
    segmenter: dict | None = dataclasses.field(default_factory=dict)
    strategies: tuple[dict, ...] = ({"name": "generative"}, {"name": "class_balanced"}, {"name": "random"})
    generator: dict = dataclasses.field(default_factory=dict)
    initial_per_class: int = 16
    query_per_class: int = 16
    augment_copies: int = 200
    n_mc_samples: int = 20
    record_at: tuple[float, ...] = (0.10, 0.15, 0.25, 0.30, 0.35)
    budget: float = 0.5
    max_rounds: int = 20
    patience: int = 3
    fine_tune: typing.Literal["continue", "restart"] = "continue"
    fsl_folds: int = 5
    random_subset_fraction: float = 0.35
    random_subset_draws: int = 10
    savings_tolerance: float = 0.02
    oracle_timeout: float | None = None
    device: str = "auto"

    def validate(self) -> None:
        from medloop.query import build_strategy
        from medloop.training.cgan import CGANConfig

        DataConfig.from_dict(self.data, where="data")
        cls = TrainConfig.from_dict({"task": "classify", **self.classifier}, where="classifier")
        if cls.task != "classify":
            raise ConfigError(f"The 'classifier.task' parameter must be 'classify'; got {cls.task!r}")
        if self.segmenter is not None:
            seg = TrainConfig.from_dict({"task": "segment", "model": "unet", **self.segmenter}, where="segmenter")
            if seg.task != "segment":
                raise ConfigError(f"The 'segmenter.task' parameter must be 'segment'; got {seg.task!r}")
        CGANConfig.from_dict(self.generator, where="generator")
        if not self.seeds:
            raise ConfigError("The 'seeds' parameter must list at least one seed")
        if not self.strategies:
            raise ConfigError("The 'strategies' parameter must list at least one strategy, e.g. [{name: random}]")
        labels = []
        for spec in self.strategies:
            if not isinstance(spec, dict) or "name" not in spec:
                raise ConfigError(f"each entry of 'strategies' must be a mapping with a 'name'; got {spec!r}")
            extra = set(spec) - {"name", "params", "label"}
            if extra:
                raise ConfigError(f"strategy entry {spec!r} has unknown key(s) {sorted(extra)}; allowed: name, params, label")
            strategy = build_strategy(spec["name"], spec.get("params"))
            if strategy.generative and self.segmenter is None:
                raise ConfigError("the generative strategy needs a segmenter (masks of unlabeled images come from "
                                  "its predictions); set 'segmenter' or drop the strategy")
            labels.append(spec.get("label", spec["name"]))
        if len(set(labels)) != len(labels):
            raise ConfigError(f"strategy labels must be unique; got {labels}: give each a 'label'")
        for name in ("initial_per_class", "query_per_class", "augment_copies", "n_mc_samples", "max_rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The '{name}' parameter of ExperimentConfig must be >= 1; got {getattr(self, name)}")
        for name in ("patience", "fsl_folds", "random_subset_draws"):
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

    def strategy_label(self, spec: dict) -> str:
        return spec.get("label", spec["name"])
