"""medloop: active learning for medical images.

Two published methods as usable tools: generative active learning (Mahapatra et al., MICCAI 2018)
and human-machine collaborative segmentation with a pix2pix cGAN (Ravanbakhsh et al.).
"""

from importlib.metadata import PackageNotFoundError, version

from medloop.config import DataConfig, TrainConfig
from medloop.errors import ConfigError, DataError, MedloopError

try:
    __version__ = version("medloop")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "DataConfig", "TrainConfig", "MedloopError", "ConfigError", "DataError"]
