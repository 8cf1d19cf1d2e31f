"""Bootstrap intervals for test AUCs and for the gap between two learning curves (issue 17, "honest savings").

A saving claimed from a handful of seeds and a test split of a hundred images has two sources of noise: which
seed (split, initial set, initialisation) a run drew, and which test images were drawn. The intervals here
resample both: a replicate draws the seeds with replacement and, within each drawn seed, the test images with
replacement, then recomputes every AUC from the per-image probabilities a round record stores (``test_probs``,
see :func:`stored_probs`). AUCs come from ranks, so a thousand replicates of a dozen rounds take a second:

    AUC = (sum of the ranks of the positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg)

with tied scores given their average rank (the Mann-Whitney statistic; equal to scikit-learn's
``roc_auc_score``). A replicate whose resample leaves a class without images has no AUC and is skipped.
Several classes: the macro mean of one-vs-rest AUCs, as :func:`medloop.metrics.classification_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import rankdata, ttest_1samp

from medloop.seeding import stream

__all__ = ["UNAVAILABLE", "area_weights", "auc_ci", "curve_area", "curve_area_diff_ci", "fraction_range", "holm",
           "mean_auc_ci", "paired_mean_diff", "paired_t_interval", "pairwise_curve_areas", "rank_auc", "saving_verdict", "stored_probs"]

N_GRID = 200  # points over the fraction range, as benchmarks/label_efficiency.py's curve_area_*


def stored_probs(probs: np.ndarray) -> list:
    """Test probabilities as a round record stores them: the positive class's ``[N]`` for two classes, else the
    ``[N][K]`` rows; rounded to 5 decimals (ties this creates count half, as in the AUC itself)."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.round(probs[:, 1] if probs.shape[1] == 2 else probs, 5).tolist()


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC of each row from ranks; NaN for a row whose labels hold a single class.

    Shape:
        scores: ``[M, N]`` positive-class scores (labels 0/1), or ``[M, N, K]`` class probabilities (labels
        0..K-1, macro one-vs-rest AUC, NaN when any class is absent). labels: ``[M, N]``. Returns ``[M]``.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim == 3:
        per_class = [rank_auc(scores[..., c], (labels == c).astype(np.int64)) for c in range(scores.shape[2])]
        return np.mean(per_class, axis=0)  # NaN when any class is absent, as the full-sample AUC would be
    positive = labels == 1
    n_pos = positive.sum(1)
    n_neg = labels.shape[1] - n_pos
    ranks = rankdata(scores, axis=1)  # [M, N], ties get their average rank
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * positive).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def area_weights(fractions: Sequence[float], lo: float, hi: float) -> np.ndarray:
    """Weights ``w [R]`` with ``w @ aucs`` = the area under the piecewise-linear curve ``(fractions, aucs)`` over
    ``[lo, hi]`` (``N_GRID`` points, constant beyond the ends) divided by ``hi - lo``: a mean AUC.

    Linear in the AUCs, so one weight vector serves every bootstrap replicate of a track."""
    x = np.asarray(fractions, dtype=np.float64)
    eye = np.eye(len(x))
    if hi - lo <= 1e-12:  # one common point: the mean over a zero-width range is the value there
        return np.array([np.interp(lo, x, e) for e in eye])
    xs = np.linspace(lo, hi, N_GRID)
    return np.array([np.trapezoid(np.interp(xs, x, e), xs) for e in eye]) / (hi - lo)


def _scored(rounds: Sequence[dict]) -> list[dict]:
    return [r for r in rounds if r["test"].get("auc") is not None]


def curve_area(rounds: Sequence[dict], lo: float, hi: float) -> float:
    """Area under one track's test-AUC-vs-labeled-fraction curve over ``[lo, hi]``, divided by the width (the
    definition of benchmarks/label_efficiency.py's ``curve_area_*``, there on the mean curve over seeds)."""
    kept = _scored(rounds)
    return float(area_weights([r["fraction"] for r in kept], lo, hi) @ [r["test"]["auc"] for r in kept])


def fraction_range(tracks: Sequence[Sequence[dict]]) -> tuple[float, float]:
    """The labeled fractions every track covers: ``(largest first fraction, smallest last fraction)``."""
    return (max(t[0]["fraction"] for t in tracks), min(t[-1]["fraction"] for t in tracks))


def _as_scores(test_probs: list) -> np.ndarray:
    return np.asarray(test_probs, dtype=np.float64)  # [N] positive class, or [N, K]


def _interval(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def _two_level(score_sets: Mapping[str, list[np.ndarray]], labels: Mapping[str, np.ndarray], n_boot: int, seed: int,
               statistic: Callable[[str, np.ndarray], np.ndarray]) -> tuple[float, np.ndarray]:
    """Point estimate and ``[n_boot]`` replicates of the mean over seeds of ``statistic(seed, aucs [M, T])``.

    ``score_sets[seed]`` holds T score arrays over that seed's test images (``labels[seed]``). A replicate draws
    the seeds with replacement and, for each draw, the test images with replacement; the T score sets of a draw
    share its image resample (the pairing). NaN replicates (a class missing from a resample) stay NaN. A
    statistic may return ``[M, P]`` (P numbers per replicate): the point is then ``[P]``, the replicates ``[B, P]``.
    """
    keys = list(score_sets)
    point = np.mean([statistic(k, np.stack([rank_auc(s[None], labels[k][None]) for s in score_sets[k]], 1))[0]
                     for k in keys], axis=0)
    rng = stream(seed, "bootstrap")
    draws = rng.integers(len(keys), size=(n_boot, len(keys)))  # [B, S] seed drawn in each slot
    value = np.full((*draws.shape, *np.shape(point)), np.nan)
    for k, key in enumerate(keys):
        slots = np.nonzero(draws == k)
        y = labels[key]
        idx = rng.integers(len(y), size=(len(slots[0]), len(y)))  # [M, N] one image resample per slot
        aucs = np.stack([rank_auc(s[idx], y[idx]) for s in score_sets[key]], 1)  # [M, T]
        value[slots] = statistic(key, aucs)
    return (float(point) if np.ndim(point) == 0 else point), value.mean(1)


def auc_ci(probs: Sequence, labels: Sequence[int], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the test AUC, resampling the test images.

    Args:
        probs: ``[N]`` positive-class probabilities, or ``[N, K]`` (a record's ``test_probs``).
        labels: ``[N]`` class indices.
        n_boot: replicates; those whose resample holds one class only are skipped.
        seed: the bootstrap's random stream (``medloop.seeding.stream(seed, "bootstrap")``).
    Returns:
        ``(low, high)``; NaN when no replicate has every class.
    """
    _, reps = _two_level({"0": [_as_scores(probs)]}, {"0": np.asarray(labels)}, n_boot, seed, lambda _, a: a[:, 0])
    low, high = _interval(reps)
    return low, high


def mean_auc_ci(probs_by_seed: Mapping[str, Sequence], labels_by_seed: Mapping[str, Sequence[int]],
                n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean test AUC over seeds (e.g. of the fully supervised baselines) with a two-level 95% interval
    (seeds, then test images, resampled). Returns ``{"auc", "ci": [low, high], "n_seeds", "n_boot"}``."""
    sets = {k: [_as_scores(p)] for k, p in probs_by_seed.items()}
    labels = {k: np.asarray(labels_by_seed[k]) for k in sets}
    point, reps = _two_level(sets, labels, n_boot, seed, lambda _, a: a[:, 0])
    return {"auc": point, "ci": _interval(reps), "n_seeds": len(sets), "n_boot": n_boot}


def curve_area_diff_ci(al_tracks: Mapping[str, Sequence[dict]], random_tracks: Mapping[str, Sequence[dict]],
                       test_labels: Mapping[str, Sequence[int]], n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Paired two-level bootstrap of (AL curve area - random curve area), the mean over seeds.

    Each replicate resamples the seeds with replacement and, within each drawn seed, the test images (one
    resample for both tracks of that seed: the comparison is paired), recomputes every round's AUC from the
    records' ``test_probs``, each track's :func:`curve_area` over the fraction range all tracks cover, and the
    mean over the drawn seeds of the per-seed difference.

    Args:
        al_tracks, random_tracks: seed -> round records (seeds present in both and in ``test_labels`` are used).
        test_labels: seed -> the labels of the test images ``test_probs`` scores, in the same order.
    Returns:
        ``{"diff": point estimate, "ci": [low, high] (95%, percentile), "range": [lo, hi], "n_seeds", "n_boot"}``,
        or ``None`` when a record has no ``test_probs`` (runs before they were recorded) or no seed is shared.
    """
    seeds = [s for s in al_tracks if s in random_tracks and s in test_labels]
    tracks = {s: (_scored(al_tracks[s]), _scored(random_tracks[s])) for s in seeds}
    if not seeds or any(not t or any(r.get("test_probs") is None for r in t) for pair in tracks.values() for t in pair):
        return None
    lo, hi = fraction_range([t for pair in tracks.values() for t in pair])
    weights, sets, labels = {}, {}, {}
    for s, (al, rnd) in tracks.items():
        labels[s] = np.asarray(test_labels[s])
        sets[s] = [_as_scores(r["test_probs"]) for r in (*al, *rnd)]
        if any(len(p) != len(labels[s]) for p in sets[s]):
            raise ValueError(f"seed {s}: test_probs and test_labels differ in length; the records and results.json "
                             "come from different runs")
        weights[s] = (area_weights([r["fraction"] for r in al], lo, hi),
                      area_weights([r["fraction"] for r in rnd], lo, hi))

    def diff(s: str, aucs: np.ndarray) -> np.ndarray:  # aucs [M, R_al + R_random]
        w_al, w_random = weights[s]
        return aucs[:, :len(w_al)] @ w_al - aucs[:, len(w_al):] @ w_random  # exactly 0 for identical tracks

    point, reps = _two_level(sets, labels, n_boot, seed, diff)
    return {"diff": point, "ci": _interval(reps), "range": [float(lo), float(hi)], "n_seeds": len(seeds),
            "n_boot": n_boot}


def paired_mean_diff(diffs: Sequence[float], n_boot: int = 10000, seed: int = 0, level: float = 0.95,
                     min_units: int = 5) -> dict:
    """The mean of paired differences (one per unit, e.g. a test patient's Dice under two models) with a percentile
    bootstrap interval over the units and a two-sided bootstrap p-value for "no difference"
    (``2 * min(P(mean* <= 0), P(mean* >= 0))``, at least ``1 / n_boot``). With fewer than ``min_units`` units a
    bootstrap has a handful of distinct resamples and its interval means nothing: no interval, no p-value."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < max(2, min_units):
        return {"diff": float(d.mean()) if len(d) else None, "ci": None, "p_value": None, "n": int(len(d))}
    means = d[stream(seed, "paired bootstrap").integers(len(d), size=(n_boot, len(d)))].mean(1)
    tail = (1 - level) / 2 * 100
    p = max(2 * min((means <= 0).mean(), (means >= 0).mean()), 1 / n_boot)
    return {"diff": float(d.mean()), "ci": [float(v) for v in np.percentile(means, [tail, 100 - tail])],
            "p_value": float(min(p, 1.0)), "n": int(len(d))}


def paired_t_interval(diffs: Sequence[float], level: float = 0.95) -> dict:
    """The mean of paired differences (one per unit, e.g. a seed's test AUC under two settings) with a two-sided
    Student's t interval (scipy's ``ttest_1samp``). For a handful of units, where :func:`paired_mean_diff`'s
    bootstrap has too few distinct resamples to mean anything; it assumes roughly normal differences. Fewer than
    two finite differences: no interval."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return {"diff": float(d.mean()) if len(d) else None, "ci": None, "n": int(len(d))}
    ci = ttest_1samp(d, 0.0).confidence_interval(level)
    return {"diff": float(d.mean()), "ci": [float(ci.low), float(ci.high)], "n": int(len(d))}


def holm(p_values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down adjustment: ``(adjusted p-values, rank of each in the step-down order, 1 = smallest)``."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for step, i in enumerate(order):
        running = max(running, min(1.0, (m - step) * p[i]))
        adjusted[i] = running
    ranks = np.empty(m, dtype=np.int64)
    ranks[order] = np.arange(1, m + 1)
    return adjusted, ranks


def pairwise_curve_areas(tracks: Mapping[str, Mapping[str, Sequence[dict]]], test_labels: Mapping[str, Sequence[int]],
                         n_boot: int = 4000, seed: int = 0, alpha: float = 0.05) -> dict | None:
    """Every pair of tracks: the paired difference of curve areas with an interval corrected for the number of
    comparisons (Holm).

    One two-level bootstrap (seeds, then test images, shared by every track of a drawn seed) gives each track's
    curve area over the fraction range all tracks of all seeds cover, so every pair's difference is paired. Each
    pair gets a two-sided bootstrap p-value (twice the smaller tail share of the replicates at or beyond 0),
    Holm's adjusted p-value, and the percentile interval at Holm's level for its step: ``1 - alpha / (m - r + 1)``
    for the pair of rank ``r`` among ``m`` pairs, up to the first step Holm does not reject, whose level every
    later pair keeps (Holm stops there). An interval then excludes 0 when Holm rejects "no difference", up to
    the bootstrap's resolution (so ``n_boot`` is larger than for one comparison); ``significant`` is Holm's
    decision itself.

    Args:
        tracks: label -> seed -> round records (the seeds every track and ``test_labels`` share are used).
    Returns:
        ``{"range", "n_seeds", "n_boot", "alpha", "areas": {label: mean curve area}, "pairs": {"a - b": {"diff",
        "ci", "level", "p", "p_holm", "significant"}}}``, or ``None`` without per-image test probabilities.
    """
    names = list(tracks)
    seeds = [s for s in test_labels if all(s in tracks[n] for n in names)]
    scored = {n: {s: _scored(tracks[n][s]) for s in seeds} for n in names}
    if len(names) < 2 or not seeds or any(not r or any(x.get("test_probs") is None for x in r)
                                          for by_seed in scored.values() for r in by_seed.values()):
        return None
    lo, hi = fraction_range([r for by_seed in scored.values() for r in by_seed.values()])
    sets, labels, weights = {}, {}, {}
    for s in seeds:
        labels[s] = np.asarray(test_labels[s])
        sets[s] = [_as_scores(r["test_probs"]) for n in names for r in scored[n][s]]
        weights[s] = [area_weights([r["fraction"] for r in scored[n][s]], lo, hi) for n in names]
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]

    def areas(s: str, aucs: np.ndarray) -> np.ndarray:  # aucs [M, rounds of every track] -> [M, tracks]
        out, start = [], 0
        for w in weights[s]:
            out.append(aucs[:, start:start + len(w)] @ w)
            start += len(w)
        return np.stack(out, 1)

    point, reps = _two_level(sets, labels, n_boot, seed, areas)  # [T], [B, T]
    reps = reps[np.isfinite(reps).all(1)]
    diffs = np.stack([reps[:, i] - reps[:, j] for i, j in pairs], 1)  # [B, P]
    tails = np.minimum((diffs <= 0).sum(0) + 1, (diffs >= 0).sum(0) + 1) / (len(diffs) + 1)
    p = np.minimum(1.0, 2 * tails)
    adjusted, ranks = holm(p)
    held = [r for r, a in zip(ranks, adjusted) if not a < alpha]
    stop = min(held) if held else len(pairs)  # the first step Holm does not reject
    out = {}
    for k, (i, j) in enumerate(pairs):
        level = alpha / (len(pairs) - min(ranks[k], stop) + 1)
        ci = [float(v) for v in np.percentile(diffs[:, k], [100 * level / 2, 100 * (1 - level / 2)])]
        out[f"{names[i]} - {names[j]}"] = {"diff": float(point[i] - point[j]), "ci": ci, "level": 1 - level,
                                           "p": float(p[k]), "p_holm": float(adjusted[k]),
                                           "significant": bool(adjusted[k] < alpha)}
    return {"range": [float(lo), float(hi)], "n_seeds": len(seeds), "n_boot": int(len(diffs)), "alpha": alpha,
            "areas": {n: float(point[t]) for t, n in enumerate(names)}, "pairs": out}


UNAVAILABLE = "interval unavailable: run predates per-image test probabilities"


def saving_verdict(fsl_ci: Sequence[float] | None, diff_ci: Sequence[float] | None) -> tuple[str, str]:
    """``("saving", why)`` only when the FSL AUC interval lies above 0.5 (there is something to learn) and the
    interval of (AL - random) curve area lies above 0 (AL beats random beyond noise); else
    ``("no saving shown", the reasons in words)``."""
    if fsl_ci is None or diff_ci is None:
        return "no saving shown", UNAVAILABLE
    reasons = []
    if not np.isfinite(fsl_ci).all():
        reasons.append("the FSL AUC has no interval (too few test images of a class)")
    elif not fsl_ci[0] > 0.5:
        where = "lies below" if fsl_ci[1] < 0.5 else "includes"
        reasons.append(f"the fully supervised classifier is not above chance (its test AUC interval "
                       f"[{fsl_ci[0]:.3f}, {fsl_ci[1]:.3f}] {where} 0.5), so there is no accuracy to save labels "
                       "against")
    if not np.isfinite(diff_ci).all():
        reasons.append("the curve-area difference has no interval (too few test images of a class)")
    elif diff_ci[1] < 0:
        reasons.append(f"the strategy is worse than random (curve-area difference interval [{diff_ci[0]:+.3f}, "
                       f"{diff_ci[1]:+.3f}] lies below 0)")
    elif not diff_ci[0] > 0:
        reasons.append(f"the difference from random is within noise (curve-area difference interval "
                       f"[{diff_ci[0]:+.3f}, {diff_ci[1]:+.3f}] includes 0)")
    if reasons:
        return "no saving shown", "; ".join(reasons)
    return "saving", (f"FSL is above chance (AUC interval [{fsl_ci[0]:.3f}, {fsl_ci[1]:.3f}]) and the strategy's "
                      f"curve lies above random's (difference interval [{diff_ci[0]:+.3f}, {diff_ci[1]:+.3f}])")
