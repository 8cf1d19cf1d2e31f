"""Public chest X-ray layouts: Montgomery County, Shenzhen (NLM TB sets) and JSRT (+ SCR masks)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medloop.data.io import binarize_mask, read_image, read_jsrt_raw, strip_suffix
from medloop.data.layouts.base import LAYOUTS, Layout, Option
from medloop.data.layouts.folder import existing_file, list_files
from medloop.data.record import DatasetInfo, Entry, RawItem
from medloop.errors import DataError

__all__ = ["MontgomeryLayout", "ShenzhenLayout", "JSRTLayout"]

TB_CLASSES = ("normal", "tuberculosis")
_SUFFIX_LABEL = re.compile(r"_([01])$")

LUNG_LABELS = {
    "binary": {0: "background", 1: "lung"},
    "left-right": {0: "background", 1: "right lung", 2: "left lung"},
}


def _label_from_suffix(stem: str) -> int | None:
    match = _SUFFIX_LABEL.search(stem)
    return int(match.group(1)) if match else None


def _image_files(folder: Path) -> tuple[list[Path], list[DataError]]:
    files, problems = list_files(folder)
    return [p for p in files if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")], problems


def _read_binary(path: Path) -> tuple[np.ndarray, bool]:
    return binarize_mask(read_image(path), path)


@LAYOUTS.register("montgomery")
class MontgomeryLayout(Layout):
    name = "montgomery"
    priority = 30
    summary = "Montgomery County TB set: CXR_png/ + ManualMask/leftMask|rightMask/; label from _0/_1 suffix"
    tree = """\
MontgomerySet/
  CXR_png/MCUCXR_0001_0.png ...            (_0 normal, _1 tuberculosis)
  ManualMask/leftMask/MCUCXR_0001_0.png
  ManualMask/rightMask/MCUCXR_0001_0.png"""
    options = {"lung_labels": Option("binary", "binary lung mask, or left-right (1 right lung, 2 left lung)", ("binary", "left-right"))}

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "CXR_png").is_dir() and (root / "ManualMask").is_dir()

    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, str(self.root), TB_CLASSES, LUNG_LABELS[self.opts["lung_labels"]])

    def scan(self) -> Iterator[Entry | DataError]:
        left_dir, right_dir = self.root / "ManualMask" / "leftMask", self.root / "ManualMask" / "rightMask"
        images, problems = _image_files(self.root / "CXR_png")
        yield from problems
        for image in images:
            stem = strip_suffix(image)
            left, right = left_dir / image.name, right_dir / image.name
            try:
                has_left, has_right = existing_file(left), existing_file(right)
            except DataError as err:
                yield err
                continue
            if has_left != has_right:
                have, miss = (left, right) if has_left else (right, left)
                yield DataError(f"lung mask {have.relative_to(self.root)} exists but {miss.relative_to(self.root)} is "
                                "missing; add the other lung's mask or remove this one", image, "missing")
                continue
            masks = (right, left) if has_left else ()
            yield Entry(stem, stem, image, masks, _label_from_suffix(stem))

    def load(self, entry: Entry, size: int | None) -> RawItem:
        image = read_image(entry.image)
        if not entry.masks:
            return RawItem(image)
        right_path, left_path = entry.masks
        right, t1 = _read_binary(right_path)
        left, t2 = _read_binary(left_path)
        if right.shape != left.shape:
            raise DataError(f"size {right.shape[1]}x{right.shape[0]} differs from the left mask "
                            f"{left.shape[1]}x{left.shape[0]}; both lung masks must match the image", right_path, "mask-size")
        mask = right | left if self.opts["lung_labels"] == "binary" else np.where(left > 0, 2, right)
        return RawItem(image, mask, str(left_path), t1 or t2)


@LAYOUTS.register("shenzhen")
class ShenzhenLayout(Layout):
    name = "shenzhen"
    priority = 40
    summary = "Shenzhen TB set: CXR_png/ + masks/NAME_mask.png (lung masks exist for a subset); label from _0/_1 suffix"
    tree = """\
ChinaSet_AllFiles/
  CXR_png/CHNCXR_0001_0.png ...            (_0 normal, _1 tuberculosis)
  masks/CHNCXR_0001_0_mask.png ...         (optional per image)"""

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "CXR_png").is_dir() and not (root / "ManualMask").is_dir()

    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, str(self.root), TB_CLASSES, LUNG_LABELS["binary"])

    def scan(self) -> Iterator[Entry | DataError]:
        masks_dir = self.root / "masks"
        images, problems = _image_files(self.root / "CXR_png")
        yield from problems
        for image in images:
            stem = strip_suffix(image)
            try:
                mask = next((m for m in (masks_dir / f"{stem}_mask.png", masks_dir / f"{stem}.png") if existing_file(m)), None)
            except DataError as err:
                yield err
                continue
            yield Entry(stem, stem, image, (mask,) if mask else (), _label_from_suffix(stem))

    def load(self, entry: Entry, size: int | None) -> RawItem:
        image = read_image(entry.image)
        if not entry.masks:
            return RawItem(image)
        mask, thresholded = _read_binary(entry.masks[0])
        return RawItem(image, mask, str(entry.masks[0]), thresholded)


_JSRT_NAME = re.compile(r"^JPC(LN|NN)\d{3}$", re.IGNORECASE)
_ORGANS = ("right lung", "left lung", "heart", "right clavicle", "left clavicle")


def _organ_of(folder_name: str) -> str | None:
    key = re.sub(r"[\s_\-]+", " ", folder_name.strip().lower())
    return key if key in _ORGANS else None


@LAYOUTS.register("jsrt")
class JSRTLayout(Layout):
    name = "jsrt"
    priority = 45
    summary = "JSRT: JPCLN*/JPCNN* .IMG (2048x2048 12-bit big-endian) or PNG, SCR masks in per-organ folders"
    tree = """\
JSRT/
  All247images/JPCLN001.IMG ... JPCNN093.IMG  (JPCLN nodule, JPCNN normal; .IMG raw or .png)
  scr/masks/left lung/JPCLN001.gif            (SCR per-organ folders: left lung, right lung,
  scr/masks/right lung/JPCLN001.gif            heart, left clavicle, right clavicle; GIF or PNG)"""
    options = {
        "lung_labels": Option(
            "binary",
            "binary lung mask, left-right (1 right, 2 left lung) or organs (+3 heart, 4 right, 5 left clavicle)",
            ("binary", "left-right", "organs"),
        )
    }

    @classmethod
    def detect(cls, root: Path) -> bool:
        # specific evidence only: raw JSRT .IMG files, or SCR per-organ mask folders (a folder layout
        # that merely contains PNGs named JPCLN* stays a folder layout)
        for path in root.rglob("*"):
            if path.is_file() and _JSRT_NAME.match(strip_suffix(path)):
                if path.suffix.lower() == ".img" or _organ_of(path.parent.name):
                    return True
        return False

    def info(self) -> DatasetInfo:
        mode = self.opts["lung_labels"]
        labels = LUNG_LABELS.get(mode) or {0: "background", 1: "right lung", 2: "left lung", 3: "heart",
                                           4: "right clavicle", 5: "left clavicle"}
        return DatasetInfo(self.name, str(self.root), ("normal", "nodule"), labels)

    def _organs_needed(self) -> tuple[str, ...]:
        return _ORGANS if self.opts["lung_labels"] == "organs" else _ORGANS[:2]

    def scan(self) -> Iterator[Entry | DataError]:
        images: dict[str, Path] = {}
        organ_masks: dict[str, dict[str, Path]] = {}
        files, problems = list_files(self.root)
        yield from problems
        for path in files:
            stem = strip_suffix(path).upper()
            if not _JSRT_NAME.match(stem):
                continue
            organ = next((o for o in map(_organ_of, path.relative_to(self.root).parts[:-1]) if o), None)
            if organ is not None:
                if path.suffix.lower() in (".gif", ".png"):
                    organ_masks.setdefault(stem, {})[organ] = path
            elif path.suffix.lower() in (".img", ".png"):
                if stem in images and images[stem].suffix.lower() == ".img":
                    continue  # prefer the raw original over a PNG export of it
                images[stem] = path
        for stem in sorted(images):
            found = organ_masks.get(stem, {})
            needed = self._organs_needed()
            missing = [o for o in needed if o not in found]
            if found and missing:
                yield DataError(f"SCR masks for {', '.join(missing)} are missing while others exist; add them or remove "
                                "this case's masks", images[stem], "missing")
                continue
            masks = tuple(found[o] for o in needed) if found else ()
            label = 1 if stem.startswith("JPCLN") else 0
            yield Entry(stem, stem, images[stem], masks, label)

    def load(self, entry: Entry, size: int | None) -> RawItem:
        image = read_jsrt_raw(entry.image) if entry.image.suffix.lower() == ".img" else read_image(entry.image)
        if not entry.masks:
            return RawItem(image)
        parts = []
        thresholded = False
        for path in entry.masks:
            m, t = _read_binary(path)
            parts.append(m)
            thresholded |= t
        shape = parts[0].shape
        for path, m in zip(entry.masks, parts):
            if m.shape != shape:
                raise DataError(f"size {m.shape[1]}x{m.shape[0]} differs from the other organ masks {shape[1]}x{shape[0]}",
                                path, "mask-size")
        # SCR masks are 1024x1024 for 2048x2048 JSRT images: an exact factor-2 grid is accepted and the
        # image is averaged 2x2 down to the mask grid (documented in the README).
        h, w = image.shape[:2]
        if (h, w) == (2 * shape[0], 2 * shape[1]):
            image = image.reshape(shape[0], 2, shape[1], 2, image.shape[2]).astype(np.float32).mean(axis=(1, 3))
        mode = self.opts["lung_labels"]
        mask = np.zeros(shape, dtype=np.int64)
        if mode == "binary":
            mask[(parts[0] > 0) | (parts[1] > 0)] = 1
        else:
            for value, m in enumerate(parts, start=1):  # later organs (heart, clavicles) drawn over the lungs
                mask[m > 0] = value
        return RawItem(image, mask, str(entry.masks[0]), thresholded)
