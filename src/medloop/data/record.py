"""The records every reader produces: what a layout finds (`Entry`), what it reads (`RawItem`), and
the prepared, normalized `Sample` that the rest of medloop consumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Entry", "RawItem", "Sample", "DatasetInfo"]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One readable unit found by a layout's scan: a 2D image or a 3D volume (plus its masks).

    Attributes:
        entry_id: unique id of the unit (file stem, ``patient001_frame01``, ``cxr-0007``).
        case_id: grouping id for splits (the patient); several entries may share it.
        image: image file (``None`` for built-in phantoms).
        masks: mask file(s); several for per-organ masks that the layout merges. Empty: no mask.
        label: image-level class index, or ``None`` when unknown.
        index: position for generated (built-in) entries.
        meta: extra information kept with every sample (CSV columns, frame, nodule positions...).
    """

    entry_id: str
    case_id: str
    image: Path | None = None
    masks: tuple[Path, ...] = ()
    label: int | None = None
    index: int = 0
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def where(self) -> str:
        """The file to name in messages."""
        return str(self.image) if self.image is not None else self.entry_id


@dataclasses.dataclass
class RawItem:
    """What a layout reads for an entry, before normalization and resizing.

    Attributes:
        image: ``[H, W, C]`` for 2D or ``[Z, H, W, C]`` for volumes, any numeric dtype.
        mask: ``[H, W]`` / ``[Z, H, W]`` integer label map in the layout's *raw* values, or ``None``.
        mask_path: the file the mask came from (for messages).
        mask_thresholded: the layout thresholded an anti-aliased 0/255 mask.
        meta: extra meta from reading (e.g. DICOM tags, nodule centres).
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    mask_path: str | None = None
    mask_thresholded: bool = False
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def volumetric(self) -> bool:
        return self.image.ndim == 4


@dataclasses.dataclass(frozen=True)
class Sample:
    """One 2D sample, the unit every model and strategy works on.

    Shape:
        image: ``[C, H, W]`` float32, normalized (see ``DataConfig.normalize``).
        mask: ``[H, W]`` int64 in medloop's label values, or ``None``.
    """

    image: torch.Tensor
    mask: torch.Tensor | None
    label: int | None
    case_id: str
    sample_id: str
    source: str
    slice_index: int | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds.

    Attributes:
        name: layout or built-in name.
        root: folder or ``builtin:NAME``.
        class_names: names of image-level classes (index = label), or empty when unlabeled.
        mask_labels: medloop label value -> name, e.g. ``{0: "background", 1: "lung"}``.
        volumetric: entries are 3D volumes read as 2D slices.
    """

    name: str
    root: str
    class_names: tuple[str, ...] = ()
    mask_labels: dict[int, str] = dataclasses.field(default_factory=dict)
    volumetric: bool = False
