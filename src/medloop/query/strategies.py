"""Query strategies: small registered classes that turn candidate inputs into a selection.

A strategy declares the inputs it needs in ``needs`` and the loop computes only those:

- ``mc``: MC-dropout uncertainty of the current model per candidate (``entropy``, ``margin``, ``bald``,
  ``combined``, ...; for a classifier also ``pred``, the predicted class) (``medloop.uncertainty``);
- ``discriminator``: the pix2pix discriminator's implausibility per slice (Ravanbakhsh et al.);
- ``foreground``: the fraction of each candidate slice the current segmentation model labels as a structure;
- ``embeddings``: trunk features of the candidates and of the labeled set, with the labeled answers
  (``medloop.query.diversity``: typicality, coverage, k-center and BADGE strategies);
- ``synthetic``: the candidates are synthetic variants of unlabeled images rendered by the mask-conditioned
  cGAN (Mahapatra et al. 2018), ``per_image`` variants of each of ``candidates`` images.

Every input dict also holds ``index`` (candidate positions). A strategy implements ``score`` (higher = query
first); the base class ranks, balances classes (``per_class``) and breaks ties by index. The loop never
checks a strategy's type, and a method refuses a strategy whose needs it cannot provide, before any training.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from medloop.errors import ConfigError
from medloop.registry import Registry
from medloop.uncertainty.measures import MEASURES

__all__ = ["STRATEGIES", "INPUTS", "QueryStrategy", "build_strategy", "select_top"]

STRATEGIES: Registry[type["QueryStrategy"]] = Registry("strategy")

INPUTS = ("mc", "discriminator", "foreground", "synthetic", "embeddings")


def select_top(scores: np.ndarray, k: int, groups: np.ndarray | None = None, per_group: int | None = None) -> np.ndarray:
    """Indices of the ``k`` highest scores (ties: lower index first; NaN last).

    With ``groups`` (e.g. the predicted class) and ``per_group``, take the top ``per_group`` of each group
    first; when a group has fewer candidates, the rest of the ``k`` come from the best remaining overall, so
    the query size does not shrink.
    """
    scores = np.asarray(scores, dtype=np.float64)
    k = min(k, len(scores))
    order = np.lexsort((np.arange(len(scores)), -np.nan_to_num(scores, nan=-np.inf)))
    if groups is None or per_group is None:
        return order[:k]
    chosen: list[int] = []
    for g in np.unique(groups):
        chosen += [int(i) for i in order if groups[i] == g][:per_group]
    taken = set(chosen)
    chosen += [int(i) for i in order if i not in taken][: max(0, k - len(chosen))]
    return np.array(chosen[:k], dtype=np.int64)


class QueryStrategy:
    """Base: ``score(inputs, rng) -> [N]``; ``select`` ranks, per predicted class when ``per_class``.

    Args:
        per_class: select ``per_class_k`` per predicted class (the paper's class-balanced top-k, needs ``pred``
            from the ``mc`` input) instead of the top ``k`` overall.
    """

    needs: frozenset[str] = frozenset({"mc"})
    default_per_class = False

    def __init__(self, per_class: bool | None = None):
        self.per_class = self.default_per_class if per_class is None else bool(per_class)

    @classmethod
    def allowed_params(cls) -> set[str]:
        """The constructor's keyword arguments (what ``params`` in the config may set)."""
        return {n for n in inspect.signature(cls.__init__).parameters if n != "self"}

    def score(self, inputs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} must implement score()")

    def select(self, inputs: dict[str, np.ndarray], k: int, rng: np.random.Generator,
               per_class_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` candidates to query (``per_class_k`` of each predicted class first when ``per_class``).

        Returns (selected indices, the scores of all candidates).
        """
        scores = self.score(inputs, rng)
        if not self.per_class:
            return select_top(scores, k), scores
        if "pred" not in inputs or per_class_k is None:
            raise ConfigError(f"strategy {type(self).__name__} balances predicted classes, which needs a classifier's "
                              "predictions; set params.per_class: false or use it where a classifier is trained")
        return select_top(scores, k, inputs["pred"], per_class_k), scores


class _MeasureStrategy(QueryStrategy):
    measure = "combined"

    def score(self, inputs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        if self.measure not in inputs:
            raise ConfigError(f"the model gives no '{self.measure}' uncertainty (it has {sorted(set(inputs) - {'index'})}); "
                              "choose another measure or strategy")
        return np.asarray(inputs[self.measure], dtype=np.float64)


@STRATEGIES.register("random")
class RandomStrategy(QueryStrategy):
    """Uniformly random queries (the baseline every AL curve is compared with)."""

    needs = frozenset()

    def score(self, inputs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        return rng.random(len(inputs["index"]))


@STRATEGIES.register("entropy")
class EntropyStrategy(_MeasureStrategy):
    """Predictive entropy of the MC-averaged prediction."""

    measure = "entropy"


@STRATEGIES.register("margin")
class MarginStrategy(_MeasureStrategy):
    """Smallest gap between the two most probable classes (scored as 1 - gap)."""

    measure = "margin"


@STRATEGIES.register("bald")
class BaldStrategy(_MeasureStrategy):
    """BALD: mutual information between prediction and weights (Houlsby et al. 2011)."""

    measure = "bald"


@STRATEGIES.register("combined")
class CombinedStrategy(_MeasureStrategy):
    """Kendall & Gal epistemic + aleatoric uncertainty (Mahapatra et al. 2018, Eq. 6)."""

    measure = "combined"


@STRATEGIES.register("class_balanced")
class ClassBalancedStrategy(_MeasureStrategy):
    """Top-k per predicted class of a measure (the paper's selection; ``measure`` defaults to combined)."""

    default_per_class = True

    def __init__(self, measure: str = "combined", per_class: bool | None = None):
        super().__init__(per_class)
        if measure not in MEASURES:
            raise ConfigError(f"The 'measure' parameter of strategy class_balanced must be one of {sorted(MEASURES)}; "
                              f"got {measure!r} instead")
        self.measure = measure


@STRATEGIES.register("generative")
class GenerativeStrategy(ClassBalancedStrategy):
    """Mahapatra et al. 2018: candidates are up to ``per_image`` synthetic variants of each of ``candidates``
    unlabeled images (all of them when 0); every variant is scored (``measure``, default combined); the top
    ``query_per_class`` per predicted class join the training set with their source's label, which costs one
    oracle query per distinct source."""

    needs = frozenset({"mc", "synthetic"})

    def __init__(self, measure: str = "combined", per_image: int = 20, candidates: int = 40,
                 per_class: bool | None = None):
        super().__init__(measure, per_class)
        if per_image < 1 or candidates < 0:
            raise ConfigError(f"strategy generative needs per_image >= 1 and candidates >= 0; got {per_image}, {candidates}")
        self.per_image, self.candidates = int(per_image), int(candidates)


@STRATEGIES.register("discriminator")
class DiscriminatorStrategy(QueryStrategy):
    """Ravanbakhsh et al.: the slices whose (image, predicted label map) the pix2pix discriminator finds least
    plausible go to the expert."""

    needs = frozenset({"discriminator"})

    def score(self, inputs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        return np.asarray(inputs["discriminator"], dtype=np.float64)


@STRATEGIES.register("foreground_random")
class ForegroundRandomStrategy(QueryStrategy):
    """Uniformly random among the slices the current model says contain a structure (more than ``min_fraction``
    of the slice predicted as foreground; no ground truth used); the other slices, in random order, only when too
    few do. The fair random baseline of segmentation active learning (nnActive, 2025: few methods beat it)."""

    needs = frozenset({"foreground"})

    def __init__(self, min_fraction: float = 0.0):
        super().__init__()
        if not 0 <= min_fraction < 1:
            raise ConfigError(f"The 'min_fraction' parameter of strategy foreground_random must be in [0, 1); "
                              f"got {min_fraction}")
        self.min_fraction = float(min_fraction)

    def score(self, inputs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
        draw = rng.random(len(inputs["index"]))  # in [0, 1): the slices with a structure all rank first
        return draw + (np.asarray(inputs["foreground"], dtype=np.float64) > self.min_fraction)


def build_strategy(name: str, params: dict[str, Any] | None = None) -> QueryStrategy:
    """Build a registered strategy; unknown names and parameters are ConfigErrors naming the allowed values."""
    cls = STRATEGIES.get(name)
    params = dict(params or {})
    unknown = set(params) - cls.allowed_params()
    if unknown:
        raise ConfigError(f"strategy '{name}' has no parameter(s) {sorted(unknown)}; allowed: {sorted(cls.allowed_params())}")
    try:
        strategy = cls(**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for strategy '{name}': {exc}") from None
    if not strategy.needs <= set(INPUTS):
        raise ConfigError(f"strategy '{name}' needs unknown input(s) {sorted(strategy.needs - set(INPUTS))}; "
                          f"inputs are {', '.join(INPUTS)}")
    return strategy
