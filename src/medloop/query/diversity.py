"""Strategies for small budgets that work on embeddings (the ``embeddings`` input): typicality, coverage,
k-center and BADGE.

The ``embeddings`` input is ``embeddings [N, F]`` (the current classifier's trunk features of the candidates),
``labeled_embeddings [L, F]`` and ``labeled_labels [L]`` (the labeled set's features and answers). Distances
are Euclidean between L2-normalised features (the contrastive geometry of a self-supervised trunk).

- ``typiclust`` (Hacohen et al., ICML 2022): cluster labeled + candidates into ``L + k`` clusters; from the
  largest clusters without a labeled member, take the most typical point (inverse mean distance to its
  nearest neighbours).
- ``probcover`` (Yehuda et al., NeurIPS 2022): greedy maximum coverage of delta-balls; delta is the largest
  radius at which balls stay pure with respect to a k-means clustering (purity >= 0.95), k = the number of
  classes labeled so far.
- ``coreset`` (Sener & Savarese, ICLR 2018): k-center greedy, each query farthest from the labeled set and the
  queries before it.
- ``badge`` (Ash et al., ICLR 2020): k-means++ seeding on gradient embeddings ``(p - onehot(argmax p)) x h``,
  which mixes uncertainty (the gradient's length) and diversity; needs ``mc`` for ``p`` too.

Large pools. Every strategy takes ``max_exact_pool`` (default 5000 candidates): pools up to that size run the
exact methods above, unchanged; larger pools run bounded-memory versions (``medloop.query.scale``: float32
distances streamed in row blocks, never a pool x pool matrix):

- ``coreset`` and ``badge``: the same greedy, each step one matrix-vector product over the pool (BADGE's
  gradient-embedding distances factor as ``|g_i|^2 |h_i|^2 + |g_j|^2 |h_j|^2 - 2 (g_i.g_j)(h_i.h_j)``, so the
  ``N x (K F)`` embeddings are never built): O(N k F) time, O(N F) memory, the same choices up to rounding.
- ``typiclust``: mini-batch k-means as before; typicality from the nearest neighbours within each cluster,
  against at most ``TYPICALITY_REFERENCE`` random members of a larger cluster; the same picks otherwise.
- ``probcover``: coverage is computed on a uniform sample of ``sample_size`` candidates (plus the labeled set),
  as one bit per (centre, point) pair, and maximised by lazy greedy (the plain greedy's choices); the automatic
  radius comes from the sample's purity (each point's distance to the nearest point of another k-means
  cluster, on up to ``PURITY_QUERIES`` points) over quantiles of up to ``RADIUS_PAIRS`` sampled distances.
  Candidates outside the sample score NaN.
"""

from __future__ import annotations

import numpy as np

from medloop.errors import ConfigError
from medloop.query import scale
from medloop.query.strategies import STRATEGIES, QueryStrategy

__all__ = ["TypiClustStrategy", "ProbCoverStrategy", "CoresetStrategy", "BadgeStrategy"]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


def _require_embeddings(inputs: dict[str, np.ndarray], name: str) -> None:
    if "embeddings" not in inputs:
        raise ConfigError(f"strategy {name} needs the 'embeddings' input, which this method does not provide")


def _embeddings(inputs: dict[str, np.ndarray], name: str, normalise=_normalise) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' ``[N, F]`` and the labeled set's ``[L, F]`` embeddings, rows made unit by ``normalise``
    (float64 for the exact methods, ``scale.normalise32`` for the large-pool path)."""
    _require_embeddings(inputs, name)
    cand = normalise(inputs["embeddings"])
    lab = inputs.get("labeled_embeddings")
    lab = normalise(lab) if lab is not None and len(lab) else np.zeros((0, cand.shape[1]), cand.dtype)
    return cand, lab


TYPICALITY_REFERENCE = 4096  # a larger cluster's typicality is measured against this many random members
PURITY_QUERIES = 5000  # points whose ball purity estimates ProbCover's automatic radius on a large pool
RADIUS_PAIRS = 2_000_000  # sampled distances whose quantiles are the candidate radii on a large pool


class _SequentialStrategy(QueryStrategy):
    """A strategy that chooses its queries one after another (not a ranking of per-candidate scores).

    Args:
        max_exact_pool: pools of at most this many candidates run the exact method; larger ones the
            bounded-memory version (see the module docstring).
    """

    needs = frozenset({"embeddings"})
    name = "diversity"

    def __init__(self, max_exact_pool: int = 5000):
        super().__init__(per_class=False)
        if max_exact_pool < 0:
            raise ConfigError(f"The 'max_exact_pool' parameter of strategy {self.name} must be >= 0; "
                              f"got {max_exact_pool} instead")
        self.max_exact_pool = int(max_exact_pool)

    def large(self, inputs: dict[str, np.ndarray]) -> bool:
        """Whether this pool takes the bounded-memory path."""
        return len(inputs["index"]) > self.max_exact_pool

    def choose(self, inputs: dict[str, np.ndarray], k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise TypeError(f"{type(self).__name__} must implement choose()")

    def select(self, inputs: dict[str, np.ndarray], k: int, rng: np.random.Generator,
               per_class_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        n = len(inputs["index"])
        k = min(k, n)
        if k == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(n)
        chosen, scores = self.choose(inputs, k, rng)
        return np.asarray(chosen, dtype=np.int64), np.asarray(scores, dtype=np.float64)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    seed = int(rng.integers(2**31 - 1))
    if len(x) > 5000:
        return MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=1024).fit_predict(x)
    return KMeans(k, random_state=seed, n_init=3).fit_predict(x)


@STRATEGIES.register("typiclust")
class TypiClustStrategy(_SequentialStrategy):
    """TypiClust: the most typical candidate of each of the largest clusters the labeled set does not cover.

    Args:
        neighbours: neighbours in the typicality (inverse mean distance to them; the paper: 20).
        max_clusters: clustering uses at most this many clusters (the paper caps at 500).
        max_exact_pool: larger pools take the bounded-memory path (module docstring).
    """

    name = "typiclust"

    def __init__(self, neighbours: int = 20, max_clusters: int = 500, max_exact_pool: int = 5000):
        super().__init__(max_exact_pool)
        if neighbours < 1 or max_clusters < 2:
            raise ConfigError(f"strategy typiclust needs neighbours >= 1 and max_clusters >= 2; got {neighbours}, "
                              f"{max_clusters}")
        self.neighbours, self.max_clusters = int(neighbours), int(max_clusters)

    def choose(self, inputs, k, rng):
        if self.large(inputs):
            return self._choose_large(inputs, k, rng)
        cand, lab = _embeddings(inputs, self.name)
        allx = np.concatenate([lab, cand])
        n_clusters = int(min(len(lab) + k, self.max_clusters, len(allx)))
        clusters = _kmeans(allx, n_clusters, rng)
        lab_c, cand_c = clusters[: len(lab)], clusters[len(lab):]
        covered = np.bincount(lab_c, minlength=n_clusters)
        size = np.bincount(cand_c, minlength=n_clusters)
        typ = np.zeros(len(cand))
        for c in np.nonzero(size)[0]:
            members = np.nonzero(cand_c == c)[0]
            d = np.sqrt(_sq_dist(cand[members], allx[clusters == c]))
            d.sort(axis=1)
            nn = d[:, 1: self.neighbours + 1]  # skip the distance to itself
            typ[members] = 1.0 / (nn.mean(1) + 1e-8) if nn.shape[1] else 1.0
        chosen: list[int] = []
        taken = np.zeros(len(cand), bool)
        while len(chosen) < k:
            # the largest cluster with the fewest labeled (and already chosen) members and a candidate left
            open_ = np.array([c for c in range(n_clusters) if (~taken & (cand_c == c)).any()])
            best = open_[np.lexsort((-size[open_], covered[open_]))[0]]
            members = np.nonzero(~taken & (cand_c == best))[0]
            pick = int(members[np.argmax(typ[members])])
            chosen.append(pick)
            taken[pick] = True
            covered[best] += 1
        return chosen, typ

    def _choose_large(self, inputs, k, rng):
        _require_embeddings(inputs, self.name)
        given = inputs.get("labeled_embeddings")
        given = given if given is not None else np.zeros((0, inputs["embeddings"].shape[1]))
        allx = np.empty((len(given) + len(inputs["embeddings"]), inputs["embeddings"].shape[1]), np.float32)
        lab = scale.normalise32(given, out=allx[: len(given)])  # views into allx: one copy of the pool
        cand = scale.normalise32(inputs["embeddings"], out=allx[len(given):])
        n_clusters = int(min(len(lab) + k, self.max_clusters, len(allx)))
        clusters = _kmeans(allx, n_clusters, rng)
        cand_c = clusters[len(lab):]
        covered = np.bincount(clusters[: len(lab)], minlength=n_clusters)
        size = np.bincount(cand_c, minlength=n_clusters)
        by_cluster = np.argsort(clusters, kind="stable")  # members of each cluster, ascending
        bounds = np.concatenate([[0], np.cumsum(np.bincount(clusters, minlength=n_clusters))])
        typ = np.zeros(len(cand))
        for c in np.nonzero(size)[0]:
            members = by_cluster[bounds[c]: bounds[c + 1]]  # rows of allx
            refs = members
            if len(refs) > TYPICALITY_REFERENCE:
                refs = np.sort(rng.choice(members, TYPICALITY_REFERENCE, replace=False))
            queries = members[members >= len(lab)]
            mean_d = scale.mean_knn_distance(allx[queries], allx[refs], self.neighbours, np.isin(queries, refs))
            typ[queries - len(lab)] = np.where(np.isnan(mean_d), 1.0, 1.0 / (mean_d + 1e-8))
        # each cluster's candidates, most typical first (ties: lower index), as the exact loop's argmax takes them
        order = np.lexsort((np.arange(len(cand)), -typ, cand_c))
        first = np.concatenate([[0], np.cumsum(size)])
        taken = np.zeros(n_clusters, np.int64)
        chosen: list[int] = []
        while len(chosen) < k:
            open_ = np.nonzero(taken < size)[0]
            best = open_[np.lexsort((-size[open_], covered[open_]))[0]]
            chosen.append(int(order[first[best] + taken[best]]))
            taken[best] += 1
            covered[best] += 1
        return chosen, typ


@STRATEGIES.register("probcover")
class ProbCoverStrategy(_SequentialStrategy):
    """ProbCover: greedily the candidate whose delta-ball covers the most points not yet covered.

    Args:
        radius: delta (distance between normalised embeddings); ``None`` picks the largest radius whose balls
            are at least ``purity`` pure with respect to a k-means clustering (the paper's rule).
        purity: the purity threshold of the automatic radius (the paper: 0.95).
        max_exact_pool: larger pools take the bounded-memory path (module docstring).
        sample_size: on a larger pool, coverage is counted on this many random candidates (memory: the square
            of it in bits, 312 MB at 50,000).
    """

    name = "probcover"

    def __init__(self, radius: float | None = None, purity: float = 0.95, max_exact_pool: int = 5000,
                 sample_size: int = 50_000):
        super().__init__(max_exact_pool)
        if sample_size < 1:
            raise ConfigError(f"The 'sample_size' parameter of strategy probcover must be >= 1; got {sample_size} "
                              "instead")
        self.sample_size = int(sample_size)
        if radius is not None and radius <= 0:
            raise ConfigError(f"strategy probcover needs radius > 0 (or null for automatic); got {radius}")
        if not 0 < purity <= 1:
            raise ConfigError(f"strategy probcover needs purity in (0, 1]; got {purity}")
        self.radius, self.purity = radius, float(purity)

    def auto_radius(self, x: np.ndarray, n_classes: int, rng: np.random.Generator) -> float:
        clusters = _kmeans(x, max(2, n_classes), rng)
        d = np.sqrt(_sq_dist(x, x))
        same = clusters[:, None] == clusters[None, :]
        best = float(np.quantile(d[d > 0], 0.01)) if (d > 0).any() else 1.0
        for r in np.quantile(d[d > 0], np.linspace(0.01, 0.5, 50)) if (d > 0).any() else []:
            ball = d <= r
            pure = (~ball | same).all(1).mean()
            if pure >= self.purity:
                best = float(r)
            else:
                break
        return best

    def choose(self, inputs, k, rng):
        if self.large(inputs):
            return self._choose_large(inputs, k, rng)
        cand, lab = _embeddings(inputs, self.name)
        labels = inputs.get("labeled_labels")
        n_classes = len(np.unique(labels)) if labels is not None and len(labels) else 2
        allx = np.concatenate([lab, cand])
        radius = self.radius if self.radius is not None else self.auto_radius(allx, n_classes, rng)
        ball = _sq_dist(cand, allx) <= radius * radius  # candidate i covers point j
        covered = np.zeros(len(allx), bool)
        if len(lab):
            covered |= (_sq_dist(lab, allx) <= radius * radius).any(0)
        degree = ball.sum(1).astype(np.float64)
        chosen: list[int] = []
        taken = np.zeros(len(cand), bool)
        while len(chosen) < k:
            gain = (ball & ~covered).sum(1).astype(np.float64)
            gain[taken] = -1
            if gain.max() <= 0:  # everything covered: the paper falls back to random
                rest = np.nonzero(~taken)[0]
                pick = int(rng.choice(rest))
            else:
                pick = int(np.argmax(gain))
            chosen.append(pick)
            taken[pick] = True
            covered |= ball[pick]
        return chosen, degree

    def large_radius(self, x: np.ndarray, n_classes: int, rng: np.random.Generator) -> float:
        """``auto_radius`` without the ``N x N`` matrix: a ball is pure when it holds no point of another
        cluster, i.e. when its radius is below the centre's distance to the nearest such point."""
        clusters = _kmeans(x, max(2, n_classes), rng)
        dists = scale.pairwise_distance_sample(x, rng, RADIUS_PAIRS)
        if not len(dists):
            return 1.0
        grid = np.quantile(dists, np.linspace(0.01, 0.5, 50))
        queries = np.arange(len(x)) if len(x) <= PURITY_QUERIES else np.sort(rng.choice(len(x), PURITY_QUERIES,
                                                                                         replace=False))
        other = scale.nearest_other_group(queries, x, clusters)
        best = float(grid[0])
        for r in grid:
            if (other > r).mean() >= self.purity:
                best = float(r)
            else:
                break
        return best

    def _choose_large(self, inputs, k, rng):
        cand, lab = _embeddings(inputs, self.name, scale.normalise32)
        labels = inputs.get("labeled_labels")
        n_classes = len(np.unique(labels)) if labels is not None and len(labels) else 2
        sample = np.arange(len(cand))
        if len(cand) > self.sample_size:
            sample = np.sort(rng.choice(len(cand), self.sample_size, replace=False))
        points = np.concatenate([lab, cand[sample]])
        radius = self.radius if self.radius is not None else self.large_radius(points, n_classes, rng)
        balls = scale.ball_bits(points[len(lab):], points, radius)  # [S, ceil(P / 8)]: candidate covers point
        covered = scale.min_sq_dist(points, lab) <= np.float32(radius) ** 2  # within a labeled image's ball
        picks, _ = scale.greedy_max_cover(balls, np.packbits(covered), k)
        chosen = sample[picks].tolist()
        if len(chosen) < k:  # everything covered: the paper falls back to random
            rest = np.setdiff1d(np.arange(len(cand)), chosen)
            chosen += rng.choice(rest, k - len(chosen), replace=False).tolist()
        degree = np.full(len(cand), np.nan)
        degree[sample] = scale.ball_sizes(balls)
        return chosen, degree


@STRATEGIES.register("coreset")
class CoresetStrategy(_SequentialStrategy):
    """Core-set k-center greedy: each query is the candidate farthest from the labeled set and earlier queries.

    Args:
        max_exact_pool: larger pools take the bounded-memory path (module docstring).
    """

    name = "coreset"

    def choose(self, inputs, k, rng):
        if self.large(inputs):
            return self._choose_large(inputs, k, rng)
        cand, lab = _embeddings(inputs, self.name)
        dmin = _sq_dist(cand, lab).min(1) if len(lab) else None
        scores = np.sqrt(dmin) if dmin is not None else np.zeros(len(cand))
        chosen: list[int] = []
        for _ in range(k):
            if dmin is None:  # nothing labeled yet: start anywhere
                pick = int(rng.integers(len(cand)))
                dmin = _sq_dist(cand, cand[pick: pick + 1])[:, 0]
            else:
                d = dmin.copy()
                d[chosen] = -1.0
                pick = int(np.argmax(d))
                dmin = np.minimum(dmin, _sq_dist(cand, cand[pick: pick + 1])[:, 0])
            chosen.append(pick)
        return chosen, scores

    def _choose_large(self, inputs, k, rng):
        cand, lab = _embeddings(inputs, self.name, scale.normalise32)
        cand_sq = scale.sq_norms(cand)
        dmin = scale.min_sq_dist(cand, lab) if len(lab) else None
        scores = np.sqrt(dmin) if dmin is not None else np.zeros(len(cand))
        chosen: list[int] = []
        for _ in range(k):
            pick = int(rng.integers(len(cand))) if dmin is None else int(np.argmax(dmin))
            d = scale.sq_dist_to(cand, cand_sq, pick)
            dmin = d.astype(np.float64) if dmin is None else np.minimum(dmin, d, out=dmin)
            dmin[pick] = -1.0  # chosen: never the farthest again
            chosen.append(pick)
        return chosen, scores


@STRATEGIES.register("badge")
class BadgeStrategy(_SequentialStrategy):
    """BADGE: k-means++ seeding on the last layer's hypothetical gradient embeddings.

    Args:
        max_exact_pool: larger pools take the bounded-memory path (module docstring).
    """

    needs = frozenset({"mc", "embeddings"})
    name = "badge"

    @staticmethod
    def _gradient_factors(inputs) -> np.ndarray:
        """``p - onehot(argmax p)`` ``[N, K]``: the gradient embedding is this times the features."""
        prob_keys = sorted((c for c in inputs if c.startswith("prob_")), key=lambda c: int(c.split("_")[1]))
        if not prob_keys:
            raise ConfigError("strategy badge needs class probabilities (prob_0, prob_1, ... of the 'mc' input)")
        p = np.stack([np.asarray(inputs[c], dtype=np.float64) for c in prob_keys], 1)
        g = p.copy()
        g[np.arange(len(p)), p.argmax(1)] -= 1.0
        return g

    def choose(self, inputs, k, rng):
        if self.large(inputs):
            return self._choose_large(inputs, k, rng)
        h = np.asarray(inputs["embeddings"], dtype=np.float64)
        g = self._gradient_factors(inputs)
        emb = (g[:, :, None] * h[:, None, :]).reshape(len(h), -1)
        norms = np.sqrt((emb * emb).sum(1))
        first = int(np.argmax(norms))
        chosen = [first]
        d2 = _sq_dist(emb, emb[first: first + 1])[:, 0]
        while len(chosen) < k:
            d2[chosen] = 0.0
            total = d2.sum()
            if total <= 0:
                rest = np.setdiff1d(np.arange(len(emb)), chosen)
                pick = int(rng.choice(rest))
            else:
                pick = int(rng.choice(len(emb), p=d2 / total))
            chosen.append(pick)
            d2 = np.minimum(d2, _sq_dist(emb, emb[pick: pick + 1])[:, 0])
        return chosen, norms

    def _choose_large(self, inputs, k, rng):
        g = self._gradient_factors(inputs)  # [N, K]
        h = np.asarray(inputs["embeddings"], dtype=np.float32)  # [N, F]
        sq = (g * g).sum(1) * scale.sq_norms(h).astype(np.float64)  # |g_i x h_i|^2
        norms = np.sqrt(sq)

        def d2_to(j: int) -> np.ndarray:
            d = -2.0 * (g @ g[j]) * (h @ h[j])
            d += sq
            d += sq[j]
            return np.maximum(d, 0.0, out=d)

        first = int(np.argmax(norms))
        chosen = [first]
        d2 = d2_to(first)
        d2[first] = 0.0
        while len(chosen) < k:
            total = d2.sum()
            if total <= 0:
                rest = np.setdiff1d(np.arange(len(g)), chosen)
                pick = int(rng.choice(rest))
            else:  # rng.choice(N, p=d2 / total) without its O(N) checks, drawing the same uniform number
                cdf = np.cumsum(d2)
                cdf /= cdf[-1]
                pick = int(cdf.searchsorted(rng.random(), side="right"))
            chosen.append(pick)
            np.minimum(d2, d2_to(pick), out=d2)
            d2[pick] = 0.0
        return chosen, norms
