"""Engines for pool work: ``local`` (this process, the default) or ``ray`` (a Ray cluster).

Importing this package never imports Ray: ``medloop.engine.ray`` does, when a job runs on it
(``pip install medloop[ray]``). Both engines run the same ``BatchScorer`` with per-sample dropout seeds, so
they give the same scores and the same top-k at a fixed seed.
"""

from __future__ import annotations

from medloop.engine.pool import BatchScorer, ScoreSpec, merge_top_k, model_version, rank_column, top_k
from medloop.errors import ConfigError

__all__ = ["ENGINES", "check_engine", "BatchScorer", "ScoreSpec", "merge_top_k", "model_version", "rank_column",
           "top_k"]

ENGINES = ("local", "ray")


def check_engine(engine: str, address: str | None, where: str = "--engine") -> None:
    """Refuse an unknown engine, and a cluster address without the Ray engine."""
    if engine not in ENGINES:
        raise ConfigError(f"The '{where}' parameter must be one of {', '.join(ENGINES)}; got {engine!r} instead")
    if address and engine != "ray":
        raise ConfigError(f"a cluster address ({address!r}) applies only with engine 'ray'; got engine {engine!r}")
