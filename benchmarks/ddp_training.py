"""Data-parallel training (``TrainConfig.workers``): does a 2-worker DDP run reach the 1-worker run's quality,
and how fast is it, on real data.

For each seed, the fully supervised classifier of ``experiments/mahapatra2018.yaml`` (ResNet-18 width 16, its
epochs, batch size, learning rate, early stopping and augmentation; ``--size`` px) is trained as ``medloop train``
trains it (split by case with the seed: train / 15% validation / 20% test; initialisation and every stream from
the seed), once with ``workers: 1`` (one process of one thread) and once with ``workers: 2`` (two spawned
one-thread processes, DDP over gloo), each run in a fresh process, one at a time. Recorded per run: test ROC AUC,
the epochs run, the seconds ``fit`` took (process start of the DDP ranks included, data loading not) and a hash of
the trained weights. ``--repeat`` trains the first seed's 2-worker run a second time: DDP over gloo on CPUs is
bit-reproducible (the same weights hash), since each rank owns its weights and two-rank sums do not depend on
their order.

Summary: AUC per worker count over seeds; the paired difference (2 workers - 1 worker) per seed with its mean and
a two-sided 95% t interval (seeds are the unit); images per second of training (train images x epochs run /
seconds) and the ratio of the means; the start-up of a 2-worker ``fit`` (the same group started with the same
model and samples, its ranks training nothing; three times) and the ratio with that mean start-up taken out of
each 2-worker run's seconds.

    OMP_NUM_THREADS=1 python benchmarks/ddp_training.py --data ../shared/data/cxr-tb-256 [--seeds 0,1,...,9]
        [--out runs/ddp-training] [--resume]

Final line (JSON): {"runs": {...}, "auc": {"1": [...], "2": [...]}, "paired_auc": {...}, "images_per_s": {...},
"throughput_ratio": ..., "startup_s_2_workers": [...],
"throughput_ratio_without_startup": ..., "repeat_identical": ..., "settings": {...}}.
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


def recipe_config(seed: int, workers: int):
    """The recipe's classifier as ``medloop train`` would train it for ``seed`` on ``workers`` processes."""
    import yaml

    from medloop.config import TrainConfig

    recipe = yaml.safe_load((HERE.parent / "experiments" / "mahapatra2018.yaml").read_text())
    return TrainConfig.from_dict({**recipe["classifier"], "task": "classify", "seed": seed, "device": "cpu",
                                  "workers": workers, "val_fraction": recipe["val_fraction"],
                                  "test_fraction": recipe["test_fraction"]})


def run_one(args: argparse.Namespace, seed: int, workers: int) -> dict:
    import hashlib

    import torch

    from medloop.config import DataConfig
    from medloop.data import load_dataset
    from medloop.data.splits import split_by_case
    from medloop.jobs import model_params_for
    from medloop.models import build_model
    from medloop.seeding import torch_init
    from medloop.training import evaluate, fit

    torch.set_num_threads(1)
    ds = load_dataset(DataConfig.from_dict({"source": args.data, "size": args.size}), progress=False)
    config = recipe_config(seed, workers)
    split = split_by_case(ds, val=config.val_fraction, test=config.test_fraction, seed=seed)
    with torch_init(seed):
        model = build_model(config.model, **model_params_for(ds, config))
    start = time.perf_counter()
    result = fit(model, ds.subset(split.train), ds.subset(split.val), config, progress=False)
    seconds = time.perf_counter() - start
    test = evaluate(model, ds.subset(split.test), "classify")
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()[:16]
    epochs = len(result.history)
    return {"seed": seed, "workers": workers, "ranks": result.workers, "test_auc": round(float(test["auc"]), 4),
            "epochs_run": epochs, "best_epoch": result.best_epoch, "seconds": round(seconds, 2),
            "train_images": len(split.train), "test_images": len(split.test),
            "images_per_s": round(len(split.train) * epochs / seconds, 1), "weights_sha256": digest}


def _imports_only(*args) -> dict:
    """A rank that trains nothing: what remains of a 2-worker ``fit`` is its start-up (spawn, imports, reading the
    samples, joining the group)."""
    import medloop.training.trainer  # noqa: F401  (what a real rank imports before training)

    return {}


def startup(args: argparse.Namespace, seed: int, repeats: int = 3) -> list[float]:
    """Seconds a 2-worker ``fit`` of ``seed``'s run spends outside training: the same group, started with the same
    model and samples, running a rank that trains nothing."""
    import torch

    from medloop.config import DataConfig
    from medloop.data import load_dataset
    from medloop.data.splits import split_by_case
    from medloop.jobs import model_params_for
    from medloop.models import build_model
    from medloop.training.distributed import _run_group

    torch.set_num_threads(1)
    ds = load_dataset(DataConfig.from_dict({"source": args.data, "size": args.size}), progress=False)
    config = recipe_config(seed, 2)
    split = split_by_case(ds, val=config.val_fraction, test=config.test_fraction, seed=seed)
    model = build_model(config.model, **model_params_for(ds, config))
    train = [ds[int(i)] for i in split.train]
    val = [ds[int(i)] for i in split.val]
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        _run_group(2, _imports_only, model, train, val)
        out.append(round(time.perf_counter() - start, 2))
    return out


def paired_difference(diffs: list[float]) -> dict:
    """Mean of per-seed differences with a two-sided 95% t interval (seeds as the unit)."""
    from medloop.metrics.bootstrap import paired_t_interval

    t = paired_t_interval(diffs)
    return {"diffs": [round(float(v), 4) for v in diffs], "mean": round(t["diff"], 4),
            "ci95": [round(v, 4) for v in t["ci"]],
            "ci95_width": round(t["ci"][1] - t["ci"][0], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cxr-tb-256")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--repeat", action=argparse.BooleanOptionalAction, default=True,
                        help="train the first seed's 2-worker run twice and compare the weights")
    parser.add_argument("--out", type=Path, default=Path("runs/ddp-training"))
    parser.add_argument("--resume", action="store_true", help="reuse the runs finished in --out")
    parser.add_argument("--one", nargs=2, type=int, metavar=("SEED", "WORKERS"), help=argparse.SUPPRESS)
    parser.add_argument("--startup", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args, *args.one)))
        return
    if args.startup is not None:
        print(json.dumps(startup(args, args.startup)))
        return
    from medloop.progress import make_progress
    from medloop.runinfo import write_run_record

    args.out.mkdir(parents=True, exist_ok=True)
    write_run_record(args.out, 0, {"benchmark": "ddp_training", **{k: str(v) for k, v in vars(args).items()}},
                     "benchmarks/ddp_training.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    seeds = [int(s) for s in args.seeds.split(",") if s]
    jobs = [(f"seed{s}-w{w}", s, w) for s in seeds for w in (1, 2)]
    if args.repeat and seeds:
        jobs.append((f"seed{seeds[0]}-w2-repeat", seeds[0], 2))
    runs: dict[str, dict] = {}
    with make_progress(transient=False) as bar:
        task = bar.add_task("DDP training runs", total=len(jobs))
        for name, seed, workers in jobs:
            path = args.out / f"{name}.json"
            if args.resume and path.is_file():
                runs[name] = json.loads(path.read_text())
            else:
                cmd = [sys.executable, __file__, "--one", str(seed), str(workers), "--data", args.data,
                       "--size", str(args.size)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{name} failed:\n" + "\n".join(proc.stderr.strip().splitlines()[-8:]))
                runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
                path.write_text(json.dumps(runs[name]))
                bar.console.print(f"{name}: {json.dumps(runs[name])}")
            bar.update(task, advance=1)
    path = args.out / "startup.json"
    if seeds and not (args.resume and path.is_file()):
        proc = subprocess.run([sys.executable, __file__, "--startup", str(seeds[0]), "--data", args.data, "--size",
                               str(args.size)], env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit("start-up timing failed:\n" + "\n".join(proc.stderr.strip().splitlines()[-8:]))
        path.write_text(proc.stdout.strip().splitlines()[-1])
    start_s = json.loads(path.read_text()) if seeds else []
    auc = {str(w): [runs[f"seed{s}-w{w}"]["test_auc"] for s in seeds] for w in (1, 2)}
    speed = {str(w): [runs[f"seed{s}-w{w}"]["images_per_s"] for s in seeds] for w in (1, 2)}
    # training speed of 2 workers with the mean start-up taken out of each run's seconds
    mean_start = sum(start_s) / len(start_s) if start_s else 0.0
    steady_2 = [r["train_images"] * r["epochs_run"] / (r["seconds"] - mean_start)
                for r in (runs[f"seed{s}-w2"] for s in seeds)]
    steady = round(sum(steady_2) / sum(speed["1"]), 3) if seeds else None
    paired = paired_difference([b - a for a, b in zip(auc["1"], auc["2"])]) if len(seeds) > 1 else None
    repeat = runs.get(f"seed{seeds[0]}-w2-repeat") if seeds else None
    print(json.dumps({
        "runs": runs, "auc": auc, "auc_mean": {w: round(sum(v) / len(v), 4) for w, v in auc.items()},
        "paired_auc": paired, "images_per_s": speed,
        "throughput_ratio": round(sum(speed["2"]) / sum(speed["1"]), 3),
        "startup_s_2_workers": start_s, "throughput_ratio_without_startup": steady,
        "repeat_identical": None if repeat is None else
        repeat["weights_sha256"] == runs[f"seed{seeds[0]}-w2"]["weights_sha256"],
        "settings": {"data": args.data, "size": args.size, "seeds": seeds,
                     "recipe": "experiments/mahapatra2018.yaml classifier"}}))


if __name__ == "__main__":
    main()
