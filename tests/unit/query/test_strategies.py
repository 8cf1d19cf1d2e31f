"""Query strategies: rankings on inputs with obvious answers, class balance, the registry contract."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.errors import ConfigError
from medloop.query import STRATEGIES, build_strategy, select_top


def columns(n: int = 10, hot: int = 7) -> dict[str, np.ndarray]:
    """Every measure is low except at index ``hot``; predictions alternate between two classes."""
    cols = {m: np.full(n, 0.1) for m in ("entropy", "margin", "bald", "combined", "epistemic", "aleatoric")}
    for m in cols:
        cols[m][hot] = 0.9
    cols["discriminator"] = cols["entropy"].copy()
    cols["foreground"] = np.where(np.arange(n) % 3 == 0, 0.05, 0.0)  # every third slice shows a structure
    cols["pred"] = np.arange(n) % 2
    cols["prob_1"] = np.linspace(0.2, 0.8, n)
    cols["prob_0"] = 1 - cols["prob_1"]
    cols["index"] = np.arange(n)
    rng = np.random.default_rng(n)
    cols["embeddings"] = rng.normal(size=(n, 5))
    cols["labeled_embeddings"] = rng.normal(size=(3, 5))
    cols["labeled_labels"] = np.array([0, 1, 0])
    return cols


EMBEDDING_KEYS = ("embeddings", "labeled_embeddings", "labeled_labels")


@pytest.mark.parametrize("name", ["entropy", "margin", "bald", "combined", "class_balanced", "generative", "discriminator"])
def test_measure_strategies_pick_the_obviously_uncertain_sample_first(name):
    chosen, scores = build_strategy(name).select(columns(hot=7), 2, np.random.default_rng(0), 1)
    assert 7 in chosen
    assert scores[7] == max(scores)


def test_ranking_follows_the_measure_and_breaks_ties_by_index():
    cols = columns()
    cols["bald"] = np.array([0.5, 0.9, 0.5, 0.1, 0.7, 0.5, 0.0, 0.2, 0.3, 0.4])
    chosen, _ = build_strategy("bald").select(cols, 4, np.random.default_rng(0), 2)
    assert chosen.tolist() == [1, 4, 0, 2]  # 0.9, 0.7, then the 0.5 ties in index order


def test_random_is_seeded_and_needs_no_input():
    s = build_strategy("random")
    assert s.needs == frozenset()
    a, _ = s.select({"index": np.arange(50)}, 6, np.random.default_rng(1), 3)
    b, _ = s.select({"index": np.arange(50)}, 6, np.random.default_rng(1), 3)
    c, _ = s.select({"index": np.arange(50)}, 6, np.random.default_rng(2), 3)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist() and len(set(a.tolist())) == 6


def test_class_balanced_takes_k_per_predicted_class():
    cols = columns(12)
    cols["combined"] = np.linspace(1.0, 0.0, 12)  # class 0 (even indices) would win every slot overall
    cols["pred"] = np.array([0] * 8 + [1] * 4)
    chosen, _ = build_strategy("class_balanced").select(cols, 6, np.random.default_rng(0), 3)
    preds = cols["pred"][chosen]
    assert (preds == 0).sum() == 3 and (preds == 1).sum() == 3
    overall, _ = build_strategy("combined").select(cols, 6, np.random.default_rng(0), 3)
    assert (cols["pred"][overall] == 1).sum() == 0  # without balancing the minority class gets nothing


def test_class_balanced_fills_up_when_a_class_is_short():
    groups = np.array([0, 0, 0, 0, 0, 1])
    chosen = select_top(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1]), 4, groups, 2)
    assert sorted(chosen.tolist()) == [0, 1, 2, 5]  # 2 of class 0, the only class-1 sample, then the next best


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_contract_unique_indices_and_query_size(name):
    cols = columns(30)
    cols["combined"] = np.random.default_rng(0).random(30)
    chosen, scores = build_strategy(name).select(cols, 8, np.random.default_rng(0), 4)
    assert len(chosen) == 8 and len(set(chosen.tolist())) == 8
    assert scores.shape == (30,)
    assert all(0 <= i < 30 for i in chosen)


def test_unknown_strategy_and_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'bald'"):
        build_strategy("balt")
    with pytest.raises(ConfigError, match="per_image"):
        build_strategy("bald", {"per_image": 3})
    with pytest.raises(ConfigError, match="measure"):
        build_strategy("class_balanced", {"measure": "variance"})
    with pytest.raises(ConfigError, match="per_image >= 1"):
        build_strategy("generative", {"per_image": 0})


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_contract_declared_inputs_are_known_and_suffice(name):
    """A strategy scores with only what it declares (plus ``index``; ``pred`` when it balances classes)."""
    from medloop.query import INPUTS

    strategy = build_strategy(name)
    assert strategy.needs <= set(INPUTS)
    full = columns(30)
    given = {"index": full["index"]}
    if "mc" in strategy.needs:
        given.update({k: v for k, v in full.items() if k not in ("discriminator", "index", *EMBEDDING_KEYS)})
    if "discriminator" in strategy.needs:
        given["discriminator"] = full["discriminator"]
    if "foreground" in strategy.needs:
        given["foreground"] = full["foreground"]
    if "embeddings" in strategy.needs:
        given.update({k: full[k] for k in EMBEDDING_KEYS})
    chosen, _ = strategy.select(given, 6, np.random.default_rng(0), 3)
    assert len(set(chosen.tolist())) == 6


def test_foreground_random_draws_uniformly_among_slices_with_a_structure_first():
    cols = columns(30)  # slices 0, 3, ..., 27 show a structure
    with_structure = set(range(0, 30, 3))
    strategy = build_strategy("foreground_random")
    draws = [set(strategy.select(cols, 4, np.random.default_rng(s))[0].tolist()) for s in range(40)]
    assert all(d <= with_structure for d in draws)
    assert set().union(*draws) == with_structure  # every such slice can be drawn
    assert strategy.select(cols, 4, np.random.default_rng(1))[0].tolist() == \
        strategy.select(cols, 4, np.random.default_rng(1))[0].tolist()
    chosen, _ = strategy.select(cols, 13, np.random.default_rng(0))  # more than the 10 with a structure
    assert with_structure <= set(chosen.tolist()) and len(set(chosen.tolist())) == 13
    picky = build_strategy("foreground_random", {"min_fraction": 0.1})  # nothing is above 10%: plain random
    assert len(set(picky.select(cols, 4, np.random.default_rng(0))[0].tolist()) - with_structure) > 0
    with pytest.raises(ConfigError, match="min_fraction"):
        build_strategy("foreground_random", {"min_fraction": 1.5})


def test_class_balancing_without_predictions_is_a_clear_error():
    cols = columns(10)
    del cols["pred"]
    with pytest.raises(ConfigError, match="per_class"):
        build_strategy("class_balanced").select(cols, 4, np.random.default_rng(0), 2)
    chosen, _ = build_strategy("class_balanced", {"per_class": False}).select(cols, 4, np.random.default_rng(0))
    assert 7 in chosen
