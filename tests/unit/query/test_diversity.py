"""Strategies on embeddings (typiclust, probcover, coreset, badge): behaviour on data with an obvious answer."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.errors import ConfigError
from medloop.query import build_strategy

DIVERSITY = ["typiclust", "probcover", "coreset", "badge"]


def blobs(per_blob: int = 25, labeled_blob: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Three well separated clusters of candidates; the labeled images all lie in ``labeled_blob``."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3) * 6.0
    x = np.concatenate([c + rng.normal(size=(per_blob, 3)) for c in centres])
    probs = rng.uniform(0.05, 0.95, len(x))
    return {"index": np.arange(len(x)), "embeddings": x,
            "labeled_embeddings": centres[labeled_blob] + rng.normal(size=(6, 3)),
            "labeled_labels": np.zeros(6, dtype=np.int64), "prob_0": probs, "prob_1": 1 - probs}


@pytest.mark.parametrize("name", ["typiclust", "probcover", "coreset"])
def test_queries_go_to_the_clusters_the_labeled_set_does_not_cover(name):
    cols = blobs()
    chosen, scores = build_strategy(name).select(cols, 2, np.random.default_rng(0))
    assert len(scores) == len(cols["index"])
    blob = set((chosen // 25).tolist())
    assert blob == {1, 2}, f"{name} chose from blobs {blob}"


@pytest.mark.parametrize("name", DIVERSITY)
def test_selection_is_distinct_seeded_and_spreads_over_clusters(name):
    cols = blobs()
    a, _ = build_strategy(name).select(cols, 6, np.random.default_rng(3))
    b, _ = build_strategy(name).select(cols, 6, np.random.default_rng(3))
    assert a.tolist() == b.tolist()
    assert len(set(a.tolist())) == 6
    assert len(set((a // 25).tolist())) >= 2  # not all queries from one cluster


def test_typiclust_takes_the_most_typical_member_of_a_cluster():
    rng = np.random.default_rng(1)
    dense = rng.normal(scale=0.05, size=(20, 2))
    outlier = np.array([[0.6, 0.6]])
    x = np.concatenate([dense, outlier])
    cols = {"index": np.arange(len(x)), "embeddings": np.concatenate([x, np.ones((len(x), 1))], 1),
            "labeled_embeddings": np.zeros((0, 3)), "labeled_labels": np.zeros(0, np.int64)}
    chosen, typicality = build_strategy("typiclust", {"neighbours": 5}).select(cols, 1, np.random.default_rng(0))
    assert chosen[0] != 20 and typicality[20] < np.median(typicality[:20])


def test_coreset_without_labeled_images_still_covers():
    cols = blobs()
    cols["labeled_embeddings"] = np.zeros((0, 3))
    chosen, _ = build_strategy("coreset").select(cols, 3, np.random.default_rng(0))
    assert set((chosen // 25).tolist()) == {0, 1, 2}


def test_probcover_radius_grows_with_the_spread_of_a_cluster():
    from medloop.query.diversity import _normalise

    def radius(spread: float) -> float:
        rng = np.random.default_rng(0)
        x = np.concatenate([c + rng.normal(scale=spread, size=(25, 3)) for c in np.eye(3) * 6.0])
        return build_strategy("probcover").auto_radius(_normalise(x), 3, np.random.default_rng(0))

    tight, wide = radius(0.5), radius(1.0)
    assert 0 < tight < wide < np.sqrt(2)  # pure balls stay inside one of three orthogonal clusters


def test_badge_prefers_uncertain_candidates_first():
    cols = blobs()
    cols["prob_0"] = np.full(75, 0.99)
    cols["prob_0"][40] = 0.5  # the one candidate the model is unsure about: the longest gradient embedding
    cols["prob_1"] = 1 - cols["prob_0"]
    chosen, norms = build_strategy("badge").select(cols, 3, np.random.default_rng(0))
    assert chosen[0] == 40 and norms[40] == norms.max()


def test_bad_parameters_and_missing_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="radius > 0"):
        build_strategy("probcover", {"radius": -1})
    with pytest.raises(ConfigError, match="neighbours >= 1"):
        build_strategy("typiclust", {"neighbours": 0})
    with pytest.raises(ConfigError, match="embeddings"):
        build_strategy("coreset").select({"index": np.arange(4)}, 2, np.random.default_rng(0))
    cols = blobs()
    del cols["prob_0"], cols["prob_1"]
    with pytest.raises(ConfigError, match="class probabilities"):
        build_strategy("badge").select(cols, 2, np.random.default_rng(0))


def seeded_pool(n: int, n_labeled: int, dim: int = 16, seed: int = 11) -> dict[str, np.ndarray]:
    """Eight Gaussian clusters in ``dim`` dimensions, three classes, random class probabilities."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim)) * 3
    x = centres[rng.integers(8, size=n)] + rng.normal(size=(n, dim))
    lab = centres[rng.integers(8, size=n_labeled)] + rng.normal(size=(n_labeled, dim))
    probs = rng.dirichlet(np.ones(3), size=n)
    cols = {"index": np.arange(n), "embeddings": x, "labeled_embeddings": lab,
            "labeled_labels": rng.integers(3, size=n_labeled)}
    cols.update({f"prob_{c}": probs[:, c] for c in range(3)})
    return cols


# Selections made before the large-pool paths existed: small pools must keep exactly these (runs in progress and
# their resumes depend on it).
PINNED = {
    (400, 30): {"typiclust": [349, 113, 361, 49, 254, 399, 239, 106, 357, 210, 360, 129],
                "probcover": [28, 322, 9, 323, 187, 206, 252, 114, 391, 22, 111, 154],
                "coreset": [100, 43, 356, 363, 2, 283, 102, 233, 124, 196, 369, 197],
                "badge": [10, 319, 316, 194, 107, 21, 148, 159, 19, 22, 399, 262]},
    (2500, 0): {"typiclust": [2204, 51, 1088, 42, 1084, 1698, 754, 527, 507, 1808, 2004, 1237],
                "probcover": [10, 1237, 51, 107, 17, 49, 23, 0, 16, 2014, 63, 2021],
                "coreset": [1676, 548, 2490, 1485, 2489, 1193, 184, 2409, 285, 1280, 2042, 2427],
                "badge": [1936, 2017, 2028, 1302, 719, 132, 968, 1027, 115, 122, 2496, 1628]},
}


@pytest.mark.parametrize("pool", list(PINNED))
@pytest.mark.parametrize("name", DIVERSITY)
def test_small_pools_keep_their_exact_selection(name, pool):
    chosen, _ = build_strategy(name).select(seeded_pool(*pool), 12, np.random.default_rng(5))
    assert chosen.tolist() == PINNED[pool][name]


def _cost(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each row's squared distance to its nearest centre."""
    return ((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1).min(1)


def quality(name: str, cols: dict[str, np.ndarray], chosen: np.ndarray, radius: float) -> float:
    """What each method optimises, lower is better: the k-center radius (coreset), uncovered share at the exact
    method's radius (probcover), k-means cost of the chosen as centres (typiclust on features, badge on gradient
    embeddings)."""
    from medloop.query.diversity import BadgeStrategy, _normalise

    x, lab = _normalise(cols["embeddings"]), _normalise(cols["labeled_embeddings"])
    if name == "badge":
        g = BadgeStrategy._gradient_factors(cols)
        emb = (g[:, :, None] * cols["embeddings"][:, None, :]).reshape(len(x), -1)
        return float(_cost(emb, emb[chosen]).sum())
    d2 = _cost(x, np.concatenate([lab, x[chosen]]))
    if name == "coreset":
        return float(np.sqrt(d2.max()))
    if name == "probcover":
        return float((d2 > radius * radius).mean())
    return float(d2.sum())


@pytest.mark.parametrize("name", DIVERSITY)
def test_large_pool_path_is_as_good_as_the_exact_method(name):
    # probcover: nothing labeled and few queries, so that the balls cannot cover the whole pool
    cols, k = (seeded_pool(1500, 0), 6) if name == "probcover" else (seeded_pool(1500, 40), 20)
    exact = build_strategy(name)
    large = build_strategy(name, {"max_exact_pool": 1000})
    assert not exact.large(cols) and large.large(cols)
    a, _ = exact.select(cols, k, np.random.default_rng(2))
    b, _ = large.select(cols, k, np.random.default_rng(2))
    assert len(set(b.tolist())) == k
    radius = 0.0
    if name == "probcover":
        from medloop.query.diversity import _normalise

        radius = exact.auto_radius(_normalise(cols["embeddings"]), 2, np.random.default_rng(2))
        assert quality(name, cols, a, radius) > 0.1
    qa, qb = quality(name, cols, a, radius), quality(name, cols, b, radius)
    if name in ("coreset", "badge", "typiclust"):  # the same algorithm in float32: the same choices here
        assert len(set(a.tolist()) & set(b.tolist())) >= k - 2
    assert qb <= qa * 1.05 + 1e-3, f"{name}: large-pool path {qb:.4f} vs exact {qa:.4f}"


@pytest.mark.parametrize("name", DIVERSITY)
def test_large_pool_path_does_not_depend_on_the_block_size(name, monkeypatch):
    from medloop.query import scale

    cols = seeded_pool(600, 20)
    strategy = build_strategy(name, {"max_exact_pool": 0})
    a, sa = strategy.select(cols, 10, np.random.default_rng(4))
    monkeypatch.setattr(scale, "CHUNK_BYTES", 3000)  # a few rows per block
    b, sb = strategy.select(cols, 10, np.random.default_rng(4))
    assert a.tolist() == b.tolist()
    np.testing.assert_allclose(sa, sb, rtol=1e-5)


def test_probcover_on_a_large_pool_covers_a_sample_and_fills_up_at_random():
    cols = seeded_pool(800, 10)
    strategy = build_strategy("probcover", {"max_exact_pool": 100, "sample_size": 200})
    chosen, degree = strategy.select(cols, 30, np.random.default_rng(0))
    assert np.isfinite(degree).sum() == 200  # candidates outside the sample are not scored
    assert len(set(chosen.tolist())) == 30
    # a radius that covers everything from the labeled set: nothing to gain, every query random (and distinct)
    everything = build_strategy("probcover", {"max_exact_pool": 0, "radius": 2.5})
    chosen, degree = everything.select(cols, 30, np.random.default_rng(0))
    assert len(set(chosen.tolist())) == 30
    assert (degree == 810).all()  # every ball holds the 10 labeled and 800 candidate points
    assert chosen.tolist() == np.random.default_rng(0).choice(800, 30, replace=False).tolist()  # no greedy pick


def test_large_pool_parameters_are_checked():
    with pytest.raises(ConfigError, match="'max_exact_pool' parameter of strategy coreset"):
        build_strategy("coreset", {"max_exact_pool": -1})
    with pytest.raises(ConfigError, match="'sample_size' parameter of strategy probcover"):
        build_strategy("probcover", {"sample_size": 0})
