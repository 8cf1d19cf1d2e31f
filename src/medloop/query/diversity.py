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
"""

from __future__ import annotations

import numpy as np

from medloop.errors import ConfigError
from medloop.query.strategies import STRATEGIES, QueryStrategy

__all__ = ["TypiClustStrategy", "ProbCoverStrategy", "CoresetStrategy", "BadgeStrategy"]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


def _embeddings(inputs: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
    if "embeddings" not in inputs:
        raise ConfigError(f"strategy {name} needs the 'embeddings' input, which this method does not provide")
    cand = _normalise(inputs["embeddings"])
    lab = inputs.get("labeled_embeddings")
    lab = _normalise(lab) if lab is not None and len(lab) else np.zeros((0, cand.shape[1]))
    return cand, lab


class _SequentialStrategy(QueryStrategy):
    """A strategy that chooses its queries one after another (not a ranking of per-candidate scores)."""

    needs = frozenset({"embeddings"})

    def __init__(self):
        super().__init__(per_class=False)

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
    """

    def __init__(self, neighbours: int = 20, max_clusters: int = 500):
        super().__init__()
        if neighbours < 1 or max_clusters < 2:
            raise ConfigError(f"strategy typiclust needs neighbours >= 1 and max_clusters >= 2; got {neighbours}, "
                              f"{max_clusters}")
        self.neighbours, self.max_clusters = int(neighbours), int(max_clusters)

    def choose(self, inputs, k, rng):
        cand, lab = _embeddings(inputs, "typiclust")
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


@STRATEGIES.register("probcover")
class ProbCoverStrategy(_SequentialStrategy):
    """ProbCover: greedily the candidate whose delta-ball covers the most points not yet covered.

    Args:
        radius: delta (distance between normalised embeddings); ``None`` picks the largest radius whose balls
            are at least ``purity`` pure with respect to a k-means clustering (the paper's rule).
        purity: the purity threshold of the automatic radius (the paper: 0.95).
    """

    def __init__(self, radius: float | None = None, purity: float = 0.95):
        super().__init__()
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
        cand, lab = _embeddings(inputs, "probcover")
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


@STRATEGIES.register("coreset")
class CoresetStrategy(_SequentialStrategy):
    """Core-set k-center greedy: each query is the candidate farthest from the labeled set and earlier queries."""

    def choose(self, inputs, k, rng):
        cand, lab = _embeddings(inputs, "coreset")
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


@STRATEGIES.register("badge")
class BadgeStrategy(_SequentialStrategy):
    """BADGE: k-means++ seeding on the last layer's hypothetical gradient embeddings."""

    needs = frozenset({"mc", "embeddings"})

    def choose(self, inputs, k, rng):
        h = np.asarray(inputs["embeddings"], dtype=np.float64)
        prob_keys = sorted((c for c in inputs if c.startswith("prob_")), key=lambda c: int(c.split("_")[1]))
        if not prob_keys:
            raise ConfigError("strategy badge needs class probabilities (prob_0, prob_1, ... of the 'mc' input)")
        p = np.stack([np.asarray(inputs[c], dtype=np.float64) for c in prob_keys], 1)
        g = p.copy()
        g[np.arange(len(p)), p.argmax(1)] -= 1.0
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
