"""Uncertainty measures on inputs whose correct ranking is obvious."""

from __future__ import annotations

import math

import pytest
import torch

from medloop.uncertainty import aleatoric, all_measures, bald, combined, epistemic, margin, predictive_entropy, reduce_map, variation_ratio


def _mc(*rows):
    """``rows``: per sample, a list of T probability vectors -> ``[N, T, C]``."""
    return torch.tensor(rows, dtype=torch.float32)


CONFIDENT = [[0.99, 0.01]] * 4  # all passes agree and are sure
AMBIGUOUS = [[0.5, 0.5]] * 4  # all passes agree the case is a coin flip (aleatoric-like)
DISAGREE = [[0.99, 0.01], [0.01, 0.99]] * 2  # passes disagree (epistemic)


def test_epistemic_is_zero_when_passes_agree_and_high_when_they_disagree():
    e = epistemic(_mc(CONFIDENT, AMBIGUOUS, DISAGREE))
    assert e[0] == pytest.approx(0, abs=1e-6) and e[1] == pytest.approx(0, abs=1e-6) and e[2] > 0.4


def test_bald_separates_model_doubt_from_data_ambiguity():
    b = bald(_mc(CONFIDENT, AMBIGUOUS, DISAGREE))
    assert b[1] == pytest.approx(0, abs=1e-6)  # agreeing coin flips: no information about the weights
    assert b[2] > 0.5 and b[0] < 1e-6


def test_entropy_margin_and_variation_ratio_rankings():
    p = _mc(CONFIDENT, AMBIGUOUS, DISAGREE)
    h = predictive_entropy(p)
    assert h[0] < h[1] and h[1] == pytest.approx(math.log(2), rel=1e-5)
    m = margin(p)
    assert m[0] == pytest.approx(0.02, abs=1e-5) and m[1] == pytest.approx(1.0)
    v = variation_ratio(p)
    assert v[0] == 0 and v[2] == pytest.approx(0.5)


def test_aleatoric_grows_with_predicted_variance_and_vanishes_without_head():
    p = _mc(AMBIGUOUS, AMBIGUOUS)
    log_var = torch.stack([torch.full((4, 2), -6.0), torch.full((4, 2), 1.0)])
    a = aleatoric(p, log_var)
    assert a[1] > 10 * a[0] > 0
    assert torch.equal(aleatoric(p, None), torch.zeros(2))


def test_aleatoric_matches_a_monte_carlo_estimate_for_small_variance():
    torch.manual_seed(0)
    logits = torch.tensor([[1.0, -0.5, 0.2]])
    log_var = torch.log(torch.tensor([[0.01, 0.02, 0.005]]))
    z = logits + log_var.exp().sqrt() * torch.randn(200_000, 3)
    mc_var = z.softmax(1).var(0).sum()
    delta = aleatoric(logits.softmax(1)[:, None], log_var[:, None])
    assert float(delta[0]) == pytest.approx(float(mc_var), rel=0.05)


def test_combined_is_epistemic_plus_aleatoric_eq6():
    p = _mc(DISAGREE, AMBIGUOUS)
    lv = torch.randn(2, 4, 2)
    assert torch.allclose(combined(p, lv), epistemic(p) + aleatoric(p, lv))


def test_all_measures_work_per_pixel():
    p = torch.rand(2, 5, 3, 8, 8).softmax(2)
    maps = all_measures(p, torch.randn(2, 5, 3, 8, 8))
    assert set(maps) == {"epistemic", "aleatoric", "combined", "entropy", "bald", "margin", "variation_ratio"}
    assert all(m.shape == (2, 8, 8) and (m >= 0).all() for m in maps.values())


def test_reductions():
    umap = torch.zeros(2, 10, 10)
    umap[0, :5, :5] = 1.0  # large uncertain region
    umap[1, 0, 0] = 4.0  # one hot pixel
    fg = torch.zeros(2, 10, 10, dtype=torch.bool)
    fg[:, :2, :2] = True
    assert reduce_map(umap, "mean").tolist() == pytest.approx([0.25, 0.04])
    assert reduce_map(umap, "max").tolist() == [1.0, 4.0]
    assert reduce_map(umap, "foreground_sum", fg).tolist() == [4.0, 4.0]
    top = reduce_map(umap, "top_q_mean", q=0.2)  # top 20 pixels
    assert top[0] > top[1]  # a region beats a single noisy pixel
    with pytest.raises(ValueError, match="unknown reduction 'median'"):
        reduce_map(umap, "median")


def test_variation_ratio_counts_argmax_votes_including_ties_and_maps():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(3, 7, 4, 5, 6, generator=gen).softmax(2)  # [N, T, C, H, W]
    p[:, :3, :, 0, 0] = 0.25  # three passes tie every class at one pixel: argmax votes for class 0
    votes = p.argmax(2)
    reference = 1 - torch.nn.functional.one_hot(votes, 4).sum(1).amax(-1).float() / 7
    assert torch.equal(variation_ratio(p), reference)
    assert variation_ratio(p).shape == (3, 5, 6)
