"""Bounded-memory building blocks for the diversity strategies on large pools.

The exact strategies (``medloop.query.diversity``) hold pool x pool distance matrices: on a pool of a million
embeddings that is terabytes. These helpers stream distances in row blocks of at most ``CHUNK_BYTES`` and keep
only what a strategy needs from each block: a running minimum (k-center), the nearest neighbours within a
cluster (typicality), the nearest point of another cluster (ProbCover's purity) or one bit per (centre, point)
pair (ball membership for coverage).

Distances are computed in float32 from L2-normalised rows: float32's relative error of about 1e-7 moves a
distance between unit vectors by about 3e-4 at most, far below any radius or margin the strategies use, and it
halves memory and time against float64.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import numpy as np

__all__ = ["CHUNK_BYTES", "row_blocks", "normalise32", "sq_norms", "sq_dist_block", "sq_dist_to", "min_sq_dist",
           "mean_knn_distance", "nearest_other_group", "pairwise_distance_sample", "ball_bits", "ball_sizes",
           "greedy_max_cover"]

CHUNK_BYTES = 64 * 2**20  # one block of distances; a few such blocks are alive at once


def row_blocks(n_rows: int, n_cols: int, itemsize: int = 4) -> Iterator[slice]:
    """Consecutive row slices whose ``[rows, n_cols]`` block of ``itemsize``-byte values fits ``CHUNK_BYTES``."""
    step = max(1, CHUNK_BYTES // max(1, n_cols * itemsize))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def normalise32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32 (into ``out`` if given), without a float64
    copy of the whole array."""
    x = np.asarray(x)
    out = np.empty(x.shape, np.float32) if out is None else out
    for rows in row_blocks(len(x), x.shape[1], 8):
        block = np.asarray(x[rows], dtype=np.float64)
        out[rows] = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return out


def sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def sq_dist_block(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared distances ``[len(a), len(b)]`` from precomputed squared norms, clipped at 0 (rounding)."""
    d = a @ b.T
    d *= -2
    d += a_sq[:, None]
    d += b_sq[None, :]
    return np.maximum(d, 0, out=d)


def sq_dist_to(x: np.ndarray, x_sq: np.ndarray, j: int) -> np.ndarray:
    """Squared distances ``[N]`` from every row of ``x`` to row ``j``: one matrix-vector product."""
    d = x @ x[j]
    d *= -2
    d += x_sq
    d += x_sq[j]
    return np.maximum(d, 0, out=d)


def min_sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a)]`` squared distance (float64) from each row of ``a`` to its nearest row of ``b`` (inf if none)."""
    out = np.full(len(a), np.inf)
    if len(b) == 0:
        return out
    a_sq, b_sq = sq_norms(a), sq_norms(b)
    for rows in row_blocks(len(a), len(b)):
        out[rows] = sq_dist_block(a[rows], a_sq[rows], b, b_sq).min(1)
    return out


def mean_knn_distance(queries: np.ndarray, refs: np.ndarray, k: int, self_in_refs: np.ndarray) -> np.ndarray:
    """Mean distance ``[Q]`` of each query to its ``k`` nearest rows of ``refs``; where ``self_in_refs`` the nearest
    one (the query itself) is skipped. NaN where no neighbour is left (a cluster of one)."""
    out = np.full(len(queries), np.nan)
    if len(refs) == 0:
        return out
    q_sq, r_sq = sq_norms(queries), sq_norms(refs)
    m = min(k + 1, len(refs))
    for rows in row_blocks(len(queries), len(refs)):
        d = sq_dist_block(queries[rows], q_sq[rows], refs, r_sq)
        near = np.partition(d, m - 1, axis=1)[:, :m] if m < len(refs) else d
        near = np.sqrt(np.sort(near, axis=1), dtype=np.float64)
        skip = self_in_refs[rows]
        with_self, without_self = near[:, 1:k + 1], near[:, :k]
        if with_self.shape[1]:
            out[rows] = np.where(skip, with_self.mean(1), without_self.mean(1))
        else:
            out[rows] = np.where(skip, np.nan, without_self.mean(1))
    return out


def nearest_other_group(queries: np.ndarray, points: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``[Q]`` distance from each of ``points[queries]`` to the nearest point of another group (inf if none)."""
    p_sq = sq_norms(points)
    out = np.full(len(queries), np.inf)
    for rows in row_blocks(len(queries), len(points), 5):  # float32 distances + a bool mask per pair
        q = queries[rows]
        d = sq_dist_block(points[q], p_sq[q], points, p_sq)
        d[groups[q][:, None] == groups[None, :]] = np.inf
        out[rows] = np.sqrt(d.min(1))
    return out


def pairwise_distance_sample(points: np.ndarray, rng: np.random.Generator, max_pairs: int) -> np.ndarray:
    """The positive distances between distinct points: all ordered pairs when there are at most ``max_pairs``,
    else ``max_pairs`` uniformly drawn ones (their quantiles estimate the full distribution's). A point's distance
    to itself is left out explicitly: in float32 it rounds to about 3e-4, not 0."""
    n = len(points)
    p_sq = sq_norms(points)
    if n * n <= max_pairs:
        blocks = []
        for rows in row_blocks(n, n):
            d = sq_dist_block(points[rows], p_sq[rows], points, p_sq)
            d[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = 0
            blocks.append(d[d > 0])
        return np.sqrt(np.concatenate(blocks), dtype=np.float64)
    i, j = rng.integers(n, size=max_pairs), rng.integers(n, size=max_pairs)
    i, j = i[i != j], j[i != j]
    out = np.empty(len(i))
    for rows in row_blocks(len(i), points.shape[1]):
        out[rows] = np.sqrt(sq_norms(points[i[rows]] - points[j[rows]]))
    return out[out > 0]


def ball_bits(centres: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    """``[len(centres), ceil(len(points) / 8)]`` uint8: bit j of row i is set when point j lies within ``radius``
    of centre i (``np.packbits`` order). One bit per pair: 50,000 x 50,000 pairs take 312 MB."""
    p_sq, c_sq = sq_norms(points), sq_norms(centres)
    out = np.empty((len(centres), (len(points) + 7) // 8), np.uint8)
    r2 = np.float32(radius) ** 2
    for rows in row_blocks(len(centres), len(points)):
        out[rows] = np.packbits(sq_dist_block(centres[rows], c_sq[rows], points, p_sq) <= r2, axis=1)
    return out


def ball_sizes(balls: np.ndarray) -> np.ndarray:
    """``[len(balls)]`` points in each ball of ``ball_bits``."""
    if not len(balls):
        return np.zeros(0, np.int64)
    return np.concatenate([np.bitwise_count(balls[rows]).sum(1, dtype=np.int64)
                           for rows in row_blocks(len(balls), balls.shape[1], 1)])


def _gain(balls: np.ndarray, uncovered: np.ndarray) -> np.ndarray:
    return np.bitwise_count(balls & uncovered).sum(-1, dtype=np.int64)


def greedy_max_cover(balls: np.ndarray, covered: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """Up to ``k`` rows of ``balls`` (packed bits), each the one that covers the most points not yet covered
    (ties: the lowest row), the same choices as the plain greedy; stops early once no row covers anything new.

    Gains only shrink as points get covered, so a row's last computed gain bounds its current one and only the
    rows reaching the top of a heap are re-counted (lazy greedy, Minoux 1978): near-linear instead of
    rows x points per query.

    Returns:
        the chosen rows and the packed ``covered`` bits after them.
    """
    uncovered = ~covered  # kept up to date rather than inverted at every gain (padding bits: balls have none)
    gains = np.concatenate([_gain(balls[rows], uncovered) for rows in row_blocks(len(balls), balls.shape[1], 1)])
    heap = list(zip((-gains).tolist(), range(len(balls))))
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap and len(chosen) < k:
        _, i = heapq.heappop(heap)
        gain = int(_gain(balls[i], uncovered))
        if heap and (-gain, i) > heap[0]:  # another row may now cover more: re-queue with the true gain
            heapq.heappush(heap, (-gain, i))
            continue
        if gain <= 0:
            break
        chosen.append(i)
        uncovered &= ~balls[i]
    return chosen, covered | ~uncovered
