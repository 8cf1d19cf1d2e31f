"""Query strategies (score -> select), class balancing and the generative strategy."""

from medloop.query.strategies import STRATEGIES, QueryStrategy, build_strategy, select_top

__all__ = ["STRATEGIES", "QueryStrategy", "build_strategy", "select_top"]
