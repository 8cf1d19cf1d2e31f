"""The Ray engine: a pool scored by a Ray Data pipeline, streamed from the dataset's files to Parquet.

The driver scans the layout (ids and paths, no pixels) and hands the entries to Ray Data; ``map_batches`` runs
``_RayScorer``, a stateful class, so each worker of an actor pool sized to the cluster's CPUs loads the model
once and reads, validates and decodes its images itself with medloop's readers. Every batch becomes rows of
Parquet (``sample_id``, ``case_id``, ``entry_id``, every score column, ``embedding`` as a list of float16) in
``out/scores/<model version>-<params>/``; a global top-k is then computed over the files in bounded memory.

Resuming: the folder name holds the checkpoint's hash and a digest of what else the scores depend on, so a
retrained model writes a new folder. A rerun with the same model scores only the entries that no readable file
of its folder holds: none after a finished run, the rest after a kill (a torn file is deleted and its entries
scored again), the new ones after files were added to the pool.

Ray is imported only here, and only when a job runs; ``pip install medloop[ray]`` installs it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medloop.data.dataset import resolve_layout
from medloop.data.record import Entry
from medloop.engine.pool import BatchScorer, ScoreSpec, merge_top_k, rank_column, scan_pool
from medloop.errors import ConfigError, DataError, MedloopError
from medloop.storage import write_json, write_text

__all__ = ["require_ray", "ray_session", "score_ray", "score_derived_ray", "map_samples_ray", "parquet_top_k",
           "generate_ray", "INSTALL_HINT"]

log = logging.getLogger("medloop.engine")

INSTALL_HINT = "pip install medloop[ray]"
ROWS_PER_FILE = 4096  # entries per input block, so per Parquet file: what a kill can lose


def require_ray():
    """The ``ray`` module, or a ConfigError saying how to install it."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves the machine
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed here; install it with "
                          f"`{INSTALL_HINT}` (or use the default --engine local)") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, connected: to ``address`` (a running cluster), else to the session already open in this process,
    else to a local cluster started here (and shut down on exit). No dashboard, no usage statistics.
    ``num_cpus`` sizes that local cluster only: with ``address`` or an open session it is refused, not ignored."""
    if num_cpus is not None and address:
        raise ConfigError(f"num_cpus ({num_cpus}) sizes a local Ray started here; the cluster at {address!r} has its "
                          "own CPUs: leave num_cpus out, or the address")
    ray = require_ray()
    if ray.is_initialized():
        if num_cpus is not None or address:
            raise ConfigError(f"Ray is already running in this process, so num_cpus ({num_cpus}) / address "
                              f"({address!r}) cannot apply: leave them out to use it, or ray.shutdown() first")
        yield ray
        return
    ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


class _RayScorer:
    """``map_batches``' stateful callable: the model is loaded once per worker (actor), not once per batch."""

    def __init__(self, spec: ScoreSpec, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.scorer = BatchScorer(spec)

    def __call__(self, batch: dict[str, np.ndarray]):
        entries = [entry for blob in batch["entries"] for entry in pickle.loads(blob)]
        return to_arrow(self.scorer(entries))


def to_arrow(columns: dict[str, np.ndarray]):
    """Scorer columns as an Arrow table: ids as strings, scores as float32, ``embedding`` as a float16 list, any
    other ``[N, F]`` array as a fixed-size list of its own type."""
    import pyarrow as pa

    fields = {}
    for name, value in columns.items():
        if name == "embedding" or value.ndim == 2:
            value = np.ascontiguousarray(value, dtype=np.float16 if name == "embedding" else value.dtype)
            flat = pa.array(value.reshape(-1), type=pa.from_numpy_dtype(value.dtype))
            fields[name] = pa.FixedSizeListArray.from_arrays(flat, value.shape[1])
        elif value.dtype == object:
            fields[name] = pa.array(value.tolist(), type=pa.string())
        else:
            fields[name] = pa.array(value)
    return pa.table(fields)


def parquet_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def finished_entries(folder: Path, column: str = "entry_id") -> set[str]:
    """The ids in ``column`` (entries; the sources of derived samples) of the readable Parquet files of
    ``folder``; unreadable (torn) files are deleted."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for path in parquet_files(folder):
        try:
            done.update(pq.read_table(path, columns=[column]).column(column).to_pylist())
        except Exception:  # a file torn by a kill: its entries are scored again
            log.warning("deleting unreadable %s (scored again)", path)
            path.unlink()
    return done


def parquet_top_k(folder: str | Path, k: int, rank_by: str | None = None, batch_rows: int = 65536,
                  entries: set[str] | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The ``k`` highest-ranked ``(sample_id, score)`` over every Parquet file of ``folder``, reading two columns
    in batches (memory: ``batch_rows + k`` rows); ties as ``merge_top_k``. ``entries``: count only rows of these
    entry ids (rows of files since removed from the pool are left out). Returns ids, scores, the column."""
    import pyarrow.parquet as pq

    files = parquet_files(Path(folder))
    if not files:
        raise DataError("no Parquet files: nothing was scored", folder, "empty")
    column = rank_column(pq.read_schema(files[0]).names, rank_by)
    ids, scores = np.array([], dtype=object), np.array([])
    names = ["sample_id", column] + (["entry_id"] if entries is not None else [])
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=names):
            batch_ids = np.asarray(batch.column(0).to_pylist(), dtype=object)
            batch_scores = batch.column(1).to_numpy(zero_copy_only=False)
            if entries is not None:
                keep = np.array([e in entries for e in batch.column(2).to_pylist()], dtype=bool)
                batch_ids, batch_scores = batch_ids[keep], batch_scores[keep]
            ids, scores = merge_top_k(ids, scores, batch_ids, batch_scores, k)
    return ids, scores, column


def _held(folder: Path, entries: set[str]) -> tuple[int, set[str], int]:
    """Over the Parquet files of ``folder``: the rows of ``entries``, which of them have rows, and the rows of
    entries outside them (stale: their files left the pool since they were scored)."""
    import pyarrow.parquet as pq

    rows, stale, held = 0, 0, set()
    for path in parquet_files(folder):
        for entry_id in pq.read_table(path, columns=["entry_id"]).column("entry_id").to_pylist():
            if entry_id in entries:
                rows += 1
                held.add(entry_id)
            else:
                stale += 1
    return rows, held, stale


def read_skipped(spec: ScoreSpec, entries: Sequence[Entry]) -> list[str]:
    """Why each of ``entries`` (left out by the workers under ``on_error: skip``) could not be read: each is read
    once more here, so the reason the worker logged is said where the run's summary is."""
    from medloop.data.dataset import read_entry

    layout, reasons = resolve_layout(spec.data), []
    for entry in entries:
        try:
            read_entry(layout, entry, spec.data)
            reasons.append(f"{entry.where}: readable now, but not scored (it changed during the run); run again")
        except DataError as err:
            reasons.append(str(err))
    return reasons


def _user_error(exc: BaseException) -> MedloopError | None:
    """The DataError / ConfigError a worker raised, out of Ray's wrappers."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MedloopError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Re-raise a worker's DataError / ConfigError as itself, not inside Ray's wrappers."""
    try:
        yield
    except Exception as exc:
        user = _user_error(exc)
        if user is not None:
            raise user from None
        raise


def _actor_pool(ray: Any, workers: int | None, progress: bool) -> int:
    """The actors of a job (``workers``, default one per cluster CPU), with Ray Data's progress bars on or off."""
    ray.data.DataContext.get_current().enable_progress_bars = progress
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    return workers or max(1, int(ray.cluster_resources().get("CPU", 1)))


def _to_parquet(ray: Any, items: list[dict[str, Any]], actor: type, kwargs: dict[str, Any], batch_size: int,
                folder: Path, workers: int | None, progress: bool, per_item: int = 1) -> int:
    """Run ``actor(**kwargs)`` (a stateful ``map_batches`` callable returning Arrow tables) over ``items`` (each
    holding up to ``per_item`` entries) in an actor pool and write its rows as Parquet files into ``folder``; at
    most about ``ROWS_PER_FILE`` entries per file, so a kill loses at most that. Returns the number of actors."""
    n_workers = _actor_pool(ray, workers, progress)
    n_blocks = max(min(len(items), 2 * n_workers), math.ceil(len(items) * per_item / ROWS_PER_FILE))
    n_blocks = min(n_blocks, len(items))
    n_workers = min(n_workers, n_blocks)  # an actor without a block would only load the model
    dataset = ray.data.from_items(items, override_num_blocks=n_blocks).map_batches(
        actor, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_workers), num_cpus=1)
    with _user_errors():
        # writing is light: it must not wait for a CPU that the scoring actors hold
        dataset.write_parquet(str(folder), ray_remote_args={"num_cpus": 0})
    return n_workers


def score_ray(spec: ScoreSpec, out: str | Path, address: str | None = None, k: int = 100,
              rank_by: str | None = None, workers: int | None = None, num_cpus: int | None = None,
              progress: bool = True, entries: Sequence[Entry] | None = None) -> dict[str, Any]:
    """Score ``spec``'s pool on Ray into ``out/scores/<version>/``, then its top ``k`` into ``out/topk.csv``.

    Args:
        address: a running cluster (``ray://host:10001``, ``host:6379``, ``auto``); ``None``: the Ray session
            already open in this process, or a local one started for the job.
        workers: actors in the pool (default: the cluster's CPUs, one each).
        num_cpus: CPUs of a local cluster started here (default: all).
        entries: score these entries of the layout (a loop's training pool, already scanned) instead of scanning
            it for all of them.
    Returns a summary: rows, entries scored now and reused, seconds, throughput, the folder, the top-k.
    """
    require_ray()  # before any work: a missing install is said at once
    out = Path(out)
    version = spec.version()  # hashes the checkpoint file: once per job
    folder = out / "scores" / version
    started = time.perf_counter()
    entries, skipped = scan_pool(spec) if entries is None else (list(entries), [])
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "_params.json", {"checkpoint": str(spec.checkpoint), "version": version, **spec.params()},
               indent=2)
    finished = finished_entries(folder)
    todo = [e for e in entries if e.entry_id not in finished]
    n_workers = 0
    if todo:
        with ray_session(address, num_cpus) as ray:
            # one row per model batch of entries: Ray handles n / batch_size rows, not n
            chunks = [{"entries": pickle.dumps(todo[i:i + spec.batch_size])}
                      for i in range(0, len(todo), spec.batch_size)]
            n_workers = _to_parquet(ray, chunks, _RayScorer, {"spec": spec}, 1, folder, workers, progress,
                                    per_item=spec.batch_size)
    current = {e.entry_id for e in entries}
    rows, held, stale = _held(folder, current)
    read_skips = read_skipped(spec, [e for e in entries if e.entry_id not in held])
    write_json(folder / "_SUCCESS.json", {"version": version, "rows": rows, "entries": len(entries),
                                          "scan_skipped": [str(e) for e in skipped], "read_skipped": read_skips,
                                          "stale_rows": stale}, indent=2)
    if stale:
        log.warning("%d rows of %s belong to entries no longer in the pool; they are left out of the top-k", stale,
                    folder)
    ids, scores, column = parquet_top_k(folder, k, rank_by, entries=current if stale else None)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["rank", "sample_id", column])
    writer.writerows([rank, sid, f"{score:.8g}"] for rank, (sid, score) in enumerate(zip(ids, scores), start=1))
    topk_path = write_text(out / "topk.csv", text.getvalue())
    seconds = time.perf_counter() - started
    return {"folder": str(folder), "version": version, "rows": rows, "entries": len(entries),
            "entries_reused": len(entries) - len(todo), "entries_scored": len(todo), "workers": n_workers,
            "seconds": round(seconds, 2), "images_per_s": round(len(todo) / max(seconds, 1e-9), 2),
            "rank_by": column, "top_k": [str(i) for i in ids], "topk_csv": str(topk_path),
            "skipped": len(skipped) + len(read_skips), "stale_rows": stale}


class _RayDerivedScorer:
    """``map_batches``' stateful callable for samples derived from pool samples (a loop's synthetic variants):
    each source is read again from its entry, ``derive(source, mask)`` makes its samples, and they are scored as
    ``BatchScorer`` scores images. Rows carry the derived ids and their source's sample and entry ids."""

    def __init__(self, spec: ScoreSpec, derive: Any, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.scorer, self.derive = BatchScorer(spec), derive

    def __call__(self, batch: dict[str, np.ndarray]):
        from medloop.data.dataset import collate_samples

        parts = []
        for blob, sample_id, packed, shape in zip(batch["entry"], batch["sample_id"], batch["mask"], batch["shape"]):
            entry = pickle.loads(blob)
            source = read_sample(self.scorer.layout, entry, self.scorer.spec.data, str(sample_id))
            h, w = (int(v) for v in shape)
            mask = np.unpackbits(np.frombuffer(packed, np.uint8))[:h * w].reshape(h, w).astype(np.int64)
            derived = self.derive(source, mask)
            ids = [d.sample_id for d in derived]
            cols = {"sample_id": np.array(ids, dtype=object),
                    "source_sample": np.array([source.sample_id] * len(ids), dtype=object),
                    "entry_id": np.array([entry.entry_id] * len(ids), dtype=object)}
            cols.update(self.scorer.score_images(collate_samples(derived)["image"], ids))
            parts.append(cols)
        return to_arrow({k: np.concatenate([part[k] for part in parts]) for k in parts[0]})


def score_derived_ray(spec: ScoreSpec, sources: Sequence[tuple[Entry, str, np.ndarray]], derive: Any, key: dict,
                      out: str | Path, address: str | None = None, workers: int | None = None,
                      progress: bool = True) -> Path:
    """Derive samples from each ``(entry, sample id, mask [H, W])`` of ``sources`` on Ray and score them into
    ``out/derived/<version>-<digest of key>/`` (``key``: what ``derive`` depends on, e.g. the generator's hash,
    the variants per image and their random stream). ``derive`` must pickle (it travels to every actor) and load
    what it needs once per actor. A rerun with the same model and key scores only the sources no file holds.
    Returns the folder."""
    import hashlib
    import json

    require_ray()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    folder = Path(out) / "derived" / f"{spec.version()}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "_params.json", {"checkpoint": str(spec.checkpoint), **spec.params(), "derive": key}, indent=2)
    finished = finished_entries(folder, "source_sample")  # a volume's slices are sources of their own
    items = [{"entry": pickle.dumps(entry), "sample_id": sample_id, "mask": np.packbits(mask > 0).tobytes(),
              "shape": list(mask.shape)} for entry, sample_id, mask in sources if sample_id not in finished]
    if items:
        with ray_session(address) as ray:
            _to_parquet(ray, items, _RayDerivedScorer, {"spec": spec, "derive": derive}, 1, folder, workers, progress)
    return folder


class _RaySampleMapper:
    """``map_batches``' stateful callable: each row names an entry and the sample ids wanted from it; the entry is
    read with medloop's readers and ``fn`` (loaded once per actor) maps the wanted samples to columns."""

    def __init__(self, data: Any, fn: Any, threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.data, self.fn, self.layout = data, fn, resolve_layout(data)

    def __call__(self, batch: dict[str, np.ndarray]):
        from medloop.data.dataset import read_entry

        parts = []
        for blob, wanted in zip(batch["entry"], batch["wanted"]):
            entry, wanted = pickle.loads(blob), [str(w) for w in pickle.loads(wanted)]
            samples = {s.sample_id: s for s in read_entry(self.layout, entry, self.data)}
            missing = [w for w in wanted if w not in samples]
            if missing:
                raise DataError(f"samples {missing[:3]} are not in their entry any more; the data changed while it "
                                "was read", entry.where, "changed")
            cols = self.fn([samples[w] for w in wanted])
            cols["entry_id"] = np.array([entry.entry_id] * len(wanted), dtype=object)
            parts.append(cols)
        return to_arrow({k: np.concatenate([part[k] for part in parts]) for k in parts[0]})


def map_samples_ray(data: Any, groups: Sequence[tuple[Entry, list[str]]], fn: Any, key: dict, out: str | Path,
                    address: str | None = None, workers: int | None = None, progress: bool = True) -> Path:
    """``fn(samples) -> columns`` (with ``sample_id``) over the samples ``groups`` names (an entry and the ids
    wanted from it) on Ray, into ``out/mapped/<digest of key and data>/`` as Parquet. ``fn`` must pickle and load
    its model once per actor; ``key`` says what its output depends on (the model's hash). A rerun maps only the
    samples no file holds. Returns the folder."""
    import hashlib
    import json

    require_ray()
    digest = hashlib.sha256(json.dumps({"key": key, "data": data.to_dict()}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    folder = Path(out) / "mapped" / digest
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "_params.json", {"key": key, "data": data.to_dict()}, indent=2)
    finished = finished_entries(folder, "sample_id")
    items = []
    for entry, wanted in groups:
        rest = [w for w in wanted if w not in finished]
        if rest:
            items.append({"entry": pickle.dumps(entry), "wanted": pickle.dumps(rest)})
    if items:
        with ray_session(address) as ray:
            _to_parquet(ray, items, _RaySampleMapper, {"data": data, "fn": fn}, 1, folder, workers, progress)
    return folder


def read_sample(layout: Any, entry: Any, data: Any, sample_id: str) -> Any:
    """Sample ``sample_id`` read again from its entry: an entry of a volume holds one sample per slice."""
    from medloop.data.dataset import read_entry

    samples = read_entry(layout, entry, data)
    found = next((s for s in samples if s.sample_id == sample_id), None)
    if found is None:
        raise DataError(f"sample '{sample_id}' is not in its entry any more (it holds "
                        f"{[s.sample_id for s in samples][:3]}); the data changed while it was read", entry.where,
                        "changed")
    return found


class _RayRenderer:
    """``map_batches``' stateful callable for ``medloop generate``: the generator is loaded once per actor; each
    source is read again from its entry, rendered, and its PNGs written into the (shared) output folder."""

    def __init__(self, generator: str, data: Any, out: str, class_names: list[str], per_image: int, seed: int,
                 batch_size: int, threads: int = 1):
        import torch

        from medloop.synth.generator import MaskConditionedSampler

        torch.set_num_threads(threads)
        self.sampler = MaskConditionedSampler.load(generator)
        self.layout = resolve_layout(data)
        self.data, self.out, self.class_names = data, Path(out), class_names
        self.per_image, self.seed, self.batch_size = per_image, seed, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import json

        from medloop.generate import render_source

        rows_out, lines_out = [], []
        for blob, sample_id, packed, shape, mask_source in zip(batch["entry"], batch["sample_id"], batch["mask"],
                                                               batch["shape"], batch["mask_source"]):
            sample = read_sample(self.layout, pickle.loads(blob), self.data, str(sample_id))
            h, w = (int(v) for v in shape)
            mask = np.unpackbits(np.frombuffer(packed, np.uint8))[:h * w].reshape(h, w).astype(bool)
            rows, lines, _ = render_source(self.sampler, sample, mask, str(mask_source), self.class_names, self.out,
                                           self.per_image, self.seed, self.batch_size)
            rows_out.append(json.dumps(rows))
            lines_out.append(json.dumps(lines))
        return {"index": batch["index"], "rows": np.array(rows_out, dtype=object),
                "lines": np.array(lines_out, dtype=object)}


def generate_ray(ds: Any, masks: list[np.ndarray], mask_sources: list[str], n_sources: int, out: str | Path,
                 per_image: int, batch_size: int, seed: int, address: str | None = None, workers: int | None = None,
                 progress: bool = True) -> list[tuple[list[list[Any]], list[str]]]:
    """Render the variants of ``ds``'s first ``n_sources`` images on Ray (``out/generator.pt`` must exist); the
    PNGs are written by the actors. Returns each source's ``labels.csv`` rows and manifest lines, in order: the
    same as ``medloop.generate.render_source`` gives in process (each source has its own random stream)."""
    import json

    out = Path(out)
    items = [{"index": i, "entry": pickle.dumps(ds.entry_of(i)), "sample_id": ds.sample_ids[i],
              "mask": np.packbits(masks[i].astype(bool)).tobytes(), "shape": list(masks[i].shape),
              "mask_source": mask_sources[i]} for i in range(n_sources)]
    results: dict[int, tuple[list, list]] = {}
    with ray_session(address) as ray:
        n_workers = _actor_pool(ray, workers, progress)
        dataset = ray.data.from_items(items, override_num_blocks=max(1, min(n_sources, 4 * n_workers))).map_batches(
            _RayRenderer, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_workers),
            num_cpus=1, fn_constructor_kwargs={
                "generator": str(out / "generator.pt"), "data": ds.config, "out": str(out),
                "class_names": list(ds.info.class_names), "per_image": per_image, "seed": seed,
                "batch_size": batch_size})
        with _user_errors():
            for row in dataset.iter_rows():
                results[int(row["index"])] = (json.loads(row["rows"]), json.loads(row["lines"]))
    return [results[i] for i in range(n_sources)]
