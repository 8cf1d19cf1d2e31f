"""Named, seeded random streams: every random draw in medloop comes from here, never from global state.

A stream is named by the run's seed and a path of names and numbers, e.g. ``stream(seed, "round", 3, "query")``.
Names are hashed to integers (CRC-32, stable across runs and machines) and, with the numbers, fed to NumPy's
``SeedSequence``, so two streams with different names are independent and the same name always gives the
same draws. Network initialisation draws from torch's global generator; ``torch_init`` seeds it inside
``torch.random.fork_rng``, so the caller's global state is restored afterwards and library code never changes it.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["seed_for", "seeds_for", "stream", "torch_stream", "torch_init"]

Key = int | str


def _entropy(seed: int, names: tuple[Key, ...]) -> list[int]:
    out = [int(seed)]
    for name in names:
        if isinstance(name, str):
            out.append(zlib.crc32(name.encode("utf-8")))
        elif isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            if name < 0:
                raise ValueError(f"stream names must be strings or non-negative integers; got {name}")
            out.append(int(name))
        else:
            raise TypeError(f"stream names must be strings or non-negative integers; got {name!r}")
    return out


def seed_for(seed: int, *names: Key) -> int:
    """An integer seed (in [0, 2**31 - 1)) for the stream ``(seed, *names)``, e.g. for a config's ``seed``."""
    return int(np.random.SeedSequence(_entropy(seed, names)).generate_state(1)[0] % (2**31 - 1))


def seeds_for(seed: int, *names: Key, n: int) -> np.ndarray:
    """``n`` 64-bit seeds ``[n]`` (uint64) for the stream ``(seed, *names)``: one SeedSequence for many generators."""
    return np.random.SeedSequence(_entropy(seed, names)).generate_state(n, np.uint64)


def stream(seed: int, *names: Key) -> np.random.Generator:
    """A NumPy generator for the stream ``(seed, *names)``."""
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, names)))


def torch_stream(seed: int, *names: Key, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator for the stream ``(seed, *names)`` on ``device``."""
    return torch.Generator(device=device).manual_seed(seed_for(seed, *names))


@contextlib.contextmanager
def torch_init(seed: int, *names: Key) -> Iterator[None]:
    """Seed torch's global generator for the block (network initialisation), then restore the caller's state."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed_for(seed, *names) if names else int(seed))
        yield
