"""The active-learning loop: one round function (``loop.round``) that both methods configure, the run state
and its folder, oracles, and the two methods' protocols (generative AL, collaborative segmentation)."""

from medloop.loop.config import CollaborativeConfig, ExperimentConfig
from medloop.loop.mahapatra import Context, Mahapatra, fsl_baselines, prepare, run_experiment, run_mahapatra_track
from medloop.loop.oracle import Answer, AnswerLog, GroundTruthOracle, Oracle, OracleTimeout, PersistentOracle, collect
from medloop.loop.ravanbakhsh import Ravanbakhsh, algorithm1, run_collaborative
from medloop.loop.round import Candidates, Interrupt, Method, Proposal, QuerySize, run_track
from medloop.loop.state import RunState

__all__ = [
    "Answer",
    "AnswerLog",
    "Candidates",
    "CollaborativeConfig",
    "Context",
    "ExperimentConfig",
    "GroundTruthOracle",
    "Interrupt",
    "Mahapatra",
    "Method",
    "Oracle",
    "OracleTimeout",
    "PersistentOracle",
    "Proposal",
    "QuerySize",
    "Ravanbakhsh",
    "RunState",
    "algorithm1",
    "collect",
    "fsl_baselines",
    "load_experiment_config",
    "prepare",
    "run_any",
    "run_collaborative",
    "run_experiment",
    "run_mahapatra_track",
    "run_track",
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
    """Run an experiment of either method (its protocol: seeds x strategies, or folds x strategies x budgets)."""
    run = run_collaborative if isinstance(config, CollaborativeConfig) else run_experiment
    return run(config, out, **kwargs)
