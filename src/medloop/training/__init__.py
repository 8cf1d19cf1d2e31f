"""Training recipes: supervised fit/evaluate with heteroscedastic losses, augmentation, checkpoints."""

from medloop.training.checkpoint import load_checkpoint, save_checkpoint
from medloop.training.losses import heteroscedastic_ce, heteroscedastic_seg_loss
from medloop.training.trainer import FitResult, evaluate, fit, predict

__all__ = ["FitResult", "evaluate", "fit", "heteroscedastic_ce", "heteroscedastic_seg_loss", "load_checkpoint",
           "predict", "save_checkpoint"]
