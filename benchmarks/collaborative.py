"""Collaborative segmentation (Ravanbakhsh et al.): Dice by budget for discriminator queries against plain random
and foreground random queries (random among the slices the current model says show a structure; nnActive's fair
baseline) on every fold, the fully supervised cGAN, the discriminator-Dice correlation, and the discriminator as
quality control. Final line JSON:

    {"fsl_dice": {"myocardium": .., "blood_pool": .., "average": ..}, "dice_at_budget": {"0.1": {..}},
     "random_dice_at_budget": {..}, "foreground_random_dice_at_budget": {..},
     "discriminator_minus_random": {"0.1": ..}, "discriminator_minus_random_ci": {"0.1": [lo, hi]},
     "discriminator_minus_foreground_random": {..}, "discriminator_minus_foreground_random_ci": {..},
     "verdicts": {"random": {"0.1": ..}, ..}, "qc_mae": .., "qc_auroc": .., "qc": {..},
     "budget_to_fsl": .., "pearson_r": .., "p_value": .., "pearson_r_fsl": .., "slices_per_s": .., "minutes": ..}

``discriminator_minus_*``: the mean over test patients (every fold's) of the paired difference in average Dice
after the last cycle; ``_ci`` its bootstrap 95% interval over the patients; ``verdicts``: "better" / "worse" only
when the bootstrap p-value, Holm-adjusted over every comparison, is below 0.05 (``medloop.report.collaborative``).
``qc_mae`` / ``qc_auroc``: the discriminator's plausibility calibrated to a Dice on the slices the expert labeled
in the discriminator track's first cycle (no test labels), applied to the base model's test slices of every fold
and every budget: the mean absolute error of the predicted Dice, and its AUROC for flagging slices with Dice below
0.7 (``qc``: the same for every strategy's calibration slices).

``pearson_r``: per-slice discriminator plausibility vs Dice of the base model (one volume) on the test patients;
``pearson_r_fsl``: the same for the fully supervised model. ``budget_to_fsl``: the smallest budget whose average
Dice (discriminator queries) is within 0.02 of FSL's (null if none). ``slices_per_s``: pix2pix training
throughput of one process (slices x epochs per second of training) over the active-learning cycles;
``slices_per_s_wall``: the same slices over the benchmark's wall time (every process, and everything else).

On ACDC, ``--patients N`` uses the first N patients (sorted; both frames of a patient are one case, so
cross-validation by case keeps a patient on one side). Runs ``experiments/ravanbakhsh2018.yaml`` with the
overrides given here; the defaults are the recommended CPU protocol (about an hour on 2 cores):

    python benchmarks/collaborative.py --data ../shared/data/acdc-train
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from medloop.config import parse_overrides
from medloop.loop import load_experiment_config, run_collaborative


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:cardiac-mr")
    ap.add_argument("--patients", type=int, default=10, help="ACDC: use the first N patients (0: all)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--crop", type=float, default=0.5, help="central fraction of the field of view kept")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-folds", type=int, default=0, help="run only the first N folds (0: all)")
    ap.add_argument("--budgets", default="0.1,0.3,0.5")
    ap.add_argument("--cycles", default="1")
    ap.add_argument("--strategies", default="discriminator,random,foreground_random")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes of one thread each (default: 2, or 1 on a one-core machine)")
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
    overrides = {"data.source": source, "data.size": args.size, "data.crop": args.crop, "folds": args.folds,
                 "max_folds": args.max_folds or None, "processes": args.processes, "budgets": [float(b) for b in args.budgets.split(",")],
                 "cycles": [int(c) for c in args.cycles.split(",")], "strategies": args.strategies.split(","),
                 "pix2pix.epochs": args.epochs, **parse_overrides(args.set)}
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
    fsl = dice_of([v["test"] for v in results["fsl"].values()])
    curves = {s: by_budget(f"{s}-n{n}") for s in args.strategies.split(",")}
    disc = curves.get("discriminator", {})
    close = [float(b) for b, d in disc.items() if fsl["average"] is not None and d["average"] is not None
             and d["average"] >= fsl["average"] - 0.02]
    comps = results.get("comparisons", {})
    ref = f"discriminator-n{n}"

    def diff(other: str, key: str) -> dict:
        """Per budget, the comparison's ``diff``, ``ci`` (rounded) or ``verdict``."""
        got = comps.get(f"{ref} - {other}-n{n}", {})
        return {f"{float(b):g}": v[key] if isinstance(v.get(key), str) or v.get(key) is None
                else np.round(v[key], 4).tolist() for b, v in got.items()}

    def r4(v):
        return None if v is None else round(v, 4)

    baselines = [s for s in args.strategies.split(",") if s != "discriminator"]
    qc = results.get("quality_control", {})
    qc_all = qc.get(ref, {}).get("all", {})
    recs = [r for lab in results["tracks"].values() for folds in lab.values() for rs in folds.values() for r in rs]
    seconds = sum(r.get("train_seconds", 0.0) for r in recs)
    slices = sum(r.get("slices_trained", 0) for r in recs)
    summary = {
        "data": args.data, "patients": args.patients, "size": args.size, "folds": f"{results['data']['folds_run']} of {args.folds}",
        "n_slices": results["data"]["n_slices"], "n_volumes": results["data"]["n_volumes"], "cycles": n,
        "fsl_dice": fsl, "dice_at_budget": disc,
        **{f"{s}_dice_at_budget": c for s, c in curves.items() if s != "discriminator"},
        "discriminator_minus_random": diff("random", "diff"),
        "discriminator_minus_random_ci": diff("random", "ci"),
        "discriminator_minus_foreground_random": diff("foreground_random", "diff"),
        "discriminator_minus_foreground_random_ci": diff("foreground_random", "ci"),
        "verdicts": {s: diff(s, "verdict") for s in baselines},
        "qc_mae": r4(qc_all.get("mae")),
        "qc_auroc": r4(qc_all.get("auroc")),
        "qc": {lab.removesuffix(f"-n{n}"): {k: r4(by["all"].get(k)) for k in ("mae", "auroc", "flag_precision",
                                                                              "flag_recall")}
               for lab, by in qc.items() if "all" in by},
        "budget_to_fsl": min(close) if close else None,
        "pearson_r": results["correlation"]["pearson_r"], "p_value": results["correlation"]["p_value"],
        "pearson_r_fsl": results["correlation_fsl"]["pearson_r"],
        "n_slices_correlation": results["correlation"]["n_slices"],
        "slices_per_s": round(slices / seconds, 1) if seconds else None,
        "slices_per_s_wall": round(slices / (time.time() - started), 1),
        "processes": args.processes,
        "minutes": round((time.time() - started) / 60, 2),
    }
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
