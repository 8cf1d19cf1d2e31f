"""The old home of the two methods' configs, kept so code written against it keeps importing: each config now
lives in its method's package (``medloop.methods.*.config``; nothing in medloop imports this module)."""

from medloop.methods.base import strategy_specs
from medloop.methods.mahapatra.config import RENAMED, ExperimentConfig
from medloop.methods.ravanbakhsh.config import CollaborativeConfig

__all__ = ["CollaborativeConfig", "ExperimentConfig", "RENAMED", "strategy_specs"]
