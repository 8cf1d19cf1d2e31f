"""The generic ``folder`` layout: ``images/``, optional ``masks/``, optional ``labels.csv``."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medloop.data.io import binarize_mask, read_image, strip_suffix
from medloop.data.layouts.base import LAYOUTS, Layout, Option
from medloop.data.record import DatasetInfo, Entry, RawItem
from medloop.errors import ConfigError, DataError

__all__ = ["FolderLayout", "visible_files"]


def visible_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (recursive), sorted, skipping hidden ones (``.DS_Store``, ``._x``)."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


@LAYOUTS.register("folder")
class FolderLayout(Layout):
    name = "folder"
    priority = 50
    summary = "images/ + optional masks/ + optional labels.csv (image,mask,label[,case_id,...]); PNG/JPEG/TIFF, 8/16 bit"
    tree = """\
dataset/
  images/  001.png  002.png ...
  masks/   001.png  002.png ...      (optional; same name, or NAME_mask.png)
  labels.csv                         (optional) image,mask,label[,case_id,extra...]
                                     images/001.png,masks/001.png,1
                                     images/002.png,,0         <- empty mask cell: no mask"""
    options = {
        "mask_labels": Option(None, "mask label values, e.g. [0,1,2] (default binary 0/1, 0/255 accepted)", kind=list),
        "mask_names": Option(None, "names of the mask labels, e.g. [background,lung]", kind=list),
        "class_names": Option(None, "names of the image classes in label order, e.g. [normal,tuberculosis]", kind=list),
    }

    def __init__(self, root, seed: int = 0, **options):
        super().__init__(root, seed, **options)
        labels = self.opts["mask_labels"]
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(v, int) and v >= 0 for v in labels)):
            raise ConfigError(f"The 'mask_labels' option of layout 'folder' must be a list of integers >= 0; got {labels!r} instead")
        self._labels = sorted(set(labels)) if labels else [0, 1]
        self._binary = self._labels == [0, 1]
        self._class_names: tuple[str, ...] = tuple(self.opts["class_names"] or ())
        self.notes: dict[str, int] = {}

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "images").is_dir()

    def info(self) -> DatasetInfo:
        names = self.opts["mask_names"]
        if names is not None and len(names) != len(self._labels):
            raise ConfigError(f"'mask_names' has {len(names)} names for {len(self._labels)} mask labels {self._labels}")
        if names is None:
            names = ["background", "foreground"] if self._binary else ["background" if v == 0 else f"label {v}" for v in self._labels]
        return DatasetInfo(self.name, str(self.root), self._class_names, dict(zip(self._labels, names)), False)

    def mask_values(self) -> set[int]:
        return set(self._labels)

    # -- scanning -----------------------------------------------------------------------------------
    def _find(self, cell: str, sub: str) -> Path | None:
        for base in (self.root, self.root / sub):
            path = base / cell
            if path.is_file():
                return path
        return None

    def _match_mask(self, image: Path, masks_dir: Path, index: dict[str, Path]) -> Path | None:
        stem = strip_suffix(image.relative_to(self.root / "images"))
        rel_parent = image.relative_to(self.root / "images").parent
        for key in (str(rel_parent / stem), str(rel_parent / f"{stem}_mask")):
            if key in index:
                return index[key]
        return None

    def scan(self) -> Iterator[Entry | DataError]:
        images_dir = self.root / "images"
        masks_dir = self.root / "masks"
        files = visible_files(images_dir)
        mask_index: dict[str, Path] = {}
        if masks_dir.is_dir():
            for m in visible_files(masks_dir):
                rel = m.relative_to(masks_dir)
                mask_index[str(rel.parent / strip_suffix(rel))] = m
        csv_path = self.root / "labels.csv"
        if csv_path.is_file():
            yield from self._scan_csv(csv_path, files)
            return
        used_masks: set[Path] = set()
        for image in files:
            mask = self._match_mask(image, masks_dir, mask_index)
            if mask is not None:
                used_masks.add(mask)
            rel = image.relative_to(images_dir)
            entry_id = (rel.parent / strip_suffix(rel)).as_posix()
            yield Entry(entry_id, entry_id, image, (mask,) if mask else (), None)
        orphans = len(mask_index) - len(used_masks)
        if orphans:
            self.notes["masks without a matching image (ignored)"] = orphans

    def _scan_csv(self, csv_path: Path, files: list[Path]) -> Iterator[Entry | DataError]:
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.DictReader(fh))
                header = rows[0].keys() if rows else []
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read CSV ({exc}); save it as UTF-8 comma-separated text", csv_path, "corrupt") from None
        if rows and "image" not in header:
            raise DataError(
                f"missing required column 'image' (columns found: {', '.join(header)}); the header must start "
                "image,mask,label",
                csv_path,
                "format",
            )
        raw_labels = [(row.get("label") or "").strip() for row in rows]
        label_of = self._label_mapping([v for v in raw_labels if v], csv_path)
        listed: set[Path] = set()
        for n, row in enumerate(rows, start=2):  # line 1 is the header
            cell = (row.get("image") or "").strip()
            if not cell:
                yield DataError(f"line {n}: empty 'image' cell; fill it or remove the row", csv_path, "missing")
                continue
            image = self._find(cell, "images")
            if image is None:
                yield DataError(f"line {n}: image '{cell}' not found (looked in {self.root.name}/ and images/); fix the "
                                "path or remove the row", csv_path, "missing")
                continue
            listed.add(image.resolve())
            mask_cell = (row.get("mask") or "").strip()
            mask = None
            if mask_cell:
                mask = self._find(mask_cell, "masks")
                if mask is None:
                    yield DataError(f"line {n}: mask '{mask_cell}' not found (looked in {self.root.name}/ and masks/); "
                                    "fix the path or empty the cell if the image has no mask", csv_path, "missing")
                    continue
            label_cell = raw_labels[n - 2]
            label = label_of[label_cell] if label_cell else None
            entry_id = strip_suffix(image)
            case_id = (row.get("case_id") or "").strip() or entry_id
            meta = {k: v for k, v in row.items() if k not in ("image", "mask", "label", "case_id") and k is not None}
            yield Entry(entry_id, case_id, image, (mask,) if mask else (), label, meta=meta)
        unlisted = [f for f in files if f.resolve() not in listed]
        if unlisted:
            self.notes["images not in labels.csv (read as unlabeled, no mask)"] = len(unlisted)
            for image in unlisted:
                yield Entry(strip_suffix(image), strip_suffix(image), image, (), None)

    def _label_mapping(self, values: list[str], csv_path: Path) -> dict[str, int]:
        names = list(self._class_names)
        try:
            ints = sorted({int(v) for v in values})
        except ValueError:
            ints = None
        if ints is not None:
            if ints and ints[0] < 0:
                raise DataError(f"negative class label {ints[0]} in column 'label'; use 0..K-1 or class names", csv_path, "format")
            k = max(ints, default=-1) + 1
            if names and k > len(names):
                raise DataError(f"label {k - 1} has no name in class_names {names}; add a name or fix the label", csv_path, "format")
            if not names:
                self._class_names = tuple(str(i) for i in range(k))
            return {v: int(v) for v in values}
        if not names:
            names = sorted(set(values))
            self._class_names = tuple(names)
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise DataError(f"labels {unknown} are not in class_names {names}; fix the labels or the option", csv_path, "format")
        return {v: names.index(v) for v in values}

    # -- reading ------------------------------------------------------------------------------------
    def load(self, entry: Entry, size: int | None) -> RawItem:
        image = read_image(entry.image)
        if not entry.masks:
            return RawItem(image)
        mask_path = entry.masks[0]
        mask = read_image(mask_path)
        if mask.shape[-1] == 3 and not (np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 0], mask[..., 2])):
            raise DataError("mask is a colour image; save label masks as single-channel integer images", mask_path, "mask-values")
        mask = mask[..., 0]
        thresholded = False
        if mask.shape != image.shape[:2]:
            return RawItem(image, mask, str(mask_path))  # the pipeline reports the size mismatch
        if self._binary:
            mask, thresholded = binarize_mask(mask, mask_path)
        return RawItem(image, mask, str(mask_path), thresholded)
