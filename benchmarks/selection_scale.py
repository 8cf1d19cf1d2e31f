"""Selection at scale: time, memory and quality of the diversity strategies (coreset, badge, typiclust, probcover).

Pools are --dim-d embeddings drawn around 100 Gaussian centres (float32, as a trunk returns them), with
--labeled labeled embeddings and two-class probabilities for BADGE. Every (strategy, pool size) runs in a fresh
process with one BLAS/OpenMP thread, which reports the seconds of ``select``, the peak of numpy's allocations
during it (tracemalloc) and the process's peak resident memory (the pool itself included).

Quality, on a pool of --quality-size (10,000): the exact method (``max_exact_pool`` above the pool) and the
large-pool path (``max_exact_pool=0``) choose from the same pool with the same seed and are compared on what
each optimises, lower is better: coverage radius (largest distance from a candidate to the labeled set and
the queries) for coreset and probcover, plus probcover's uncovered share at one radius (the large path's
estimate on this pool); k-means cost of the queries as centres for typiclust (on the normalised features) and
badge (on its gradient embeddings). ``ratio`` = large / exact (1.05 = 5% worse).

    python benchmarks/selection_scale.py [--sizes 10000,100000,1000000] [--k 1000] [--strategies coreset,badge]

Final line (JSON): {"strategies": {name: {"runs": [{n, seconds, tracemalloc_peak_mb, peak_rss_mb}, ...],
"quality": {...}}}, "k": ..., "dim": ..., "threads": 1, "load_avg": [...]}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STRATEGIES = ("coreset", "badge", "typiclust", "probcover")
N_CENTRES = 100


def make_pool(n: int, n_labeled: int, dim: int, seed: int):
    """Embeddings ``[n, dim]`` (float32) around ``N_CENTRES`` centres, the labeled set, and class probabilities."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = (rng.normal(size=(N_CENTRES, dim)) * 1.5).astype(np.float32)
    w = rng.normal(size=dim).astype(np.float32) / np.sqrt(dim)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for start in range(0, m, 100_000):
            stop = min(start + 100_000, m)
            out[start:stop] = centres[rng.integers(N_CENTRES, size=stop - start)]
            out[start:stop] += rng.standard_normal((stop - start, dim), dtype=np.float32)
        return out

    x, lab = draw(n), draw(n_labeled)
    prob_1 = 1.0 / (1.0 + np.exp(-(x @ w).astype(np.float64)))
    return {"index": np.arange(n), "embeddings": x, "labeled_embeddings": lab,
            "labeled_labels": rng.integers(2, size=n_labeled), "prob_0": 1.0 - prob_1, "prob_1": prob_1}


def run_one(name: str, n: int, args: argparse.Namespace, exact: bool) -> dict:
    """In this process: one selection, timed and measured."""
    import resource
    import tracemalloc

    import numpy as np

    from medloop.query import build_strategy

    cols = make_pool(n, args.labeled, args.dim, args.seed)
    strategy = build_strategy(name, {"max_exact_pool": n if exact else 0})
    tracemalloc.start()
    start = time.perf_counter()
    chosen, _ = strategy.select(cols, args.k, np.random.default_rng(args.seed))
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"n": n, "exact": exact, "seconds": round(seconds, 2), "tracemalloc_peak_mb": round(peak / 2**20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "chosen": [int(i) for i in chosen]}


def in_child(name: str, n: int, args: argparse.Namespace, exact: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--one", name, str(n), "--k", str(args.k), "--dim", str(args.dim),
           "--labeled", str(args.labeled), "--seed", str(args.seed)] + (["--exact"] if exact else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        return {"n": n, "exact": exact, "error": done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name} n={n} {'exact' if exact else 'large-pool path'}: {result['seconds']}s, "
          f"tracemalloc {result['tracemalloc_peak_mb']} MB, rss {result['peak_rss_mb']} MB", flush=True)
    return result


def quality(name: str, cols: dict, chosen, radius: float) -> dict:
    """What each method optimises on the pool (lower is better), computed exactly in blocks."""
    import numpy as np

    from medloop.query import scale
    from medloop.query.diversity import BadgeStrategy

    chosen = np.asarray(chosen)
    if name == "badge":
        g = BadgeStrategy._gradient_factors(cols)
        h = cols["embeddings"].astype(np.float64)
        emb = (g[:, :, None] * h[:, None, :]).reshape(len(h), -1)
        return {"kmeans_cost": float(scale.min_sq_dist(emb, emb[chosen]).sum())}
    x, lab = scale.normalise32(cols["embeddings"]), scale.normalise32(cols["labeled_embeddings"])
    d2 = scale.min_sq_dist(x, np.concatenate([lab, x[chosen]]))
    if name == "typiclust":
        return {"kmeans_cost": float(d2.sum())}
    out = {"coverage_radius": float(np.sqrt(d2.max()))}
    if name == "probcover":
        out.update(uncovered_share=float((d2 > radius * radius).mean()), radius=radius)
    return out


def compare(name: str, args: argparse.Namespace) -> dict:
    import numpy as np

    from medloop.query import build_strategy, scale

    n = args.quality_size
    exact, large = in_child(name, n, args, exact=True), in_child(name, n, args)
    if "error" in exact or "error" in large:
        return {"error": exact.get("error") or large.get("error")}
    cols = make_pool(n, args.labeled, args.dim, args.seed)
    radius = 0.0
    if name == "probcover":
        points = np.concatenate([scale.normalise32(cols["labeled_embeddings"]), scale.normalise32(cols["embeddings"])])
        radius = build_strategy("probcover").large_radius(points, 2, np.random.default_rng(args.seed))
    q_exact, q_large = quality(name, cols, exact["chosen"], radius), quality(name, cols, large["chosen"], radius)
    return {"n": n, "exact_seconds": exact["seconds"], "exact_peak_rss_mb": exact["peak_rss_mb"],
            "large_seconds": large["seconds"], "exact": q_exact, "large": q_large,
            "ratio": {key: round(q_large[key] / q_exact[key], 4) if q_exact[key] else None for key in q_exact
                      if key != "radius"},
            "same_choices": len(set(exact["chosen"]) & set(large["chosen"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--k", type=int, default=1000, help="queries per selection")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--labeled", type=int, default=100)
    parser.add_argument("--quality-size", type=int, default=10_000, help="0: skip the comparison with the exact method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", nargs=2, metavar=("STRATEGY", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args, args.exact)))
        return
    names = [s for s in args.strategies.split(",") if s]
    for name in names:
        if name not in STRATEGIES:
            parser.error(f"--strategies: unknown strategy '{name}'; choose from {', '.join(STRATEGIES)}")
    result: dict = {"strategies": {}}
    for name in names:
        entry: dict = {"runs": []}
        if args.quality_size:
            entry["quality"] = compare(name, args)
        for n in (int(s) for s in args.sizes.split(",") if s):
            run = in_child(name, n, args)
            run.pop("chosen", None)
            run.pop("exact", None)
            entry["runs"].append(run)
        result["strategies"][name] = entry
    result.update(k=args.k, dim=args.dim, labeled=args.labeled, threads=1,
                  load_avg=[round(v, 2) for v in os.getloadavg()])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
