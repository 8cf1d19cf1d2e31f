"""Base class and registries of data layouts (readers for folder structures and built-in phantoms)."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from medloop.data.record import DatasetInfo, Entry, RawItem
from medloop.errors import ConfigError, DataError
from medloop.registry import Registry, did_you_mean

__all__ = ["Layout", "LAYOUTS", "BUILTINS", "Option"]

# File layouts, in auto-detection order (most specific first).
LAYOUTS: Registry[type["Layout"]] = Registry("layout")
# Built-in phantoms, addressed as ``builtin:NAME``.
BUILTINS: Registry[type["Layout"]] = Registry("built-in dataset")


class Option:
    """A documented layout option: default value, allowed values (optional) and help text."""

    def __init__(self, default: Any, help: str, choices: tuple[Any, ...] | None = None, kind: type | None = None):
        self.default = default
        self.help = help
        self.choices = choices
        self.kind = kind if kind is not None else (type(default) if default is not None else None)


class Layout(abc.ABC):
    """A reader for one data layout.

    Subclasses set the class attributes, implement ``scan`` (cheap: lists files, no pixel reads) and
    ``load`` (reads one entry), and optionally ``detect``. The generic pipeline in
    ``medloop.data.dataset`` validates, normalizes and resizes what ``load`` returns, so a layout only
    knows its own file conventions.

    Attributes:
        name: registry name.
        summary: one line for ``medloop data list``.
        tree: a small example folder tree for the README and ``data list``.
        options: documented options (see ``Option``).
        volumetric: entries are 3D volumes.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    tree: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    volumetric: ClassVar[bool] = False
    priority: ClassVar[int] = 100  # auto-detection order: lower is tried first (specific before generic)

    def __init__(self, root: str | Path, seed: int = 0, **options: Any):
        self.root = Path(root) if not str(root).startswith("builtin:") else root
        self.seed = seed
        self.opts = self._resolve_options(options)

    def _resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        names = list(self.options)
        resolved = {name: opt.default for name, opt in self.options.items()}
        for key, value in given.items():
            if key not in self.options:
                allowed = ", ".join(names) if names else "none"
                raise ConfigError(
                    f"unknown option '{key}' for layout '{self.name}'{did_you_mean(key, names)}; allowed options: {allowed}"
                )
            opt = self.options[key]
            if opt.choices is not None and value not in opt.choices:
                raise ConfigError(
                    f"The '{key}' option of layout '{self.name}' must be one of {list(opt.choices)}; got {value!r} instead"
                )
            if opt.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"The '{key}' option of layout '{self.name}' must be an integer; got {value!r} instead")
            resolved[key] = value
        return resolved

    # -- interface ---------------------------------------------------------------------------------
    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` looks like this layout (cheap: names only)."""
        return False

    @abc.abstractmethod
    def info(self) -> DatasetInfo:
        """What the dataset holds (class names, mask labels)."""

    @abc.abstractmethod
    def scan(self) -> Iterable[Entry | DataError]:
        """List the entries; yield a DataError for an entry that cannot be used (missing file...)."""

    @abc.abstractmethod
    def load(self, entry: Entry, size: int | None) -> RawItem:
        """Read one entry. ``size`` is the working size (phantoms render at it; files ignore it)."""

    def mask_values(self) -> set[int] | None:
        """Declared raw mask values (checked before ``label_map``); None accepts any non-negative integer."""
        return set(self.info().mask_labels)

    def label_map(self) -> dict[int, int] | None:
        """Raw mask value -> medloop value, or None to keep values."""
        return None
