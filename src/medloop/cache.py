"""On-disk cache for rendered phantom cases, so repeated runs do not re-render them.

Location: ``$MEDLOOP_CACHE_DIR`` if set (``off`` disables caching), else ``$XDG_CACHE_HOME/medloop``
or ``~/.cache/medloop``. Files are written atomically; a corrupt cache file is re-rendered.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medloop.storage import save_npz

__all__ = ["cache_dir", "cached_arrays"]


def cache_dir() -> Path | None:
    env = os.environ.get("MEDLOOP_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("off", "0", "none", "") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medloop"


def cached_arrays(key: dict, compute: Callable[[], tuple[dict[str, np.ndarray], dict]]) -> tuple[dict[str, np.ndarray], dict]:
    """Return ``compute()``'s (arrays, meta), from the cache when ``key`` was computed before."""
    root = cache_dir()
    if root is None:
        return compute()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = root / "phantoms" / f"{digest}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k != "__meta__"}
                meta = json.loads(str(data["__meta__"]))
            return arrays, meta
        except Exception:  # unreadable/partial cache entry: render again and overwrite it
            pass
    arrays, meta = compute()
    try:
        save_npz(path, compressed=False, __meta__=np.array(json.dumps(meta)), **arrays)
    except OSError:
        pass  # a read-only or full disk only costs speed
    return arrays, meta
