"""pix2pix in bfloat16 against float32 (``pix2pix.precision``), and G's dropout layouts: speed, and model quality.

The collaborative recipe's data and pix2pix settings (``experiments/ravanbakhsh2018.yaml``: 64 px, the central
half of the field of view, graded discriminator). The volumes are split once by patient: --train-volumes train a
model, --test-volumes score it. For each seed and precision, in a fresh one-thread process: ``train_pix2pix`` for
--epochs epochs, then on the test slices (float32 scoring, as always): mean Dice per class and overall, and the
Pearson r between per-slice plausibility (the recipe's ``foreground`` reduction) and per-slice Dice, the quantity
method 2 rests on. Training slices per second exclude the process start and data loading.

--variants lists what to compare, each ``PRECISION`` or ``PRECISION-LAYOUT`` (``fp32``, ``bf16``, ``bf16-head``;
the layout is ``Pix2PixConfig.dropout_layout``, ``decoder`` when not named). The variants of a seed run two at a
time, side by side (one core each), so a pair sees the same load. The summary gives each variant's values over
seeds and, against the first variant, the paired differences per seed with their mean and a two-sided 95% t
interval (seeds are the unit; the split is fixed), and the ratio of mean training speeds.

    OMP_NUM_THREADS=1 python benchmarks/pix2pix_precision.py --data ../shared/data/acdc-train [--seeds 0,1,2]
        [--variants fp32,bf16] [--out runs/pix2pix-precision] [--resume]

Final line (JSON): {"runs": {...}, "summary": {"fp32": {...}, "bf16": {...}}, "paired": {...}, "settings": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_variant(variant: str) -> tuple[str, str]:
    precision, _, layout = variant.partition("-")
    layout = layout or "decoder"
    if precision not in ("fp32", "bf16") or layout not in ("decoder", "head"):
        raise SystemExit(f"--variants: {variant!r} is not PRECISION[-LAYOUT] with PRECISION fp32 or bf16 and "
                         "LAYOUT decoder or head; e.g. --variants fp32,bf16,bf16-head")
    return precision, layout


def run_one(args: argparse.Namespace, seed: int, variant: str) -> dict:
    import numpy as np
    import torch
    import yaml

    from medloop.config import DataConfig
    from medloop.data import load_dataset
    from medloop.metrics import mask_dice
    from medloop.training.pix2pix import Pix2PixConfig, Pix2PixTrainer, train_pix2pix
    from medloop.uncertainty.discriminator import discriminator_scores, slice_score
    from medloop.uncertainty.qc import slice_dice

    precision, layout = parse_variant(variant)
    torch.set_num_threads(1)
    recipe = yaml.safe_load((HERE.parent / "experiments" / "ravanbakhsh2018.yaml").read_text())
    data = {**recipe["data"], "source": args.data}
    ds = load_dataset(DataConfig.from_dict(data), progress=False)
    keep = [i for i in range(len(ds)) if ds.has_mask[i]]
    cases = sorted({ds.case_ids[i] for i in keep})
    rng = np.random.default_rng(0)  # one split for every run
    order = [cases[i] for i in rng.permutation(len(cases))]
    train_cases = set(order[:args.train_volumes])
    test_cases = set(order[args.train_volumes:args.train_volumes + args.test_volumes])
    tr = [i for i in keep if ds.case_ids[i] in train_cases]
    te = [i for i in keep if ds.case_ids[i] in test_cases]
    x, y = torch.stack([ds[i].image for i in tr]), torch.stack([ds[i].mask for i in tr]).long()
    xt, yt = torch.stack([ds[i].image for i in te]), torch.stack([ds[i].mask for i in te]).long()
    num_classes = max(int(y.max()), int(yt.max())) + 1
    p2p = {k: v for k, v in recipe["pix2pix"].items() if k != "pseudo_weight"}
    config = Pix2PixConfig.from_dict({**p2p, "epochs": args.epochs, "seed": seed, "device": "cpu",
                                      "precision": precision, "dropout_layout": layout})
    trainer = Pix2PixTrainer(x.shape[1], num_classes, x.shape[-1], config)
    start = time.perf_counter()
    history = train_pix2pix(trainer, x, y, torch.ones(len(x)), seed, progress=False)
    seconds = time.perf_counter() - start
    _, pmap, pred = discriminator_scores(trainer.G, trainer.D, xt)
    implausible = slice_score(pmap, recipe["slice_reduction"], recipe.get("q", 0.1), pred).numpy()
    dice = slice_dice(pred, yt, num_classes)  # per slice, as method 2's quality control measures it
    per_class = {str(c): float(mask_dice(pred == c, yt == c).mean()) for c in range(1, num_classes)}
    r = float(np.corrcoef(1 - implausible, dice)[0, 1])
    return {"seed": seed, "variant": variant, "precision": precision, "dropout_layout": layout,
            "train_slices": len(tr), "test_slices": len(te), "epochs": len(history), "seconds": round(seconds, 2),
            "slices_per_s": round(len(tr) * len(history) / seconds, 1),
            "dice_mean": round(float(dice.mean()), 4), "dice_by_class": {k: round(v, 4) for k, v in per_class.items()},
            "plausibility_dice_r": round(r, 4), "final_g_sup": round(history[-1]["g_sup"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/acdc-train")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="fp32,bf16", help="PRECISION[-LAYOUT],...; the first is the reference")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train-volumes", type=int, default=20)
    parser.add_argument("--test-volumes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/pix2pix-precision"))
    parser.add_argument("--resume", action="store_true", help="reuse the runs finished in --out")
    parser.add_argument("--one", nargs=2, metavar=("SEED", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args, int(args.one[0]), args.one[1])))
        return
    from medloop.runinfo import write_run_record

    args.out.mkdir(parents=True, exist_ok=True)
    write_run_record(args.out, 0, {"benchmark": "pix2pix_precision", **{k: str(v) for k, v in vars(args).items()}},
                     "benchmarks/pix2pix_precision.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        parse_variant(variant)
    runs: dict[str, dict] = {}

    def finish(pending: dict) -> None:
        for path, proc in pending.items():
            out, err = proc.communicate()
            if proc.returncode:
                runs[path.stem] = {"error": err.strip().splitlines()[-3:]}
                continue
            runs[path.stem] = json.loads(out.strip().splitlines()[-1])
            path.write_text(json.dumps(runs[path.stem]))
            print(f"{path.stem}: {json.dumps(runs[path.stem])}", flush=True)

    seeds = [int(s) for s in args.seeds.split(",") if s]
    for seed in seeds:
        pending = {}
        for variant in variants:
            path = args.out / f"seed{seed}-{variant}.json"
            if args.resume and path.is_file():
                runs[path.stem] = json.loads(path.read_text())
                continue
            cmd = [sys.executable, __file__, "--one", str(seed), variant, "--data", args.data, "--epochs",
                   str(args.epochs), "--train-volumes", str(args.train_volumes), "--test-volumes",
                   str(args.test_volumes)]
            pending[path] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if len(pending) == 2:  # two at a time: one core each
                finish(pending)
                pending = {}
        finish(pending)
    keys = ("slices_per_s", "dice_mean", "plausibility_dice_r")
    summary = {}
    for variant in variants:
        done = [runs[f"seed{s}-{variant}"] for s in seeds if "seed" in runs.get(f"seed{s}-{variant}", {})]
        if done:
            summary[variant] = {key: [r[key] for r in done] for key in keys}
    paired = {}
    for variant in variants[1:]:
        both = [s for s in seeds if all("seed" in runs.get(f"seed{s}-{v}", {}) for v in (variants[0], variant))]
        if len(both) < 2:
            continue
        pair = {key: paired_difference([runs[f"seed{s}-{variant}"][key] - runs[f"seed{s}-{variants[0]}"][key]
                                        for s in both]) for key in keys}
        speeds = [sum(runs[f"seed{s}-{v}"]["slices_per_s"] for s in both) for v in (variant, variants[0])]
        pair["speed_ratio_of_means"] = round(speeds[0] / speeds[1], 3)
        paired[f"{variant} - {variants[0]}"] = pair
    print(json.dumps({"runs": runs, "summary": summary, "paired": paired,
                      "settings": {"epochs": args.epochs, "train_volumes": args.train_volumes,
                                   "test_volumes": args.test_volumes, "data": args.data, "variants": variants}}))


def paired_difference(diffs: list[float]) -> dict:
    """Mean of per-seed differences with a two-sided 95% t interval (seeds as the unit)."""
    from medloop.metrics.bootstrap import paired_t_interval

    t = paired_t_interval(diffs)
    return {"diffs": [round(float(v), 4) for v in diffs], "mean": round(t["diff"], 4),
            "ci95": [round(v, 4) for v in t["ci"]]}


if __name__ == "__main__":
    main()
