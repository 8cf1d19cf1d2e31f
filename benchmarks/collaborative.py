"""Collaborative segmentation (Ravanbakhsh et al.): Dice by budget for the discriminator and random queries,
the fully supervised cGAN, and the discriminator-Dice correlation. Final line JSON:

    {"fsl_dice": {"myocardium": .., "blood_pool": ..}, "dice_at_budget": {"0.1": {..}},
     "random_dice_at_budget": {..}, "pearson_r": .., "p_value": .., "minutes": ..}

On ACDC, ``--patients N`` uses the first N patients (sorted; both frames of each are volumes of one case, so
cross-validation by volume keeps a patient on one side). Runs ``experiments/ravanbakhsh2018.yaml`` with the
overrides given here.

    python benchmarks/collaborative.py --data ../shared/data/acdc-train --patients 10 --folds 5 --max-folds 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from medloop.config import parse_overrides
from medloop.loop import load_experiment_config, run_collaborative


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:cardiac-mr")
    ap.add_argument("--patients", type=int, default=None, help="ACDC: use the first N patients")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-folds", type=int, default=2)
    ap.add_argument("--budgets", default="0.1,0.3,0.5,0.7,0.9")
    ap.add_argument("--cycles", default="1")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", default="runs/collaborative")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="experiment override key=value (dotted keys)")
    args = ap.parse_args()
    started = time.time()
    source = args.data
    tmp = None
    if args.patients and not source.startswith("builtin:"):
        tmp = tempfile.TemporaryDirectory()
        patients = sorted(p for p in Path(source).iterdir() if p.is_dir() and p.name.startswith("patient"))[: args.patients]
        for p in patients:
            (Path(tmp.name) / p.name).symlink_to(p.resolve())
        source = tmp.name
    overrides = {"data.source": source, "data.size": args.size, "folds": args.folds, "max_folds": args.max_folds,
                 "budgets": [float(b) for b in args.budgets.split(",")],
                 "cycles": [int(c) for c in args.cycles.split(",")],
                 "strategies": ["discriminator", "random"], "pix2pix.epochs": args.epochs, **parse_overrides(args.set)}
    cfg = load_experiment_config(Path(__file__).parents[1] / "experiments" / "ravanbakhsh2018.yaml", overrides)
    results = run_collaborative(cfg, args.out, resume=args.resume)
    names = results["class_names"]

    def dice_of(tests: list[dict]) -> dict:
        out = {}
        for c in names.values():
            vals = [t["dice"][c] for t in tests if t["dice"].get(c) is not None]
            out[c.replace(" ", "_")] = round(float(np.mean(vals)), 4) if vals else None
        vals = [v for v in out.values() if v is not None]
        out["average"] = round(float(np.mean(vals)), 4) if vals else None
        return out

    def by_budget(label: str) -> dict:
        return {f"{float(b):g}": dice_of([recs[-1]["test"] for recs in folds.values()])
                for b, folds in results["tracks"][label].items()}

    n = cfg.cycles[0]
    summary = {
        "data": args.data, "patients": args.patients, "size": args.size, "folds": f"{results['data']['folds_run']} of {args.folds}",
        "n_slices": results["data"]["n_slices"], "n_volumes": results["data"]["n_volumes"], "cycles": n,
        "fsl_dice": dice_of([v["test"] for v in results["fsl"].values()]),
        "dice_at_budget": by_budget(f"discriminator-n{n}"),
        "random_dice_at_budget": by_budget(f"random-n{n}"),
        "pearson_r": results["correlation"]["pearson_r"], "p_value": results["correlation"]["p_value"],
        "n_slices_correlation": results["correlation"]["n_slices"],
        "minutes": round((time.time() - started) / 60, 2),
    }
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
