"""The active-learning loop: oracles, the round engine, experiments (run directories, resume, baselines)."""

from medloop.loop.config import ExperimentConfig
from medloop.loop.engine import Context, Interrupt, prepare, run_track
from medloop.loop.experiment import fsl_baselines, run_experiment, savings
from medloop.loop.oracle import Answer, AnswerLog, GroundTruthOracle, Oracle, OracleTimeout, PersistentOracle, collect

__all__ = [
    "Answer",
    "AnswerLog",
    "Context",
    "ExperimentConfig",
    "GroundTruthOracle",
    "Interrupt",
    "Oracle",
    "OracleTimeout",
    "PersistentOracle",
    "collect",
    "fsl_baselines",
    "prepare",
    "run_experiment",
    "run_track",
    "savings",
]
