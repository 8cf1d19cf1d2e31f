"""A loop's pool scored on an engine between retraining rounds (``engine: ray`` in an experiment).

Each round the model just trained is saved as a ``medloop train`` checkpoint, so its hash names the round's
output folder (``<run>/engine/scores/<model version>-<params>/``); the pool's entries are scored there by the
same Ray Data job as ``medloop score --engine ray``, and the columns the strategy needs are read back by sample
id. A round redone after a kill retrains the same weights, finds its folder and scores only what it lacks.
Scores use per-sample dropout seeds (as ``medloop score``), so they do not depend on batches or workers.

The Ray session is opened once for a run (``engine_session``), not once per round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medloop.config import DataConfig
from medloop.data.record import Entry
from medloop.engine.pool import ScoreSpec
from medloop.errors import DataError

__all__ = ["engine_session", "score_model", "score_model_derived", "read_columns"]


def engine_session(engine: str, address: str | None = None) -> contextlib.AbstractContextManager:
    """For a whole run: Ray connected (to ``address``, the session open in this process, or a local cluster
    started here and stopped after the run) with engine ``ray``; nothing with ``local`` (Ray is not imported)."""
    if engine != "ray":
        return contextlib.nullcontext()
    from medloop.engine.ray import ray_session

    return ray_session(address)


def read_columns(folder: str | Path) -> dict[str, np.ndarray]:
    """Every column of the Parquet files of a scoring folder: ids as object arrays, scores as float32,
    ``embedding`` as ``[N, F]`` float32 (stored as float16), other lists as ``[N, F]`` of their own type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medloop.engine.ray import parquet_files

    files = parquet_files(Path(folder))
    if not files:
        raise DataError("no Parquet files: nothing was scored", folder, "empty")
    table = pa.concat_tables([pq.read_table(p) for p in files])
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
            out[name] = values.astype(np.float32) if name == "embedding" else values
        elif pa.types.is_string(column.type):
            out[name] = np.asarray(column.to_pylist(), dtype=object)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def _spec(model: nn.Module, model_name: str, model_params: dict[str, Any], data: DataConfig, folder: Path, name: str,
          n_mc_samples: int, seed: int, batch_size: int) -> ScoreSpec:
    """The round's model saved as ``folder/models/<name>.pt``, and the spec of scoring with it."""
    from medloop.training.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(folder / "models" / f"{name}.pt", model, model_name, model_params)
    return ScoreSpec(str(checkpoint), data, n_mc_samples=n_mc_samples, batch_size=batch_size, seed=seed)


def score_model(model: nn.Module, model_name: str, model_params: dict[str, Any], data: DataConfig,
                entries: Sequence[Entry], folder: str | Path, name: str, *, n_mc_samples: int, seed: int,
                batch_size: int = 32, address: str | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """MC-score ``model`` (built by ``model_name(**model_params)``) over ``entries`` of ``data`` on Ray.

    The model is saved as ``folder/models/<name>.pt``; the output goes to ``folder/scores/<version>/``.
    Returns the columns of ``BatchScorer`` (``sample_id``, every score column, ``embedding`` as float32), one
    row per sample of the entries, in no particular order: index them by ``sample_id``.
    """
    from medloop.engine.ray import score_ray

    folder = Path(folder)
    spec = _spec(model, model_name, model_params, data, folder, name, n_mc_samples, seed, batch_size)
    summary = score_ray(spec, folder, address=address, k=1, progress=progress, entries=entries)
    if summary["skipped"]:
        raise DataError(f"{summary['skipped']} pool entries could not be read while the pool was scored on Ray, "
                        f"though they were read when the pool was loaded (see {summary['folder']}/_SUCCESS.json); "
                        "restore the files and resume the run", summary["folder"], "changed")
    return read_columns(summary["folder"])


def score_model_derived(model: nn.Module, model_name: str, model_params: dict[str, Any], data: DataConfig,
                        sources: Sequence[tuple[Entry, str, np.ndarray]], derive: Any, key: dict, folder: str | Path,
                        name: str, *, n_mc_samples: int, seed: int, address: str | None = None,
                        progress: bool = True) -> dict[str, np.ndarray]:
    """``score_model`` for samples derived from pool samples on the workers (``engine.ray.score_derived_ray``:
    each ``(entry, sample id, mask)`` source is read there, ``derive(source, mask)`` makes its samples, the model
    scores them). Returns the columns with ``sample_id`` (derived ids) and ``source_sample``, in no particular
    order."""
    from medloop.engine.ray import score_derived_ray

    folder = Path(folder)
    spec = _spec(model, model_name, model_params, data, folder, name, n_mc_samples, seed, 32)
    out = score_derived_ray(spec, sources, derive, key, folder, address=address, progress=progress)
    columns = read_columns(out)
    missing = {sid for _, sid, _ in sources} - set(columns["source_sample"])
    if missing:
        raise DataError(f"{len(missing)} candidate sources have no scores in the engine's output (e.g. "
                        f"{sorted(missing)[:3]}); their files could not be read again on a worker: restore them and "
                        "resume the run", out, "changed")
    return columns
