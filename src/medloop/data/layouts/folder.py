"""The generic ``folder`` layout: ``images/``, optional ``masks/``, optional ``labels.csv``."""

from __future__ import annotations

import csv
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medloop.data.io import binarize_mask, read_image, strip_suffix
from medloop.data.layouts.base import LAYOUTS, Layout, Option
from medloop.data.record import DatasetInfo, Entry, RawItem
from medloop.errors import ConfigError, DataError
from medloop.registry import did_you_mean

__all__ = ["FolderLayout", "visible_files", "list_files", "list_dir", "existing_file"]

_CSV_COLUMNS = ("image", "mask", "label", "case_id")
_INTEGER = re.compile(r"[+-]?\d+$")


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _as_integer(value: str) -> str:
    """The fix for a label cell that is not an integer: ``"; write 1"`` for ``"1.0"``."""
    try:
        number = float(value)
    except ValueError:
        return "; fix the row"
    return f"; write {int(number)}" if number.is_integer() else "; fix the row"


def list_dir(folder: Path, recursive: bool = True) -> tuple[list[Path], list[Path], list[DataError]]:
    """What ``folder`` holds: ``(files, folders, problems)``, files and folders sorted, hidden names skipped.

    ``files`` are visible regular files (recursively when ``recursive``, following symlinked folders);
    ``folders`` the visible sub-folders of ``folder`` itself. Every entry that cannot be listed is a DataError
    (reason ``unlistable``) in ``problems`` rather than dropped: a folder that cannot be read, a link that
    loops or points nowhere, a pipe or device, and a symlinked folder that leads back into itself or to a
    folder already listed (its files would enter the pool twice, on both sides of a split).
    """
    files: list[Path] = []
    folders: list[Path] = []
    problems: list[DataError] = []
    listed: dict[str, Path] = {os.path.realpath(folder): folder}  # real path -> where it was listed

    def unlistable(what: str, path: Path) -> None:
        problems.append(DataError(f"{what}: the entry cannot be listed; fix or remove it", path, "unlistable"))

    def walk(directory: Path, top: bool) -> None:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            unlistable(f"folder cannot be listed ({exc.strerror})", directory)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = directory / entry.name
            try:
                if entry.is_dir():
                    real = os.path.realpath(path)
                    if real in listed:
                        first = listed[real]
                        what = ("symlink loop: the link leads back to a folder that contains it" if path.is_relative_to(first)
                                else f"the same folder as {first}, through a link: its files would be read twice")
                        unlistable(what, path)
                        continue
                    listed[real] = path
                    if top:
                        folders.append(path)
                    if recursive:
                        walk(path, False)
                elif entry.is_file():
                    files.append(path)
                elif entry.is_symlink():
                    unlistable(f"broken link to '{os.readlink(path)}' (its target is missing)", path)
                else:
                    unlistable("not a regular file (a pipe, socket or device)", path)
            except OSError as exc:  # a link to itself or in a cycle (ELOOP), a permission denied on stat
                what = "symlink loop" if exc.errno == errno.ELOOP else f"cannot be listed ({exc.strerror})"
                unlistable(what, path)

    walk(folder, True)
    return sorted(files), folders, problems


def list_files(folder: Path) -> tuple[list[Path], list[DataError]]:
    """Visible files under ``folder`` (recursive, sorted) and a DataError for each entry that cannot be listed."""
    files, _, problems = list_dir(folder)
    return files, problems


def visible_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (recursive), sorted, skipping hidden ones (``.DS_Store``, ``._x``); entries that
    cannot be listed are left out (use ``list_files`` to report them)."""
    return list_files(folder)[0]


def existing_file(path: Path) -> bool:
    """Whether ``path`` is a file; False when nothing is there. Something there that cannot be read as a file
    (a broken or looping link) raises a DataError naming it, so that a damaged mask is not taken for no mask."""
    if path.is_file():
        return True
    if path.is_symlink():
        raise DataError("broken or looping link; point it at the file or remove it", path, "unlistable")
    if path.exists():
        raise DataError("is not a file (a folder or a device); rename it or move it away", path, "unlistable")
    return False


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
        self.ignored: list[Path] = []

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
            if existing_file(path):
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
        files, problems = list_files(images_dir)
        mask_index: dict[str, Path] = {}
        if masks_dir.is_dir():
            mask_files, mask_problems = list_files(masks_dir)
            problems += mask_problems  # an unlistable mask would otherwise leave its image silently without one
            for m in mask_files:
                rel = m.relative_to(masks_dir)
                mask_index[str(rel.parent / strip_suffix(rel))] = m
        yield from problems
        csv_path = self.root / "labels.csv"
        if existing_file(csv_path):
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
        orphans = sorted(set(mask_index.values()) - used_masks)
        if orphans:
            self.notes["masks without a matching image (ignored)"] = len(orphans)
            self.ignored += orphans

    def _read_csv(self, csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
        """The header and the ``(line number, cells)`` of each non-blank row; the header is checked here."""
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                table = [(reader.line_num, row) for row in reader if row]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read CSV ({exc}); save it as UTF-8 comma-separated text", csv_path, "corrupt") from None
        if not table:
            raise DataError("the file is empty; write the header image,mask,label and one row per image, or remove it",
                            csv_path, "format")
        header = [name.strip() for name in table[0][1]]
        found = ", ".join(header)
        repeated = sorted({name for name in header if name and header.count(name) > 1})
        if repeated:
            raise DataError(f"column {', '.join(repr(n) for n in repeated)} appears twice in the header ({found}); "
                            "rename or remove one", csv_path, "format")
        absent = [name for name in _CSV_COLUMNS if name not in header]
        for name in header:
            hint = did_you_mean(name, absent) if name and name not in _CSV_COLUMNS else ""
            if hint:
                raise DataError(f"unknown column '{name}'{hint} in the header ({found}); rename it: medloop reads "
                                f"{', '.join(_CSV_COLUMNS)}, and keeps other columns as extra information", csv_path, "format")
        if "image" not in header:
            raise DataError(
                f"missing required column 'image' (columns found: {found}); the header must start image,mask,label",
                csv_path,
                "format",
            )
        return header, table[1:]

    def _scan_csv(self, csv_path: Path, files: list[Path]) -> Iterator[Entry | DataError]:
        header, table = self._read_csv(csv_path)
        listed: dict[Path, list[int]] = {}  # image -> the lines that list it
        rows: list[tuple[int, dict[str, str], Path | None, DataError | None]] = []
        for n, cells in table:
            row = {name: cell.strip() for name, cell in zip(header, cells)}
            image = None
            problem = None
            cell = row.get("image", "")
            try:
                image = self._find(cell, "images") if cell else None
            except DataError as err:
                problem = DataError(f"line {n}: {err}", csv_path, err.reason)
            if image is not None:  # listed even when the row is skipped: it must not come back as unlabeled
                listed.setdefault(image.resolve(), []).append(n)
            if problem is None:
                problem = self._row_problem(n, cells, header, cell, image, csv_path)
            rows.append((n, row, image, problem))
        label_of, label_problems = self._label_classes(
            [(n, row["label"]) for n, row, _, problem in rows if problem is None and row.get("label")], csv_path
        )
        for n, row, image, problem in rows:
            if problem is not None or image is None:
                yield problem or DataError(f"line {n}: no image", csv_path, "missing")
                continue
            lines = listed[image.resolve()]
            if len(lines) > 1:
                yield DataError(f"line {n}: image '{row['image']}' is listed on lines {', '.join(map(str, lines))}; keep one "
                                "row per image (the rows are skipped, since which one is right is unknown)", csv_path,
                                "duplicate")
                continue
            if n in label_problems:
                yield DataError(f"line {n}: {label_problems[n]}", csv_path, "format")
                continue
            mask_cell = row.get("mask", "")
            mask = None
            if mask_cell:
                try:
                    mask = self._find(mask_cell, "masks")
                except DataError as err:
                    yield DataError(f"line {n}: {err}", csv_path, err.reason)
                    continue
                if mask is None:
                    yield DataError(f"line {n}: mask '{mask_cell}' not found (looked in {self.root.name}/ and masks/); "
                                    "fix the path or empty the cell if the image has no mask", csv_path, "missing")
                    continue
            label_cell = row.get("label", "")
            label = label_of[label_cell] if label_cell else None
            entry_id = strip_suffix(image)
            case_id = row.get("case_id", "") or entry_id
            meta = {k: v for k, v in row.items() if k not in _CSV_COLUMNS and k}
            yield Entry(entry_id, case_id, image, (mask,) if mask else (), label, meta=meta)
        unlisted = [f for f in files if f.resolve() not in listed]
        if unlisted:
            self.notes["images not in labels.csv (read as unlabeled, no mask)"] = len(unlisted)
            for image in unlisted:
                yield Entry(strip_suffix(image), strip_suffix(image), image, (), None)

    def _row_problem(self, n: int, cells: list[str], header: list[str], cell: str, image: Path | None,
                     csv_path: Path) -> DataError | None:
        """What makes CSV line ``n`` unusable (a short or long row, no image), or None."""
        if len(cells) != len(header):
            return DataError(
                f"line {n}: {len(cells)} cell{'s' if len(cells) != 1 else ''} where the header has {len(header)} columns "
                f"({', '.join(header)}); "
                "a cell was lost or a comma added: fill the row (empty cells for none) or remove it",
                csv_path,
                "format",
            )
        if not cell:
            return DataError(f"line {n}: empty 'image' cell; fill it or remove the row", csv_path, "missing")
        if image is None:
            return DataError(f"line {n}: image '{cell}' not found (looked in {self.root.name}/ and images/); fix "
                             "the path or remove the row", csv_path, "missing")
        return None

    def _label_classes(self, cells: list[tuple[int, str]], csv_path: Path) -> tuple[dict[str, int], dict[int, str]]:
        """Map the 'label' cells ``(line, value)`` to class indices.

        Returns ``(label_of, problems)``: the class index of each accepted value, and what is wrong with each
        rejected line. Labels are the indices or names of ``class_names`` when declared; otherwise all of one
        kind, as most rows write them: integers numbered 0..K-1 without gaps, or names. A value of another kind
        (``1.0`` or ``abc`` among 0/1, ``3`` among names) or an index past a gap is a damaged or mistyped cell,
        not a new class. Raises a DataError when no kind is usable (decimals only, most indices past a gap).
        """
        names = list(self._class_names)
        problems: dict[int, str] = {}
        if not cells:  # no row has a label: a segmentation-only or unlabeled dataset
            return {}, problems
        if names:
            declared = ", ".join(f"{i}={c}" for i, c in enumerate(names))
            label_of = {}
            for n, v in cells:
                if _INTEGER.match(v) and 0 <= int(v) < len(names):
                    label_of[v] = int(v)
                elif v in names:
                    label_of[v] = names.index(v)
                else:
                    problems[n] = (f"label '{v}' is not a declared class ({declared}); fix the row, or the 'class_names' "
                                   "option")
            return label_of, problems
        ints = [(n, v) for n, v in cells if _INTEGER.match(v)]
        others = [(n, v) for n, v in cells if not _INTEGER.match(v)]
        if ints and len(ints) >= len(others):
            for n, v in others:
                problems[n] = f"label '{v}' is not an integer class index like the other rows' labels{_as_integer(v)}"
            present = {int(v) for _, v in ints}
            k = next(i for i in range(len(present) + 1) if i not in present)  # classes 0..k-1 without a gap
            beyond = [(n, v) for n, v in ints if not 0 <= int(v) < k]
            if len(beyond) * 2 > len(ints):
                raise DataError(f"labels {sorted(present)} in column 'label' are not numbered 0..K-1 (no row has label {k}); "
                                "number the classes from 0 without gaps, or name them with the 'class_names' option",
                                csv_path, "format")
            for n, v in beyond:
                problems[n] = (f"label {v} is outside the classes 0..{k - 1} that the other rows use (no row has label {k}); "
                               "fix the row, or declare every class with the 'class_names' option")
            self._class_names = tuple(str(i) for i in range(k))
            return {v: int(v) for _, v in ints if 0 <= int(v) < k}, problems
        numbers = [(n, v) for n, v in cells if _is_number(v)]
        if len(numbers) == len(cells):
            shown = ", ".join(sorted({v for _, v in cells})[:5])
            raise DataError(f"labels in column 'label' are decimals ({shown}); write class labels as integers 0..K-1 or as "
                            "class names", csv_path, "format")
        for n, v in numbers:
            problems[n] = f"label '{v}' is a number where the other rows' labels are class names; fix the row"
        names = sorted({v for n, v in cells if n not in problems})
        self._class_names = tuple(names)
        return {v: names.index(v) for v in names}, problems

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
