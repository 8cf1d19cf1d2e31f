"""Query strategies (score -> select) that declare the inputs they need; class balancing; diversity on embeddings."""

from medloop.query.strategies import INPUTS, STRATEGIES, QueryStrategy, build_strategy, select_top
from medloop.query import diversity  # noqa: F401  (registers typiclust, probcover, coreset, badge)

__all__ = ["INPUTS", "STRATEGIES", "QueryStrategy", "build_strategy", "select_top"]
