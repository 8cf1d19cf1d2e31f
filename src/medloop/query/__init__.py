"""Query strategies (score -> select) that declare the inputs they need; class balancing."""

from medloop.query.strategies import INPUTS, STRATEGIES, QueryStrategy, build_strategy, select_top

__all__ = ["INPUTS", "STRATEGIES", "QueryStrategy", "build_strategy", "select_top"]
