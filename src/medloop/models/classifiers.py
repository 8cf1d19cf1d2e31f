"""Bayesian classifiers in the two families of Mahapatra et al. (2018): ResNet-18 and VGG-16.

Each has a deterministic trunk (``forward_features``) and a stochastic head (``forward_head``): MC dropout
followed by a logit layer and a second layer giving per-logit log-variance (heteroscedastic
classification, Kendall & Gal 2017). ``forward(x) = forward_head(forward_features(x))`` returns
``(logits [N, K], log_var [N, K])``.

``global_pool`` says how the last feature map becomes the feature vector: ``avg`` (the standard networks),
``max`` (the strongest response anywhere: "is there a small lesion somewhere" survives pooling instead of
being averaged with the whole image), or ``avgmax`` (both, concatenated: twice the features).
"""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

from medloop.models.dropout import MCDropout

__all__ = ["GLOBAL_POOLS", "VGG16_CFG", "ResNet18Classifier", "VGG16Classifier"]

GLOBAL_POOLS = ("avg", "max", "avgmax")


def _widths(base: tuple[int, ...], width: int) -> list[int]:
    return [max(1, round(c * width / 64)) for c in base]


class _GlobalPool(nn.Module):
    """``[N, F, H, W] -> [N, F']``: average, maximum, or both concatenated (``F' = 2F``)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":
            return x.mean((2, 3))
        if self.mode == "max":
            return x.amax((2, 3))
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)

    def extra_repr(self) -> str:
        return self.mode


def _check_params(owner: str, in_channels: int, num_classes: int, width: int, global_pool: str) -> None:
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
        if value < 1:
            raise ValueError(f"The '{name}' parameter of {owner} must be >= 1; got {value} instead")
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"The 'global_pool' parameter of {owner} must be one of {', '.join(GLOBAL_POOLS)}; "
                         f"got {global_pool!r} instead")


class _HeteroscedasticHead(nn.Module):
    """MC dropout, then the logit and log-variance layers.

    ``feat_shift`` and ``feat_scale`` (buffers, identity by default) standardise the features first: a head
    trained on a frozen trunk's features sets them from the pool's features (``medloop.training.head``), so
    the classifier applied to images gives what the head learned on the cached features.
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float, heteroscedastic: bool):
        super().__init__()
        self.register_buffer("feat_shift", torch.zeros(in_features))
        self.register_buffer("feat_scale", torch.ones(in_features))
        self.dropout = MCDropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)
        self.fc_logvar = nn.Linear(in_features, num_classes) if heteroscedastic else None
        if self.fc_logvar is not None:
            nn.init.zeros_(self.fc_logvar.weight)
            nn.init.constant_(self.fc_logvar.bias, -4.0)  # start with small aleatoric variance

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the standardising buffers existed load as the identity they were
        state_dict.setdefault(prefix + "feat_shift", torch.zeros_like(self.feat_shift))
        state_dict.setdefault(prefix + "feat_scale", torch.ones_like(self.feat_scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.dropout((feats - self.feat_shift) * self.feat_scale)
        return self.fc(h), (self.fc_logvar(h) if self.fc_logvar is not None else None)


class _BayesianClassifier(nn.Module):
    """Shared split: subclasses define ``forward_features``; the MC-dropout head is ``self.head``."""

    head: _HeteroscedasticHead

    def forward_head(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.head(feats)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward_head(self.forward_features(x))

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())


class ResNet18Classifier(_BayesianClassifier):
    """ResNet-18 (MONAI's ResNet, torchvision layer names) with an MC-dropout heteroscedastic head.

    Args:
        in_channels: 1 or 3.
        num_classes: number of image classes.
        width: channels of the first stage (64 = standard ResNet-18; 16 or 32 for practical CPU runs).
        dropout: rate of the MC dropout before the head.
        heteroscedastic: add the log-variance head.
        global_pool: ``avg``, ``max`` or ``avgmax`` (see the module docstring).

    Shape: ``x [N, C, H, W] -> logits [N, K], log_var [N, K]``; ``forward_features``: ``[N, num_features]``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 64, dropout: float = 0.5,
                 heteroscedastic: bool = True, global_pool: str = "avg"):
        super().__init__()
        _check_params("ResNet18Classifier", in_channels, num_classes, width, global_pool)
        planes = _widths((64, 128, 256, 512), width)
        self.backbone = ResNet("basic", [2, 2, 2, 2], planes, spatial_dims=2, n_input_channels=in_channels,
                               conv1_t_size=7, conv1_t_stride=2, bias_downsample=False, feed_forward=False)
        # MONAI's ResNet pools through its ``avgpool`` attribute; the pooling put there is the configured one
        # (it has no weights, so torchvision checkpoints load the same)
        self.backbone.avgpool = _GlobalPool(global_pool)
        self.num_features = planes[-1] * (2 if global_pool == "avgmax" else 1)
        self.head = _HeteroscedasticHead(self.num_features, num_classes, dropout, heteroscedastic)
        self.global_pool = global_pool
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # [N, F] after global pooling


# torchvision's configuration "D" (VGG-16): numbers are 3x3 conv widths, "M" a 2x2 max pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16Classifier(_BayesianClassifier):
    """VGG-16 features (torchvision layer indices, with or without batch norm) + an MC-dropout head.

    The head is global pooling (``global_pool``), MC dropout and the heteroscedastic linear layers (instead
    of VGG's two 4096-unit layers, which make CPU runs impractical); ImageNet weights load into ``features``.

    Shape: ``x [N, C, H, W] -> logits [N, K], log_var [N, K]``; ``forward_features``: ``[N, num_features]``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 64, dropout: float = 0.5,
                 heteroscedastic: bool = True, batch_norm: bool = True, global_pool: str = "avg"):
        super().__init__()
        _check_params("VGG16Classifier", in_channels, num_classes, width, global_pool)
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            c_out = max(1, round(int(v) * width / 64))
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = _GlobalPool(global_pool)
        self.num_features = c_in * (2 if global_pool == "avgmax" else 1)
        self.head = _HeteroscedasticHead(self.num_features, num_classes, dropout, heteroscedastic)
        self.batch_norm = batch_norm
        self.global_pool = global_pool
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))  # [N, F]
