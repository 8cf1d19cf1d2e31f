"""Load pretrained trunks from a local file: torchvision ImageNet checkpoints (resnet18, vgg16 / vgg16_bn), or
medloop's self-supervised checkpoints (``medloop pretrain``, ``medloop.training.selfsup``).

Nothing is downloaded: the user gives the path to a ``.pth`` state dict as torchvision saves it. The
first convolution is adapted to the model's input channels (summed over RGB for one channel, which keeps
the response to a gray image equal to the response to that image replicated on RGB). The ImageNet
classification layers are not loaded: medloop's heads are task-specific.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from medloop.errors import ConfigError, DataError
from medloop.models.classifiers import ResNet18Classifier, VGG16Classifier

SELFSUP_FORMAT = "medloop-selfsup-1"  # the format tag of medloop.training.selfsup checkpoints

__all__ = ["load_pretrained", "PretrainedReport", "adapt_first_conv"]


@dataclasses.dataclass(frozen=True)
class PretrainedReport:
    path: str
    loaded: int
    skipped: list[str]  # checkpoint keys not used (ImageNet head)
    first_conv: str  # how the first convolution was adapted


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> tuple[torch.Tensor, str]:
    """``[O, 3, k, k]`` RGB kernel -> ``[O, in_channels, k, k]``."""
    have = weight.shape[1]
    if have == in_channels:
        return weight, "kept"
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True), f"summed over {have} input channels"
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (have / in_channels), (
        f"averaged over {have} channels and replicated to {in_channels}")


def _load(path: Path):
    if not path.is_file():
        raise DataError("pretrained checkpoint not found; give the path of a local torchvision .pth file or of a "
                        "'medloop pretrain' checkpoint", path, "missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read as a PyTorch checkpoint ({type(exc).__name__}: {exc})", path, "corrupt") from None


def _read_state(path: Path, state) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError("not a state dict of tensors (as torchvision's model.state_dict() saves)", path, "format")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _copy(target: nn.Module, mapped: dict[str, torch.Tensor], path: Path, hint: str) -> int:
    own = target.state_dict()
    missing = [k for k in own if k not in mapped]
    if missing:
        raise ConfigError(f"{path}: checkpoint lacks {len(missing)} weights the model needs (first: {missing[0]}); {hint}")
    for key, value in mapped.items():
        if own[key].shape != value.shape:
            raise ConfigError(f"{path}: '{key}' has shape {tuple(value.shape)} but the model expects "
                              f"{tuple(own[key].shape)}; {hint}")
    target.load_state_dict(mapped, strict=True)
    return len(mapped)


def load_pretrained(model: nn.Module, path: str | Path) -> PretrainedReport:
    """Load ImageNet weights into ``model``'s trunk (in place). Raises with the key at fault on mismatch."""
    path = Path(path)
    raw = _load(path)
    if isinstance(raw, dict) and raw.get("format") == SELFSUP_FORMAT:
        return _load_selfsup(model, raw, path)
    state = _read_state(path, raw)
    if isinstance(model, ResNet18Classifier):
        trunk = model.backbone
        mapped = {k: v for k, v in state.items() if not k.startswith("fc.")}
        skipped = [k for k in state if k.startswith("fc.")]
        mapped["conv1.weight"], how = adapt_first_conv(mapped["conv1.weight"], trunk.conv1.in_channels) if "conv1.weight" in mapped else (None, "")
        hint = "pretrained ResNet-18 weights need width=64 (the standard network)"
    elif isinstance(model, VGG16Classifier):
        trunk = model.features
        has_bn = any(k.startswith("features.") and k.endswith("running_mean") for k in state)
        if has_bn != model.batch_norm:
            raise ConfigError(f"{path}: checkpoint is {'vgg16_bn' if has_bn else 'vgg16'} but the model has "
                              f"batch_norm={model.batch_norm}; set batch_norm: {str(has_bn).lower()}")
        mapped = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        skipped = [k for k in state if not k.startswith("features.")]
        first = "0.weight"
        if first in mapped:
            mapped[first], how = adapt_first_conv(mapped[first], trunk[0].in_channels)
        hint = "pretrained VGG-16 weights need width=64"
    else:
        raise ConfigError(f"pretrained ImageNet weights exist for resnet18 and vgg16, not for {type(model).__name__}")
    if any(v is None for v in mapped.values()):
        raise ConfigError(f"{path}: no first convolution found; is this a torchvision checkpoint of the right network?")
    loaded = _copy(trunk, mapped, path, hint)
    return PretrainedReport(str(path), loaded, skipped, how)


def _load_selfsup(model: nn.Module, raw: dict, path: Path) -> PretrainedReport:
    """A ``medloop pretrain`` checkpoint: the whole trunk of the same network (head excluded)."""
    trunk = raw.get("trunk")
    if not isinstance(trunk, dict):
        raise DataError("a medloop self-supervised checkpoint without trunk weights; rerun 'medloop pretrain'", path, "format")
    meta = raw.get("meta") or {}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    hint = (f"it was pretrained for {meta.get('model', '?')} with {meta.get('model_params', {})} and "
            f"{meta.get('in_channels', '?')} input channel(s); use the same classifier.model and model_params")
    missing = sorted(set(own) - set(trunk))
    if missing:
        raise ConfigError(f"{path}: checkpoint lacks {len(missing)} weights the model needs (first: {missing[0]}); {hint}")
    for key, value in trunk.items():
        if key not in own:
            raise ConfigError(f"{path}: checkpoint has '{key}', which the model lacks; {hint}")
        if own[key].shape != value.shape:
            raise ConfigError(f"{path}: '{key}' has shape {tuple(value.shape)} but the model expects "
                              f"{tuple(own[key].shape)}; {hint}")
    model.load_state_dict(trunk, strict=False)
    return PretrainedReport(str(path), len(trunk), [], "self-supervised (same network)")
