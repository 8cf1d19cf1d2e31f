"""Pools at scale: scoring throughput and peak memory in process and on a local Ray, selection times, a scaling model.

Pools: --n-distinct chest phantoms rendered at --size px (``builtin:chest-xray``, half with nodules), written
once as 16-bit PNGs, and a ``folder`` dataset of --sizes images per pool made of hard links to them, so each pool
is files on disk with unique ids, read and decoded by medloop's folder reader as a real pool would be (rendering
100k phantoms would take a core 20 minutes and measure the renderer, not the engine). The model: an untrained
ResNet-18 at --width (a tiny classifier; the cost of a trained one is the same), T = --mc-samples, batch --batch.

Each (path, pool) runs in a fresh process with one thread per worker:
- ``local``: ``medloop.engine.local.score_local``, the in-process streaming path (the pool is scanned, each batch
  read, scored and dropped; only the score columns and float16 embeddings grow with the pool).
- ``ray``: ``medloop.engine.ray.score_ray`` on a local Ray with --ray-cpus CPUs (actors = CPUs), writing Parquet and
  the global top-k.
- ``disk``: the loop's in-process path on a pool loaded with ``cache: disk``: the first load reads every file and
  writes the store (``store_write_s``), a second load opens it (``store_open_s``), then ``score_pool`` scores the
  whole pool from it (``seconds``).
Peak memory is the peak of the summed PSS (proportional set size: shared pages such as Ray's object store counted
once) over the process and all its descendants (Ray's GCS, raylet and workers), sampled every 0.2 s; also the
process's own peak RSS.

Agreement: on the --check pool (default 2000) both paths' scores are compared (max |difference| over every score
column) and their top-100 ids.

Selection: ``benchmarks/selection_scale.py``'s fresh-process runs of the diversity strategies on pools of the same
sizes (128-d embeddings).

Scaling model (Amdahl): a run of n images in batches of b on N workers, one core each, takes
    t(N) = t_init + t_start + t_driver * n + t_batch * ceil(n / (b * N))
t_batch: the in-process seconds per batch (read, decode, score) at the largest pool; t_init: ``ray.init`` on this
machine; t_start: the pipeline's fixed cost (actors start, each loads the model; first and last batches), from a
Ray run on a pool of 2 * b * N images minus its batches' share; t_driver: the Ray run's serial per-image cost on
the driver (scan, shipping entries, Parquet, top-k), the residual of the largest Ray run after the other terms.
The model is checked against the measured 2-worker runs and evaluated for 8 and 64 workers at 100k and 1M images
(a cluster adds network costs the model leaves out: a lower bound on time). ``driver_cpu_per_image_ms``: the CPU
the driver process itself spent per image in that run (``time.process_time``, less the memory sampler's thread):
the part of t_driver that is the driver's own work; the rest of the residual is waiting (the driver, Ray's other
processes and the workers share this machine's cores). ``predicted_driver_cpu_only`` evaluates the model with that
CPU as t_driver: a driver on cores of its own, where only its own work is serial.

    OMP_NUM_THREADS=1 python benchmarks/scale.py [--sizes 10000,100000] [--out runs/scale] [--resume]

Final line (JSON): {"runs": {...}, "agreement": {...}, "selection": {...}, "model": {...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# --- pools -------------------------------------------------------------------------------------------------------

def build_pools(root: Path, sizes: list[int], n_distinct: int, size: int, seed: int) -> dict[int, Path]:
    """``root/distinct/*.png`` rendered once, ``root/pool-<n>/images/*.png`` hard links to them."""
    import numpy as np
    from PIL import Image

    from medloop.data import load_dataset

    distinct = root / "distinct"
    if len(list(distinct.glob("*.png"))) < n_distinct:
        distinct.mkdir(parents=True, exist_ok=True)
        ds = load_dataset("builtin:chest-xray", size=size, seed=seed, cache=False, progress=False,
                          options={"n_normal": n_distinct // 2, "n_nodule": n_distinct - n_distinct // 2})
        for i in range(len(ds)):
            image = (np.clip(ds[i].image[0].numpy(), 0, 1) * 65535 + 0.5).astype(np.uint16)
            Image.fromarray(image).save(distinct / f"{i:05d}.png")
    sources = sorted(distinct.glob("*.png"))[:n_distinct]
    pools = {}
    for n in sizes:
        images = root / f"pool-{n}" / "images"
        if not (root / f"pool-{n}" / ".complete").is_file():
            images.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                target = images / f"img-{i:07d}.png"
                if not target.exists():
                    os.link(sources[i % len(sources)], target)
            (root / f"pool-{n}" / ".complete").write_text("")
        pools[n] = root / f"pool-{n}"
    return pools


def write_checkpoint(path: Path, width: int, size: int) -> Path:
    from medloop.models import build_model
    from medloop.seeding import torch_init
    from medloop.training.checkpoint import save_checkpoint

    if path.is_file():
        return path
    params = {"in_channels": 1, "num_classes": 2, "width": width, "dropout": 0.5}
    with torch_init(0):
        model = build_model("resnet18", **params)
    return save_checkpoint(path, model, "resnet18", params,
                           data_config={"size": size, "channels": 1, "normalize": "percentile"})


# --- memory ------------------------------------------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_pss_mb(root_pid: int) -> float:
    """Summed PSS (MB) of ``root_pid`` and its descendants."""
    kids, total, stack = _children(), 0, [root_pid]
    while stack:
        pid = stack.pop()
        stack.extend(kids.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total / 1024


class PeakSampler:
    """Samples the process tree's PSS in a thread; ``peak`` in MB, ``cpu_s`` the CPU the sampling itself took
    (reading every process's smaps is not free: it is taken out of the driver's CPU below)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self.cpu_s, self._stop = interval, 0.0, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_mb(os.getpid()))
            self.cpu_s = time.thread_time()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, tree_pss_mb(os.getpid()))
        self._stop.set()
        self._thread.join()


# --- one run, in a fresh process ---------------------------------------------------------------------------------

def run_one(path: str, pool: Path, args: argparse.Namespace, out: Path) -> dict:
    import resource

    import numpy as np
    import torch

    from medloop.config import DataConfig
    from medloop.engine import ScoreSpec

    torch.set_num_threads(1)
    spec = ScoreSpec.for_checkpoint(args.checkpoint, DataConfig.from_dict({"source": str(pool), "layout": "folder"}),
                                    n_mc_samples=args.mc_samples, batch_size=args.batch, seed=args.seed)
    result: dict = {"path": path, "pool": str(pool)}
    with PeakSampler() as sampler:
        if path == "local":
            from medloop.engine.local import score_local
            from medloop.engine.pool import ID_COLUMNS

            start = time.perf_counter()
            cols = score_local(spec, progress=False)
            seconds = time.perf_counter() - start
            n = len(cols["sample_id"])
            if args.dump:
                out.parent.mkdir(parents=True, exist_ok=True)
                np.savez(out, sample_id=cols["sample_id"].astype(str),
                         **{k: v for k, v in cols.items() if k not in (*ID_COLUMNS, "skipped", "embedding")})
            result.update(n=n, seconds=round(seconds, 2), images_per_s=round(n / seconds, 1))
        elif path == "disk":  # the loop's in-process path over a pool loaded with cache: disk
            from medloop.data import load_dataset
            from medloop.training import load_checkpoint
            from medloop.uncertainty import score_pool

            os.environ["MEDLOOP_CACHE_DIR"] = str(out / "cache")
            data = spec.data.replace(cache="disk")
            start = time.perf_counter()
            load_dataset(data, progress=False)  # reads every file once, writes the store
            written = time.perf_counter()
            ds = load_dataset(data, progress=False)  # a later load: the store only
            opened = time.perf_counter()
            model, _ = load_checkpoint(args.checkpoint)
            cols = score_pool(model, ds, n_mc_samples=args.mc_samples, batch_size=args.batch, seed=args.seed,
                              seeding="sample", progress=False).columns
            seconds = time.perf_counter() - opened
            result.update(n=len(ds), seconds=round(seconds, 2), images_per_s=round(len(ds) / seconds, 1),
                          store_write_s=round(written - start, 2), store_open_s=round(opened - written, 2),
                          columns=len(cols))
        else:
            from medloop.engine.ray import ray_session, score_ray

            start = time.perf_counter()
            with ray_session(num_cpus=args.ray_cpus) as ray:
                ray.data.DataContext.get_current().enable_progress_bars = False
                t_init = time.perf_counter() - start
                cpu, sampled = time.process_time(), sampler.cpu_s  # the driver's CPU (all its threads)
                summary = score_ray(spec, out, k=100, progress=False)
                cpu = time.process_time() - cpu - (sampler.cpu_s - sampled)  # less the memory sampling's
            seconds = summary["seconds"]
            result.update(n=summary["rows"], seconds=seconds, images_per_s=round(summary["rows"] / seconds, 1),
                          ray_init_s=round(t_init, 2), driver_cpu_s=round(cpu, 2), workers=summary["workers"],
                          folder=summary["folder"], top_k=summary["top_k"])
    result.update(peak_pss_mb=round(sampler.peak, 1), sampler_cpu_s=round(sampler.cpu_s, 2),
                  peak_rss_self_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return result


def in_child(path: str, pool: Path, n: int, args: argparse.Namespace, tag: str = "", dump: bool = False) -> dict:
    """``run_one`` in a fresh process; results kept in ``--out/results/`` (``--resume`` reuses them)."""
    result_path = args.out / "results" / f"{path}-{n}{tag}.json"
    if args.resume and result_path.is_file():
        return json.loads(result_path.read_text())
    work = args.out / "work" / f"{path}-{n}{tag}"
    if work.exists():
        import shutil

        shutil.rmtree(work)  # a fresh Ray output folder: nothing reused, the throughput is measured
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, __file__, "--one", path, str(pool), str(work), "--checkpoint", str(args.checkpoint),
           "--mc-samples", str(args.mc_samples), "--batch", str(args.batch), "--seed", str(args.seed),
           "--ray-cpus", str(args.ray_cpus)] + (["--dump"] if dump else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        return {"path": path, "n": n, "error": done.stderr.strip().splitlines()[-3:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result))
    print(f"{path} n={n}{tag}: {result['seconds']} s, {result['images_per_s']} images/s, "
          f"peak PSS {result['peak_pss_mb']} MB", flush=True)
    return result


# --- agreement, selection, model ---------------------------------------------------------------------------------

def agreement(local: dict, ray_run: dict, work: Path) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    from medloop.engine import top_k

    ref = np.load(str(work) + ".npz")  # written by the local run's --dump
    table = pq.read_table(ray_run["folder"])
    row = {sid: i for i, sid in enumerate(table.column("sample_id").to_pylist())}
    order = np.array([row[sid] for sid in ref["sample_id"]])
    diffs = {k: float(np.abs(table.column(k).to_numpy()[order] - ref[k]).max()) for k in ref.files
             if k != "sample_id"}
    local_top = [str(i) for i in top_k(list(ref["sample_id"]), ref["combined"], 100)[0]]
    return {"n": int(len(order)), "max_abs_diff": max(diffs.values()), "max_abs_diff_by_column": diffs,
            "identical_top100": local_top == ray_run["top_k"]}


def selection(sizes: list[int], strategies: list[str]) -> dict:
    sys.path.insert(0, str(HERE))
    import selection_scale

    args = argparse.Namespace(k=1000, dim=128, labeled=100, seed=0)
    return {name: [{key: r.get(key) for key in ("n", "seconds", "peak_rss_mb", "error") if key in r}
                   for r in (selection_scale.in_child(name, n, args) for n in sizes)] for name in strategies}


def scaling_model(runs: dict, small: dict, batch: int, sizes: list[int]) -> dict:
    big = max(sizes)
    local, ray_big = runs[f"local-{big}"], runs[f"ray-{big}"]
    t_batch = local["seconds"] / math.ceil(local["n"] / batch)
    workers = ray_big["workers"]
    t_init = ray_big["ray_init_s"]
    t_start = max(0.0, small["seconds"] - t_batch * math.ceil(small["n"] / (batch * small["workers"])))
    t_driver = max(0.0, (ray_big["seconds"] - t_start - t_batch * math.ceil(ray_big["n"] / (batch * workers)))
                   / ray_big["n"])

    def predict(n: int, w: int, per_image: float = t_driver) -> float:
        return t_init + t_start + per_image * n + t_batch * math.ceil(n / (batch * w))

    def table(per_image: float) -> dict:
        rows = {}
        for n in (100_000, 1_000_000):
            times = {w: predict(n, w, per_image) for w in (1, 8, 64)}
            rows[str(n)] = {str(w): {"seconds": round(t, 1), "images_per_s": round(n / t, 1),
                                     "speedup": round(times[1] / t, 2), "efficiency": round(times[1] / (w * t), 3)}
                            for w, t in times.items()}
        return rows

    check = {f"ray-{n}": {"measured_s": runs[f"ray-{n}"]["seconds"] + t_init,
                          "model_s": round(predict(n, workers), 1)} for n in sizes if f"ray-{n}" in runs}
    driver_cpu = ray_big["driver_cpu_s"] / ray_big["n"] if "driver_cpu_s" in ray_big else None
    return {"t_batch_s": round(t_batch, 4), "t_init_s": round(t_init, 2), "t_start_s": round(t_start, 2),
            "t_driver_per_image_ms": round(1000 * t_driver, 4),
            "driver_cpu_per_image_ms": None if driver_cpu is None else round(1000 * driver_cpu, 4),
            "batch": batch, "check_2_workers": check, "predicted": table(t_driver),
            "predicted_driver_cpu_only": None if driver_cpu is None else table(driver_cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--n-distinct", type=int, default=1000, help="distinct phantom renders behind a pool")
    parser.add_argument("--width", type=int, default=8, help="ResNet-18 width (64 = standard)")
    parser.add_argument("--mc-samples", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--check", type=int, default=2000, help="pool on which the two paths' scores are compared")
    parser.add_argument("--strategies", default="coreset,badge,typiclust,probcover", help="'' skips selection")
    parser.add_argument("--paths", default="local,ray,disk", help="the runs at each size (see the docstring)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    parser.add_argument("--resume", action="store_true", help="reuse the runs finished in --out")
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--one", nargs=3, metavar=("PATH", "POOL", "WORK"), help=argparse.SUPPRESS)
    parser.add_argument("--dump", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        path, pool, work = args.one
        print(json.dumps(run_one(path, Path(pool), args, Path(work))))
        return
    os.environ["MEDLOOP_CACHE_DIR"] = "off"  # the distinct renders are written once as PNGs
    sizes = sorted(int(s) for s in args.sizes.split(",") if s)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pools = build_pools(args.out / "pools", sorted({*sizes, args.check, 2 * args.batch * args.ray_cpus}),
                        args.n_distinct, args.size, args.seed)
    args.checkpoint = write_checkpoint(args.out / "checkpoint.pt", args.width, args.size)
    runs = {}
    paths = [p for p in args.paths.split(",") if p]
    agree, small = {}, {"error": "not run"}
    if {"local", "ray"} <= set(paths):
        check_local = in_child("local", pools[args.check], args.check, args, "-check", dump=True)
        check_ray = in_child("ray", pools[args.check], args.check, args, "-check")
        agree = agreement(check_local, check_ray, args.out / "work" / f"local-{args.check}-check") \
            if "error" not in check_local and "error" not in check_ray else {"error": [check_local, check_ray]}
        print(f"agreement on {args.check}: {json.dumps(agree)}", flush=True)
        n_small = 2 * args.batch * args.ray_cpus
        small = in_child("ray", pools[n_small], n_small, args, "-small")
    for n in sizes:
        for path in paths:
            runs[f"{path}-{n}"] = in_child(path, pools[n], n, args)
    for run in runs.values():
        run.pop("top_k", None)
        run.pop("folder", None)
    strategies = [s for s in args.strategies.split(",") if s]
    result = {"runs": runs, "agreement": agree,
              "memory_ratio": {path: round(runs[f"{path}-{max(sizes)}"]["peak_pss_mb"]
                                           / runs[f"{path}-{min(sizes)}"]["peak_pss_mb"], 3)
                               for path in paths if all("peak_pss_mb" in runs[f"{path}-{n}"] for n in sizes)},
              "selection": selection(sizes, strategies) if strategies else {},
              "model": scaling_model(runs, small, args.batch, sizes) if {"local", "ray"} <= set(paths)
              and all("error" not in r for r in runs.values()) and "error" not in small else None,
              "settings": {"size": args.size, "width": args.width, "mc_samples": args.mc_samples, "batch": args.batch,
                           "ray_cpus": args.ray_cpus, "n_distinct": args.n_distinct, "threads_per_worker": 1},
              "seconds_total": round(time.perf_counter() - started, 1),
              "load_avg": [round(v, 2) for v in os.getloadavg()]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
