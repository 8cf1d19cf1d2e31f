"""Bootstrap intervals on synthetic scores whose answer is obvious (clearly better curves, identical tracks)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medloop.metrics.bootstrap import (
    UNAVAILABLE,
    area_weights,
    auc_ci,
    curve_area,
    curve_area_diff_ci,
    mean_auc_ci,
    rank_auc,
    saving_verdict,
    stored_probs,
)


def scored(n: int, strength: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` balanced labels and scores that separate them more as ``strength`` grows (ties included)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    return np.round(strength * labels + rng.random(n), 2), labels


def track(labels: np.ndarray, strengths: list[float], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rounds = []
    for i, s in enumerate(strengths):
        probs = np.round(s * labels + rng.random(len(labels)), 5)
        rounds.append({"round": i, "fraction": 0.1 + 0.05 * i, "test_probs": probs.tolist(),
                       "test": {"auc": float(roc_auc_score(labels, probs))}})
    return rounds


def test_rank_auc_equals_sklearn_with_ties_and_several_classes():
    scores, labels = scored(60, 0.3, 0)
    assert rank_auc(scores[None], labels[None])[0] == pytest.approx(roc_auc_score(labels, scores))
    rng = np.random.default_rng(1)
    y3, p3 = np.arange(30) % 3, rng.dirichlet([1, 1, 1], 30)
    assert rank_auc(p3[None], y3[None])[0] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"))
    assert math.isnan(rank_auc(scores[None, :1], labels[None, :1])[0])  # one class: no AUC


def test_stored_probs_keep_the_positive_class_or_every_class():
    assert stored_probs(np.array([[0.25, 0.75], [0.9, 0.1]])) == [0.75, 0.1]
    assert np.array(stored_probs(np.full((2, 3), 1 / 3))).shape == (2, 3)


def test_auc_interval_contains_the_estimate_and_narrows_with_more_images():
    widths = []
    for n in (40, 400):
        scores, labels = scored(n, 0.5, n)
        low, high = auc_ci(scores, labels, n_boot=500, seed=0)
        assert low < roc_auc_score(labels, scores) < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n)
    assert auc_ci(*scored(40, 0.5, 40), n_boot=500, seed=0) == auc_ci(*scored(40, 0.5, 40), n_boot=500, seed=0)


def test_curve_area_is_the_mean_auc_over_the_range():
    rounds = [{"fraction": 0.1, "test": {"auc": 0.6}}, {"fraction": 0.3, "test": {"auc": 0.8}},
              {"fraction": 0.5, "test": {"auc": None}}]
    assert curve_area(rounds, 0.1, 0.3) == pytest.approx(0.7)
    assert curve_area(rounds, 0.2, 0.3) == pytest.approx(0.75)
    assert area_weights([0.1, 0.3], 0.2, 0.2) @ [0.6, 0.8] == pytest.approx(0.7)  # zero width: the value


def test_clearly_better_curve_has_an_interval_above_zero_and_identical_tracks_contain_zero():
    labels = np.arange(160) % 2
    al = {str(s): track(labels, [0.2 + 0.1 * i for i in range(10)], s) for s in range(3)}
    rnd = {str(s): track(labels, [0.2 + 0.02 * i for i in range(10)], 10 + s) for s in range(3)}
    test_labels = {s: labels.tolist() for s in al}
    started = time.perf_counter()
    better = curve_area_diff_ci(al, rnd, test_labels, n_boot=1000, seed=0)
    assert time.perf_counter() - started < 10  # 1000 x 3 seeds x 2 tracks x 10 rounds x 160 images
    assert better["ci"][0] > 0 and better["ci"][0] < better["diff"] < better["ci"][1]
    assert better["n_seeds"] == 3 and better["range"] == pytest.approx([0.1, 0.55])
    same = curve_area_diff_ci(al, al, test_labels, n_boot=200, seed=0)
    assert same["diff"] == 0 and same["ci"][0] <= 0 <= same["ci"][1]
    worse = curve_area_diff_ci(rnd, al, test_labels, n_boot=200, seed=0)
    assert worse["ci"][1] < 0


def test_runs_without_test_probs_have_no_interval():
    labels = np.arange(20) % 2
    old = {"0": [{k: v for k, v in r.items() if k != "test_probs"} for r in track(labels, [0.5, 0.6], 0)]}
    assert curve_area_diff_ci(old, old, {"0": labels.tolist()}) is None


def test_mean_auc_over_seeds_at_chance_includes_one_half():
    labels = np.arange(80) % 2
    chance = {str(s): np.random.default_rng(s).random(80).tolist() for s in range(3)}
    out = mean_auc_ci(chance, {s: labels for s in chance}, n_boot=300, seed=0)
    assert out["ci"][0] < 0.5 < out["ci"][1] and out["n_seeds"] == 3


@pytest.mark.parametrize("fsl_ci, diff_ci, verdict, why", [
    ([0.80, 0.90], [0.01, 0.05], "saving", "above chance"),
    ([0.36, 0.55], [0.01, 0.05], "no saving shown", "not above chance"),
    ([0.80, 0.90], [-0.02, 0.05], "no saving shown", "within noise"),
    ([0.80, 0.90], [-0.05, -0.01], "no saving shown", "worse than random"),
    ([math.nan, math.nan], [0.01, 0.05], "no saving shown", "FSL AUC has no interval"),
    (None, None, "no saving shown", UNAVAILABLE),
])
def test_a_saving_needs_fsl_above_chance_and_the_difference_above_zero(fsl_ci, diff_ci, verdict, why):
    got, reason = saving_verdict(fsl_ci, diff_ci)
    assert got == verdict and why in reason


def test_holm_adjusts_in_step_down_order():
    from medloop.metrics.bootstrap import holm

    adjusted, ranks = holm([0.01, 0.04, 0.03])
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06])  # 3 x 0.01, max(0.03, 2 x 0.03), max(.., 1 x 0.04)
    assert ranks.tolist() == [1, 3, 2]
    assert holm([0.5, 0.9])[0].tolist() == pytest.approx([1.0, 1.0])  # capped at 1


def test_pairwise_differences_are_paired_corrected_and_find_the_better_track():
    from medloop.metrics.bootstrap import pairwise_curve_areas

    labels = np.arange(160) % 2
    good = {str(s): track(labels, [0.2 + 0.1 * i for i in range(10)], s) for s in range(3)}
    flat = {str(s): track(labels, [0.2 + 0.02 * i for i in range(10)], 10 + s) for s in range(3)}
    test_labels = {s: labels.tolist() for s in good}
    out = pairwise_curve_areas({"good": good, "copy": good, "flat": flat}, test_labels, n_boot=1000, seed=0)
    assert set(out["pairs"]) == {"good - copy", "good - flat", "copy - flat"}
    same = out["pairs"]["good - copy"]
    assert same["diff"] == 0 and same["ci"] == [0, 0] and not same["significant"]  # paired: identical tracks
    better = out["pairs"]["good - flat"]
    assert better["significant"] and better["ci"][0] > 0 and better["p_holm"] >= better["p"]
    # Holm: the most significant pair gets the strictest level (alpha / m), the least the plainest
    assert sorted(p["level"] for p in out["pairs"].values()) == pytest.approx([1 - 0.05, 1 - 0.05 / 2, 1 - 0.05 / 3])
    single = curve_area_diff_ci(good, flat, test_labels, n_boot=1000, seed=0)
    corrected = better["ci"][1] - better["ci"][0]
    assert corrected > single["ci"][1] - single["ci"][0]  # a corrected interval is wider than one comparison's
    assert better["diff"] == pytest.approx(single["diff"])
    assert pairwise_curve_areas({"good": good}, test_labels) is None  # nothing to compare


def test_paired_mean_diff_resolves_a_consistent_shift_and_not_noise():
    from medloop.metrics.bootstrap import paired_mean_diff

    rng = np.random.default_rng(0)
    shifted = paired_mean_diff(0.05 + rng.normal(0, 0.02, 20), n_boot=2000, seed=1)
    assert shifted["ci"][0] > 0 and shifted["p_value"] < 0.01 and shifted["n"] == 20
    assert shifted["ci"][0] <= shifted["diff"] <= shifted["ci"][1]
    noise = paired_mean_diff(rng.normal(0, 0.05, 20) - 0.0, n_boot=2000, seed=1)
    assert noise["ci"][0] < 0 < noise["ci"][1] or noise["p_value"] >= 0.01
    same = [0.1, 0.2, 0.3, 0.1, 0.2]
    assert paired_mean_diff(same, n_boot=500, seed=3) == paired_mean_diff(same, n_boot=500, seed=3)
    assert paired_mean_diff([0.1], n_boot=500)["ci"] is None
    few = paired_mean_diff([0.1, 0.11], n_boot=500)  # two patients: no interval worth the name
    assert few["ci"] is None and few["p_value"] is None and few["diff"] == pytest.approx(0.105)


def test_paired_t_interval_is_students_interval_on_the_differences():
    from medloop.metrics.bootstrap import paired_t_interval

    out = paired_t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1: half width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321
    assert out["diff"] == pytest.approx(2.0) and out["n"] == 3
    assert out["ci"] == pytest.approx([2 - 2.48414, 2 + 2.48414], abs=1e-4)
    assert paired_t_interval([1.0, 2.0, 3.0], level=0.5)["ci"][1] < out["ci"][1]
    assert paired_t_interval([0.1, float("nan")]) == {"diff": pytest.approx(0.1), "ci": None, "n": 1}
