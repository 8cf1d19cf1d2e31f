"""Label efficiency: active-learning strategies against random sampling, many seeds, three regimes.

Runs ``experiments/mahapatra2018.yaml`` (or ``--config``) with the strategies of ``--strategy`` (the first is
reported under the ``*_al`` keys; ``generative`` is the paper's cGAN candidates) and ``random``, on ``--seeds``
seeds, with the fully supervised baseline (FSL) per seed on the same test split, in one or every regime:

- ``balanced``: the data as it is; 16 images per class to start (the paper's protocol), 32 per round, up to 50%
  of the pool;
- ``screening``: the training pool holds 10% positives (``pool_positive_share``; validation and test unchanged);
  20 random images to start (no label used), 16 per round, up to 50% of the pool;
- ``cold-start``: 6 images to start, chosen without any label (TypiClust on the trunk's features for the AL
  strategies, at random for the random track), 6 per round, up to 10% of the pool.

``--recipe frozen`` (the default) is the cheap round recipe: the trunk pretrained once on the pool (SimCLR,
``classifier.pretrained: selfsup``, shared by every seed through ``split_seed: 0``), its features of every image
computed once, and each round training only the head (MC dropout + log-variance) on them, 100 epochs with a
cosine learning rate, the best validation epoch kept. ``--recipe finetune`` is the full recipe measured before
(RESULTS 2.2): each seed its own split and trunk, every round the whole network again from the trunk for 12
epochs on 2 augmented copies. ``--set`` overrides any experiment key after both.

Final line(s) JSON, one per regime:

    {"regime", "seeds", "recipe", "fsl_auc", "fsl_auc_ci", "al_auc_at", "random_auc_at",
     "fraction_to_98pct_fsl_al", "fraction_to_98pct_fsl_random", "fraction_to_98pct_ratio", "reached_98pct_fsl_al",
     "curve_area_al", "curve_area_random", "curve_area_diff", "curve_area_diff_ci", "curve_area_diff_ci_width",
     "verdict", "verdict_reason", "pairwise", "compared", "minutes", ...}

``*_auc_at``: mean test AUC over seeds at the first round reaching each labeled fraction (``--at``);
``fraction_to_98pct_fsl_*``: the mean (over the seeds that reach it) labeled fraction at which the test AUC first
reaches 98% of the seed's FSL AUC, ``reached_98pct_fsl_*`` how many seeds do, ``fraction_to_98pct_ratio`` AL
over random (null unless both reach it); ``fraction_to_98pct_median_al`` / ``_random`` (also per strategy under
``compared``): the Kaplan-Meier median of that fraction with the seeds that never reach it censored at their last
fraction (``_censored``: the median lies beyond the budget), and ``fraction_to_98pct_median_ratio`` AL over random
with its ``_kind`` (``exact``, ``upper bound`` when random's median lies beyond the budget, ``undefined``);
``curve_area_*``: the mean AUC-vs-fraction curve's area over the common
fraction range, divided by its width. ``curve_area_diff_ci``: the paired two-level bootstrap 95% interval (seeds
and test images resampled) of AL minus random. ``pairwise``: every pair of tracks (``"a - b"``), the difference
in curve area over the range all tracks cover with its interval corrected for the number of pairs (Holm, see
``medloop.metrics.bootstrap.pairwise_curve_areas``) and Holm's adjusted p-value. ``verdict`` (per strategy, also
under ``compared``): "saving" only when the FSL AUC interval lies above 0.5 and the Holm-corrected interval of
(strategy - random) lies above 0; else "no saving shown", ``verdict_reason`` says why. With ``--regime all``, a
report of every regime (``<out>/regimes.md``, ``regimes.png``) says where active learning pays.

    python benchmarks/label_efficiency.py --data ../shared/data/cxr-tb-256 --regime all --out runs/le
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from medloop.config import apply_overrides, parse_overrides
from medloop.loop import ExperimentConfig, run_experiment
from medloop.loop.regimes import RECIPES, REGIMES
from medloop.report.regimes import build_regimes_report, regime_summary
from medloop.storage import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:chest-xray")
    ap.add_argument("--config", default=str(Path(__file__).parents[1] / "experiments" / "mahapatra2018.yaml"))
    ap.add_argument("--regime", default="balanced", choices=[*REGIMES, "all"])
    ap.add_argument("--recipe", default="frozen", choices=list(RECIPES))
    ap.add_argument("--strategy", default="badge,class_balanced,typiclust,coreset,generative",
                    help="comma list of AL strategies, each run against the same random tracks and FSL; the first "
                         "is reported under the *_al keys")
    ap.add_argument("--seeds", type=int, default=30,
                    help="seeds 0..N-1 (the generative strategy costs about 2-3 min a seed: --seeds 10 for it)")
    ap.add_argument("--out", default="runs/label-efficiency")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--at", default="0.05,0.10,0.15,0.25,0.35,0.50", help="labeled fractions reported in the JSON")
    ap.add_argument("--per-image", type=int, default=5, help="generative: variants per candidate image")
    ap.add_argument("--candidates", type=int, default=20, help="generative: unlabeled images per round")
    ap.add_argument("--set", action="append", default=[], help="experiment override key=value (dotted keys)")
    args = ap.parse_args()
    base = yaml.safe_load(Path(args.config).read_text())
    names = [n.strip() for n in args.strategy.split(",") if n.strip()]
    if "random" in names or not names:
        ap.error("--strategy lists the AL strategies; random runs in every benchmark as the baseline")
    regimes = list(REGIMES) if args.regime == "all" else [args.regime]
    grid = [float(f) for f in args.at.split(",")]
    outs = {}
    for regime in regimes:
        started = time.time()
        strategies = [{"name": n, **({"params": {"per_image": args.per_image, "candidates": args.candidates}}
                                     if n == "generative" else {})} for n in names] + [{"name": "random"}]
        overrides = {"data.source": args.data, "seeds": list(range(args.seeds)), "strategies": strategies,
                     "fsl_folds": 0, "random_subset_draws": 0, "round_patience": 0,
                     # no VGG content loss: a cold or screening start may label a single class, on which no
                     # VGG can be trained; the same cGAN in every regime
                     "generator.vgg_weight": 0.0, "generator.epochs": 10, "segmenter.epochs": 10,
                     "segmenter": (base.get("segmenter") or {}) if "generative" in names else None,
                     "record_at": [],  # segmentation is not evaluated; the generative track's segmenter trains at round 0
                     **RECIPES[args.recipe], **REGIMES[regime], **parse_overrides(args.set)}
        cfg = ExperimentConfig.from_dict(apply_overrides(base, overrides))
        folder = Path(args.out) / regime if len(regimes) > 1 else Path(args.out)
        results = run_experiment(cfg, folder, resume=args.resume)
        line = regime_summary(results, names, regime, args.recipe, grid)
        line["minutes"] = round((time.time() - started) / 60, 2)
        write_json(folder / "summary.json", line)
        outs[regime] = folder
        print(json.dumps(line), flush=True)
    if len(regimes) > 1:
        build_regimes_report(outs, Path(args.out))


if __name__ == "__main__":
    main()
