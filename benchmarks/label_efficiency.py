"""Label efficiency: active learning against random sampling over several seeds (issue targets).

Runs ``experiments/mahapatra2018.yaml`` (or ``--config``) with two strategies, the AL strategy (``--strategy``,
default ``badge``, the best measured on cxr-tb-256 (benchmarks/RESULTS.md 2.1); ``generative`` for the paper's cGAN
candidates) and ``random``, on ``--seeds`` seeds, and the fully supervised baseline (FSL) per seed on the same
test split. The defaults are the recommended CPU protocol (RESULTS 2.2; about 30 minutes on one core for 800
X-rays at 128 px, plus about 5 minutes per seed of self-supervised pretraining the first time): each seed's
trunk pretrained on its pool (SimCLR, ``classifier.pretrained: selfsup``), every round's classifier trained
again from that trunk (``retrain: restart``) for 12 epochs with a cosine learning rate, 2 augmented copies per
labeled image, up to 8 query rounds and 50% of the pool; ``--set`` overrides any experiment key
(``--set classifier.pretrained=null --set retrain=continue --set classifier.schedule=constant --set
classifier.epochs=6``: the earlier from-scratch protocol). Final line JSON:

    {"fsl_auc", "fsl_auc_ci", "al_auc_at": {"0.10": ..}, "random_auc_at": {..}, "fraction_to_98pct_fsl_al",
     "fraction_to_98pct_fsl_random", "reached_98pct_fsl_al", "curve_area_al", "curve_area_random",
     "curve_area_diff", "curve_area_diff_ci", "verdict", "verdict_reason", "minutes", ...}

``*_auc_at`` are mean test AUCs over seeds at the first round reaching each labeled fraction;
``fraction_to_98pct_fsl_*`` the mean (over the seeds that reach it) labeled fraction at which the test AUC first
reaches 98% of that seed's FSL AUC (null if no seed does), ``reached_98pct_fsl_*`` how many seeds do ("2/3"),
``fraction_to_98pct_fsl_per_seed_*`` each seed's (null where never); ``curve_area_*`` the area under the
mean AUC-vs-fraction curve over the common fraction range, divided by its width (a mean AUC).

With uncertainty (medloop.metrics.bootstrap; 1000 replicates, seeds and test images resampled, 95% percentile
intervals; null for runs without per-image test probabilities):
``fsl_auc_ci`` the interval of ``fsl_auc`` (the mean FSL AUC over seeds; pooled: seeds and test images
resampled), ``fsl_auc_ci_per_seed`` each seed's (test images resampled); ``curve_area_diff`` the mean over seeds
of (AL curve area - random curve area), each seed's areas over the fraction range every track of every seed
covers (equal to ``curve_area_al - curve_area_random`` when all seeds label the same fractions), and
``curve_area_diff_ci`` its paired interval (one test-image resample for both tracks of a seed).
``verdict``: "saving" only when ``fsl_auc_ci`` lies above 0.5 and ``curve_area_diff_ci`` above 0, else
"no saving shown"; ``verdict_reason`` says why in words.

    python benchmarks/label_efficiency.py --data ../shared/data/cxr-tb-256 --out runs/label-efficiency-tb
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from medloop.config import apply_overrides, parse_overrides
from medloop.loop import ExperimentConfig, run_experiment
from medloop.metrics.bootstrap import area_weights
from medloop.report.experiment import curve, savings_summary


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:chest-xray")
    ap.add_argument("--config", default=str(Path(__file__).parents[1] / "experiments" / "mahapatra2018.yaml"))
    ap.add_argument("--strategy", default="badge",
                    help="the AL strategy (keys *_al); a comma list runs more in the same run, against the same "
                         "random tracks and FSL (their numbers under 'compared')")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="runs/label-efficiency")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--at", default="0.10,0.15,0.25,0.30,0.35,0.50", help="labeled fractions reported in the JSON")
    ap.add_argument("--per-image", type=int, default=20, help="generative: variants per candidate image")
    ap.add_argument("--candidates", type=int, default=40, help="generative: unlabeled images per round")
    ap.add_argument("--set", action="append", default=[], help="experiment override key=value (dotted keys)")
    args = ap.parse_args()
    started = time.time()
    base = yaml.safe_load(Path(args.config).read_text())
    names = [n.strip() for n in args.strategy.split(",") if n.strip()]
    if "random" in names:
        ap.error("--strategy lists the AL strategies; random runs in every benchmark as the baseline")
    overrides = {"data.source": args.data, "seeds": list(range(args.seeds)),
                 "strategies": [{"name": names[0], "label": "al"}, *({"name": n} for n in names[1:]),
                                {"name": "random"}],
                 "segmenter": None, "fsl_folds": 0, "random_subset_draws": 0, "round_patience": 0,
                 "augment_copies": 2, "budget": 0.5, "max_rounds": 8, "retrain": "restart",
                 "classifier.pretrained": "selfsup", "classifier.schedule": "cosine",
                 "classifier.epochs": 12,
                 **parse_overrides(args.set)}
    if names == ["generative"]:
        overrides["segmenter"] = base.get("segmenter") or {}
        overrides["strategies"] = [{"name": "generative", "label": "al",
                                    "params": {"per_image": args.per_image, "candidates": args.candidates}},
                                   {"name": "random"}]
        overrides["record_at"] = [0.1]  # the UNet (masks of unlabeled images) is trained once, at the start
    cfg = ExperimentConfig.from_dict(apply_overrides(base, overrides))
    results = run_experiment(cfg, args.out, resume=args.resume)
    fsl = {s: v["test"]["auc"] for s, v in results["baselines"]["fsl"].items()}
    fsl_auc = float(np.mean(list(fsl.values())))
    summary = savings_summary(results)
    out: dict = {"data": args.data, "strategy": args.strategy, "seeds": args.seeds, "fsl_auc": round(fsl_auc, 4),
                 "fsl_auc_per_seed": {k: round(v, 4) for k, v in fsl.items()}}
    ci = summary["fsl"]["ci"]
    out["fsl_auc_ci"] = None if ci is None else [_round(v) for v in ci]
    out["fsl_auc_ci_per_seed"] = {k: None if v["ci"] is None else [_round(c) for c in v["ci"]]
                                  for k, v in summary["fsl"]["per_seed"].items()}
    grid = [float(f) for f in args.at.split(",")]
    areas = {}
    for label, key in (("al", "al"), ("random", "random")):
        by_seed = results["tracks"][label]
        at = {}
        for f in grid:
            vals = []
            for rounds in by_seed.values():
                hit = [r for r in rounds if r["fraction"] + 1e-9 >= f]
                if hit and hit[0]["test"].get("auc") is not None:
                    vals.append(hit[0]["test"]["auc"])
            at[f"{f:.2f}"] = round(float(np.mean(vals)), 4) if vals else None
        out[f"{key}_auc_at"] = at
        reach = summary["to_fsl"][label]
        out[f"fraction_to_98pct_fsl_{key}"] = _round(reach["mean"])
        out[f"reached_98pct_fsl_{key}"] = reach["reached"]
        out[f"fraction_to_98pct_fsl_per_seed_{key}"] = {s: _round(f) for s, f in reach["per_seed"].items()}
        x, m, _ = curve(by_seed)
        areas[key] = (x, m)
    lo = max(a[0].min() for a in areas.values())
    hi = min(a[0].max() for a in areas.values())
    for key, (x, m) in areas.items():
        out[f"curve_area_{key}"] = round(float(area_weights(x, lo, hi) @ m), 4)
    out["fraction_range"] = [round(float(lo), 4), round(float(hi), 4)]
    diff = summary["strategies"]["al"]
    out["curve_area_diff"] = _round(diff["diff"])
    out["curve_area_diff_ci"] = None if diff["ci"] is None else [_round(v) for v in diff["ci"]]
    out["verdict"], out["verdict_reason"] = diff["verdict"], diff["reason"]
    out["compared"] = {}
    for name in names[1:]:
        other = summary["strategies"][name]
        x, m, _ = curve(results["tracks"][name])
        reach = summary["to_fsl"][name]
        out["compared"][name] = {
            "curve_area": round(float(area_weights(x, lo, hi) @ m), 4), "curve_area_diff": _round(other["diff"]),
            "curve_area_diff_ci": None if other["ci"] is None else [_round(v) for v in other["ci"]],
            "fraction_to_98pct_fsl": _round(reach["mean"]), "reached_98pct_fsl": reach["reached"],
            "verdict": other["verdict"]}
    out["minutes"] = round((time.time() - started) / 60, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
