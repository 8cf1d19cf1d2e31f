"""Built-in synthetic datasets: deterministic under a seed, rendered at any working size."""

from medloop.data.phantoms.cardiac_mr import CardiacMRParams, render_cardiac_volume
from medloop.data.phantoms.chest_xray import ChestXrayParams, render_chest_xray

__all__ = ["ChestXrayParams", "render_chest_xray", "CardiacMRParams", "render_cardiac_volume"]
