"""Bounded-memory helpers of the large-pool strategies against brute force on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.query import scale


@pytest.fixture(params=[None, 2000], ids=["one block", "many blocks"])
def blocks(request, monkeypatch):
    if request.param:
        monkeypatch.setattr(scale, "CHUNK_BYTES", request.param)


def points(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return scale.normalise32(np.random.default_rng(seed).normal(size=(n, dim)))


def brute(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))


def test_normalise32_keeps_zero_rows_and_gives_unit_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(scale.normalise32(x), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert scale.normalise32(x).dtype == np.float32


def test_min_sq_dist_and_distances_to_one_point(blocks):
    a, b = points(50), points(7, seed=1)
    np.testing.assert_allclose(scale.min_sq_dist(a, b), brute(a, b).min(1) ** 2, atol=1e-5)
    assert np.isinf(scale.min_sq_dist(a, b[:0])).all()
    np.testing.assert_allclose(scale.sq_dist_to(a, scale.sq_norms(a), 3), brute(a, a[3:4])[:, 0] ** 2, atol=1e-5)


def test_mean_knn_distance_skips_the_point_itself_only_when_it_is_a_reference(blocks):
    x = points(30)
    d = np.sort(brute(x, x), axis=1)
    got = scale.mean_knn_distance(x, x, 4, np.ones(30, bool))
    np.testing.assert_allclose(got, d[:, 1:5].mean(1), atol=1e-5)
    refs = x[10:]  # queries 0..9 are not references
    got = scale.mean_knn_distance(x[:10], refs, 4, np.zeros(10, bool))
    np.testing.assert_allclose(got, np.sort(brute(x[:10], refs), axis=1)[:, :4].mean(1), atol=1e-5)
    assert np.isnan(scale.mean_knn_distance(x[:1], x[:1], 4, np.ones(1, bool))).all()  # a cluster of one


def test_nearest_other_group(blocks):
    x = points(40)
    groups = np.arange(40) % 3
    d = brute(x, x)
    d[groups[:, None] == groups[None, :]] = np.inf
    queries = np.array([0, 5, 39])
    np.testing.assert_allclose(scale.nearest_other_group(queries, x, groups), d[queries].min(1), atol=1e-5)


def test_pairwise_distances_leave_out_each_point_itself(blocks):
    x = np.concatenate([points(20), points(20)[:1]])  # one exact duplicate: a true zero distance
    d = scale.pairwise_distance_sample(x, np.random.default_rng(0), 10_000)
    assert len(d) == 21 * 20 - 2 and d.min() > 1e-3
    sampled = scale.pairwise_distance_sample(x, np.random.default_rng(0), 400)
    assert 0 < len(sampled) <= 400 and sampled.min() > 1e-3
    assert abs(np.median(sampled) - np.median(d)) < 0.1


def test_ball_bits_and_sizes(blocks):
    x = points(45)
    bits = scale.ball_bits(x[:12], x, 1.0)
    inside = brute(x[:12], x) <= 1.0
    np.testing.assert_array_equal(np.unpackbits(bits, axis=1, count=45).astype(bool), inside)
    np.testing.assert_array_equal(scale.ball_sizes(bits), inside.sum(1))


def test_lazy_greedy_cover_makes_the_plain_greedy_choices(blocks):
    rng = np.random.default_rng(3)
    for _ in range(20):
        balls = rng.random((40, 60)) < rng.uniform(0.02, 0.2)
        covered = rng.random(60) < 0.2
        plain, cov = [], covered.copy()
        taken = np.zeros(40, bool)
        while len(plain) < 15:
            gain = (balls & ~cov).sum(1)
            gain[taken] = -1
            if gain.max() <= 0:
                break
            pick = int(np.argmax(gain))  # ties: the lowest row
            plain.append(pick)
            taken[pick] = True
            cov |= balls[pick]
        lazy, lazy_cov = scale.greedy_max_cover(np.packbits(balls, axis=1), np.packbits(covered), 15)
        assert lazy == plain
        np.testing.assert_array_equal(np.unpackbits(lazy_cov, count=60).astype(bool), cov)
