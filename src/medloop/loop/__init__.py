"""The active-learning loop: oracles, the round engine, experiments (run directories, resume, baselines)."""

from medloop.loop.collaborative import CollaborativeConfig, algorithm1, run_collaborative
from medloop.loop.config import ExperimentConfig
from medloop.loop.engine import Context, Interrupt, prepare, run_track
from medloop.loop.experiment import fsl_baselines, run_experiment, savings
from medloop.loop.oracle import Answer, AnswerLog, GroundTruthOracle, Oracle, OracleTimeout, PersistentOracle, collect

__all__ = [
    "CollaborativeConfig",
    "algorithm1",
    "run_collaborative",
    "load_experiment_config",
    "run_any",
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


def load_experiment_config(path, overrides: dict | None = None):
    """Read an experiment YAML; its ``method`` key picks the config class (default ``mahapatra2018``)."""
    from medloop.config import apply_overrides, read_yaml
    from medloop.errors import ConfigError

    classes = {"mahapatra2018": ExperimentConfig, "ravanbakhsh2018": CollaborativeConfig}

    def config_class(method):
        if method not in classes:
            raise ConfigError(f"{path}: unknown method {method!r}; use {' or '.join(classes)}")
        return classes[method]

    data = read_yaml(path)
    base = config_class(data.get("method", "mahapatra2018")).from_dict(data, where=str(path)).to_dict()
    merged = apply_overrides(base, overrides or {})
    return config_class(merged.get("method", "mahapatra2018")).from_dict(merged, where=str(path))


def run_any(config, out, **kwargs):
    """Run an experiment of either method."""
    if isinstance(config, CollaborativeConfig):
        return run_collaborative(config, out, **kwargs)
    return run_experiment(config, out, **kwargs)
