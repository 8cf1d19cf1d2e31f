"""The active-learning loop: one round function (``loop.round``) that every method configures, the events it
reports, the run state and its folder, and oracles. The methods themselves are plug-ins in ``medloop.methods``."""

import importlib

from medloop.loop.oracle import Answer, AnswerLog, GroundTruthOracle, Oracle, OracleTimeout, PersistentOracle, collect
from medloop.loop.round import (Candidates, Event, Interrupt, Method, Observer, Proposal, QuerySize, ReviewItem,
                                run_track)
from medloop.loop.state import RunState

__all__ = [
    "Answer",
    "AnswerLog",
    "Candidates",
    "Event",
    "GroundTruthOracle",
    "Interrupt",
    "Method",
    "Observer",
    "Oracle",
    "OracleTimeout",
    "PersistentOracle",
    "Proposal",
    "QuerySize",
    "ReviewItem",
    "RunState",
    "collect",
    "run_track",
]

# Names this package exported before the methods became plug-ins: old imports keep working, loaded on first use
# (the loop itself never imports a method).
_MAHAPATRA = ("ExperimentConfig", "Context", "Mahapatra", "fsl_baselines", "prepare", "run_experiment",
              "run_mahapatra_track")
_RAVANBAKHSH = ("CollaborativeConfig", "Ravanbakhsh", "algorithm1", "run_collaborative")
_MOVED = {**{n: ("medloop.methods.mahapatra", n) for n in _MAHAPATRA},
          **{n: ("medloop.methods.ravanbakhsh", n) for n in _RAVANBAKHSH},
          "load_experiment_config": ("medloop.methods", "load_config"), "run_any": ("medloop.methods", "run")}


def __getattr__(name: str):
    if name in _MOVED:
        module, attr = _MOVED[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'medloop.loop' has no attribute {name!r}")
