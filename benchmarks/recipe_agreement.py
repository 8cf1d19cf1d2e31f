"""Do two round recipes rank the strategies alike? Reads two runs of ``label_efficiency.py`` on the same seeds and
strategies (e.g. ``--recipe frozen`` and ``--recipe finetune``) and prints one JSON line.

    python benchmarks/label_efficiency.py --data ../shared/data/cxr-tb-256 --recipe finetune --seeds 3 \\
        --strategy badge,class_balanced,typiclust --out runs/le-finetune
    python benchmarks/label_efficiency.py --data ../shared/data/cxr-tb-256 --recipe frozen --seeds 3 \\
        --strategy badge,class_balanced,typiclust --set split_seed=null --out runs/le-frozen3
    python benchmarks/recipe_agreement.py runs/le-finetune runs/le-frozen3

Keys: ``strategies`` (the tracks both runs hold, ``al`` named by the strategy it ran), ``curve_area`` per run and
strategy (the mean over seeds of each seed's area over the labeled fractions every track of that run covers),
``rank`` per run (1 = best), ``spearman`` and ``kendall`` between the two rankings, ``pairs_same_order`` (of all
pairs of strategies, how many the two runs order alike), ``fsl_auc`` per run and seed side by side, and
``fsl_gap`` (first run's mean FSL minus the second's).
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau, spearmanr

from medloop.metrics.bootstrap import curve_area, fraction_range


def _tracks(results: dict) -> dict[str, dict]:
    """Tracks by strategy name (the first strategy of older runs is labelled ``al``)."""
    names = {spec.get("label", spec["name"]): spec["name"] for spec in
             ({"name": s} if isinstance(s, str) else s for s in results["config"]["strategies"])}
    return {names.get(label, label): by_seed for label, by_seed in results["tracks"].items()}


def areas(results: dict) -> dict[str, float]:
    tracks = _tracks(results)
    seeds = set.intersection(*(set(t) for t in tracks.values()))
    ranges = {s: fraction_range([t[s] for t in tracks.values()]) for s in seeds}
    return {name: float(np.mean([curve_area(by_seed[s], *ranges[s]) for s in seeds]))
            for name, by_seed in tracks.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs=2, help="two run folders (each with results.json)")
    args = ap.parse_args()
    results = [json.loads((Path(r) / "results.json").read_text()) for r in args.runs]
    by_run = [areas(r) for r in results]
    names = sorted(set(by_run[0]) & set(by_run[1]))
    a = [by_run[0][n] for n in names]
    b = [by_run[1][n] for n in names]
    rank = [{n: int(r) for n, r in zip(names, (len(x) - np.argsort(np.argsort(x))))} for x in (a, b)]
    same = sum(np.sign(a[i] - a[j]) == np.sign(b[i] - b[j]) for i, j in combinations(range(len(names)), 2))
    fsl = [{s: round(v["test"]["auc"], 4) for s, v in r["baselines"]["fsl"].items()} for r in results]
    print(json.dumps({
        "runs": args.runs, "strategies": names,
        "curve_area": {run: {n: round(x[n], 4) for n in names} for run, x in zip(args.runs, by_run)},
        "rank": dict(zip(args.runs, rank)),
        "spearman": round(float(spearmanr(a, b).statistic), 3), "kendall": round(float(kendalltau(a, b).statistic), 3),
        "pairs_same_order": f"{same}/{len(names) * (len(names) - 1) // 2}",
        "fsl_auc": dict(zip(args.runs, fsl)),
        "fsl_gap": round(float(np.mean(list(fsl[0].values())) - np.mean(list(fsl[1].values()))), 4)}))


if __name__ == "__main__":
    main()
