"""Plain nn.Module networks, chosen by name: ``build_model("resnet18", in_channels=1, num_classes=2)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from medloop.models.classifiers import ResNet18Classifier, VGG16Classifier
from medloop.models.dropout import MCDropout, mc_dropout_layers, mc_generators, mc_sampling, patch_dropout
from medloop.models.pretrained import load_pretrained
from medloop.models.unet import BayesianUNet
from medloop.registry import Registry

__all__ = [
    "MODELS",
    "MODEL_TASKS",
    "build_model",
    "ResNet18Classifier",
    "VGG16Classifier",
    "BayesianUNet",
    "MCDropout",
    "mc_sampling",
    "mc_generators",
    "mc_dropout_layers",
    "patch_dropout",
    "load_pretrained",
]

MODELS: Registry[type[nn.Module]] = Registry("model")
MODELS.register("resnet18")(ResNet18Classifier)
MODELS.register("vgg16")(VGG16Classifier)
MODELS.register("unet")(BayesianUNet)

# What each model does: image classification or segmentation.
MODEL_TASKS = {"resnet18": "classify", "vgg16": "classify", "unet": "segment"}


def build_model(name: str, **params: Any) -> nn.Module:
    """Build a registered model; unknown names get a did-you-mean, bad parameters name the parameter."""
    from medloop.errors import ConfigError

    cls = MODELS.get(name)
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad parameters for model '{name}': {exc}") from None
