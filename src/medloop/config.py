"""Frozen dataclass configs built from YAML, validated on construction.

Unknown keys are errors with a did-you-mean; nothing live (modules, devices) sits in a config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medloop.errors import ConfigError
from medloop.registry import did_you_mean
from medloop.storage import write_text

__all__ = ["Config", "DataConfig", "AugmentConfig", "TrainConfig", "parse_overrides", "apply_overrides", "read_yaml"]

C = TypeVar("C", bound="Config")


def _describe(annotation: Any) -> str:
    """What a value of a simple annotation looks like in YAML, for messages."""
    if typing.get_origin(annotation) is typing.Literal:
        return f"one of {list(typing.get_args(annotation))}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
            type(None): "null"}.get(annotation, "a list" if typing.get_origin(annotation) is tuple
                                    else getattr(annotation, "__name__", str(annotation)))


def _check_type(owner: str, name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a simple annotation; coerce int->float. Raises ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            try:
                return _check_type(owner, name, value, arm)
            except ConfigError:
                continue
        kinds = " or ".join(_describe(arm) for arm in typing.get_args(annotation))
        raise ConfigError(f"The '{name}' parameter of {owner} must be {kinds}; got {value!r} instead")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"The '{name}' parameter of {owner} must be None; got {value!r} instead")
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            hint = did_you_mean(str(value), [str(a) for a in allowed])
            raise ConfigError(
                f"The '{name}' parameter of {owner} must be one of {list(allowed)}; got {value!r} instead{hint}"
            )
        return value
    if origin in (dict, typing.Mapping) or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"The '{name}' parameter of {owner} must be a mapping; got {value!r} instead")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"The '{name}' parameter of {owner} must be a list; got {value!r} instead")
        args = typing.get_args(annotation)
        arm = args[0] if args else Any
        return tuple(_check_type(owner, name, v, arm) for v in value)
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"The '{name}' parameter of {owner} must be a number; got {value!r} instead")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"The '{name}' parameter of {owner} must be an integer; got {value!r} instead")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"The '{name}' parameter of {owner} must be true or false; got {value!r} instead")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"The '{name}' parameter of {owner} must be a string; got {value!r} instead")
        return value
    return value


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of all configs: typed fields, ``from_dict``/``from_yaml``/``to_dict``/``to_yaml``."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            checked = _check_type(type(self).__name__, field.name, value, hints[field.name])
            object.__setattr__(self, field.name, checked)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; subclasses raise ConfigError naming the field."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                prefix = f"{where}: " if where else ""
                raise ConfigError(
                    f"{prefix}unknown key '{key}' for {cls.__name__}{did_you_mean(key, names)}; "
                    f"allowed keys: {', '.join(names)}"
                )
        return cls(**data)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        return cls.from_dict(read_yaml(path), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            write_text(path, text)
        return text

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """Where the images come from and how they are prepared.

    Args:
        source: ``builtin:NAME`` or a folder path.
        layout: reader name; ``None`` detects it from the folder contents.
        size: working size in pixels (square); ``None`` keeps the native size (all images must then
            share one size to be batched).
        crop: keep the central ``crop`` fraction of each side before resizing (1: the whole image). A fixed crop
            that needs no ground truth; short-axis cardiac MR is planned with the heart near the centre of the
            field of view, so ``crop`` 0.5 keeps the heart at twice the resolution for the same ``size``.
        channels: 1 (grayscale; RGB is converted to luminance), 3 (grayscale replicated, RGB kept), or the
            number of modalities of a multi-modal NIfTI.
        normalize: ``percentile`` (clip to the 0.5-99.5 percentiles, scale to [0, 1]; per image, per
            volume for 3D), ``minmax`` or ``none``.
        on_error: ``raise`` stops at the first bad file; ``skip`` skips it with a one-line warning and
            counts it in the summary.
        cache: ``true`` keeps prepared samples in memory; ``false`` reads files again on access; ``disk`` writes
            them once to a store in medloop's cache folder and reads them from there on access, in this and later
            loads (a pool larger than memory; ``medloop.data.diskcache``).
        seed: seed for built-in phantoms and splits.
        options: layout-specific options (see ``medloop data list``).
    """

    source: str = "builtin:chest-xray"
    layout: str | None = None
    size: int | None = None
    crop: float = 1.0
    channels: int = 1
    normalize: typing.Literal["percentile", "minmax", "none"] = "percentile"
    on_error: typing.Literal["raise", "skip"] = "raise"
    cache: bool | typing.Literal["disk"] = True
    seed: int = 0
    options: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        if self.size is not None and not 8 <= self.size <= 4096:
            raise ConfigError(f"The 'size' parameter of DataConfig must be in [8, 4096]; got {self.size} instead")
        if self.channels < 1:
            raise ConfigError(f"The 'channels' parameter of DataConfig must be >= 1; got {self.channels} instead")
        if not 0.1 <= self.crop <= 1.0:
            raise ConfigError(f"The 'crop' parameter of DataConfig must be in [0.1, 1] (the central fraction of each "
                              f"side kept); got {self.crop} instead")


@dataclasses.dataclass(frozen=True)
class AugmentConfig(Config):
    """Training augmentation (MONAI RandAffined / RandFlipd). Flips are off by default: they swap the
    patient's left and right, which matters for left/right labels and cardiac anatomy."""

    enabled: bool = True
    prob: float = 0.5
    rotate_deg: float = 10.0
    translate: float = 0.05
    scale: float = 0.1
    flip: bool = False

    def validate(self) -> None:
        if not 0 <= self.prob <= 1:
            raise ConfigError(f"The 'prob' parameter of AugmentConfig must be in [0, 1]; got {self.prob} instead")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """How a model is trained (``medloop train``).

    Args:
        task: ``classify`` or ``segment``.
        model: ``resnet18``, ``vgg16`` or ``unet``; ``model_params`` go to its constructor (width, dropout...).
        pretrained: local torchvision ImageNet checkpoint (resnet18/vgg16), or None.
        fine_tune: ``all`` trains every layer; ``head`` only the last layer(s), as the paper fine-tunes.
        class_weights: ``balanced`` (inverse class frequency in the training set) or ``none``.
        patience: early stopping after this many epochs without validation improvement (0: never).
        schedule: ``constant`` learning rate, or ``cosine``: decayed per step from ``lr`` to 0 over ``epochs``
            (Loshchilov & Hutter 2017), so the last epochs take small steps (unless early stopping ends training
            first). The history records each epoch's rate at its first step.
        loss_samples: logit samples of the attenuated classification loss.
        val_fraction, test_fraction: split by case for ``medloop train``.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: data-parallel training processes (PyTorch DDP over gloo, one thread each, on this machine's
            CPUs); each trains on its share of every batch of ``batch_size`` and the gradients are averaged.
    """

    task: typing.Literal["classify", "segment"] = "classify"
    model: str = "resnet18"
    model_params: dict = dataclasses.field(default_factory=dict)
    pretrained: str | None = None
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    fine_tune: typing.Literal["all", "head"] = "all"
    class_weights: typing.Literal["balanced", "none"] = "balanced"
    patience: int = 8
    schedule: typing.Literal["constant", "cosine"] = "constant"
    loss_samples: int = 10
    augment: dict = dataclasses.field(default_factory=dict)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    device: str = "auto"
    workers: int = 1

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "loss_samples", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The '{name}' parameter of TrainConfig must be >= 1; got {getattr(self, name)} instead")
        if self.lr <= 0:
            raise ConfigError(f"The 'lr' parameter of TrainConfig must be > 0; got {self.lr} instead")
        AugmentConfig.from_dict(self.augment, where="augment")
        if self.workers > 1 and self.device not in ("auto", "cpu"):
            raise ConfigError(f"The 'workers' parameter of TrainConfig ({self.workers}) trains on CPU processes (DDP over "
                              f"gloo); got device {self.device!r}: set device: cpu, or workers: 1 on a GPU")
        if self.workers > self.batch_size:
            raise ConfigError(f"The 'workers' parameter of TrainConfig must be at most batch_size ({self.batch_size}): "
                              f"each worker takes a share of every batch; got {self.workers} instead")

    @property
    def augmentation(self) -> "AugmentConfig":
        return AugmentConfig.from_dict(self.augment)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a dict (empty file: ``{}``), with a clear error for a missing or malformed file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; check the path") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the syntax") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys to values")
    return data or {}


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values read as YAML scalars) into a dict.

    Example: ``["n_cases=32", "rv=class"] -> {"n_cases": 32, "rv": "class"}``.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"option '{item}' must look like key=value (e.g. n_cases=32)")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict copy: ``{"classifier.model": "vgg16"}`` sets ``base["classifier"]["model"]``."""
    import copy

    out = copy.deepcopy(base)
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section (it holds {node[part]!r})")
            node = node[part]
        node[parts[-1]] = value
    return out
