"""Round-to-round noise of active-learning runs: how much one track's test AUC moves between consecutive rounds.

Reads every ``tracks/*/rounds.jsonl`` of each run folder given (``medloop run`` or ``benchmarks/label_efficiency.py``
output) and prints, per run, the median absolute change of test AUC between consecutive rounds of a track and the
largest drop (0 when no track ever drops); a strategy's effect smaller than this is not visible in one track. It
reads the per-round logs, so a run still in progress can be measured too. Final line JSON, per run folder:

    {"RUN": {"median_abs_change", "largest_drop", "round_pairs"}, ...}

    python benchmarks/round_noise.py runs/label-efficiency-tb runs/other-run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medloop.storage import read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    out = {}
    for run in args.runs:
        changes, drops = [], []
        for path in sorted(run.glob("tracks/*/rounds.jsonl")):
            auc = [r["test"]["auc"] for r in read_jsonl(path) if r["test"].get("auc") is not None]
            if len(auc) > 1:
                d = np.diff(auc)
                changes += np.abs(d).tolist()
                drops.append(max(float(-d.min()), 0.0))
        if not changes:
            raise SystemExit(f"{run}: no track with two or more rounds (tracks/*/rounds.jsonl); check the folder")
        out[str(run)] = {"median_abs_change": round(float(np.median(changes)), 4),
                         "largest_drop": round(max(drops), 4), "round_pairs": len(changes)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
