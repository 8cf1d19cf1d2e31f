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
    from pathlib import Path

    from medloop.config import apply_overrides
    from medloop.errors import ConfigError

    path = Path(path)
    base = ExperimentConfig.from_yaml(path).to_dict() if _method_of(path) == "mahapatra2018" else \
        CollaborativeConfig.from_yaml(path).to_dict()
    merged = apply_overrides(base, overrides or {})
    method = merged.get("method", "mahapatra2018")
    if method == "mahapatra2018":
        return ExperimentConfig.from_dict(merged, where=str(path))
    if method == "ravanbakhsh2018":
        return CollaborativeConfig.from_dict(merged, where=str(path))
    raise ConfigError(f"{path}: unknown method {method!r}; use mahapatra2018 or ravanbakhsh2018")


def _method_of(path) -> str:
    import yaml

    from medloop.errors import ConfigError

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: experiment file not found; check the path") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the syntax") from None
    method = data.get("method", "mahapatra2018") if isinstance(data, dict) else "mahapatra2018"
    if method not in ("mahapatra2018", "ravanbakhsh2018"):
        raise ConfigError(f"{path}: unknown method {method!r}; use mahapatra2018 or ravanbakhsh2018")
    return method


def run_any(config, out, **kwargs):
    """Run an experiment of either method."""
    if isinstance(config, CollaborativeConfig):
        return run_collaborative(config, out, **kwargs)
    return run_experiment(config, out, **kwargs)
