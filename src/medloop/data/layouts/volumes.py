"""3D layouts read as 2D slices: ACDC cardiac MR and the generic NIfTI layout (Medical Segmentation Decathlon)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medloop.data.io import read_nifti, strip_suffix
from medloop.data.layouts.base import LAYOUTS, Layout, Option
from medloop.data.layouts.folder import list_dir
from medloop.data.record import DatasetInfo, Entry, RawItem
from medloop.errors import ConfigError, DataError

__all__ = ["ACDCLayout", "NiftiLayout", "ACDC_LABEL_MAPS"]

_PATIENT = re.compile(r"^patient\d+$")
_FRAME = re.compile(r"^(patient\d+)_frame(\d+)(_gt)?$")

# ACDC raw labels: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV blood pool.
ACDC_LABEL_MAPS: dict[str, tuple[dict[int, int], dict[int, str]]] = {
    "medloop": ({0: 0, 1: 0, 2: 1, 3: 2}, {0: "background", 1: "myocardium", 2: "blood pool"}),
    "medloop-rv": ({0: 0, 1: 3, 2: 1, 3: 2}, {0: "background", 1: "myocardium", 2: "blood pool", 3: "right ventricle"}),
    "raw": ({0: 0, 1: 1, 2: 2, 3: 3}, {0: "background", 1: "right ventricle", 2: "myocardium", 3: "LV blood pool"}),
}


def _nifti_listing(folder: Path) -> tuple[list[Path], list[DataError]]:
    """The NIfTI files directly in ``folder`` (sorted) and a DataError for each entry that cannot be listed."""
    if not folder.is_dir():
        return [], []
    files, _, problems = list_dir(folder, recursive=False)
    return [p for p in files if p.name.lower().endswith((".nii", ".nii.gz"))], problems


def _nifti_files(folder: Path) -> list[Path]:
    return _nifti_listing(folder)[0]


def _as_slices(volume: np.ndarray, path: Path) -> np.ndarray:
    """``(H, W, Z[, M])`` as stored -> ``[Z, H, W, M]``; 2D files become one slice."""
    if volume.ndim == 2:
        volume = volume[:, :, None]
    if volume.ndim == 3:
        volume = volume[..., None]
    if volume.ndim != 4:
        raise DataError(f"unsupported NIfTI shape {volume.shape}; expected (H, W, Z) or (H, W, Z, modalities)", path, "format")
    return np.moveaxis(volume, 2, 0)


def _check_same_grid(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    if image.shape[:3] != label.shape[:3] or label.ndim > 3:
        fmt = lambda s: "x".join(map(str, s))  # noqa: E731
        raise DataError(f"label volume shape {fmt(label.shape)} does not match image volume {fmt(image.shape)} "
                        f"({image_path.name}); the label must be on the image's voxel grid",
                        label_path, "mask-size")


@LAYOUTS.register("acdc")
class ACDCLayout(Layout):
    name = "acdc"
    priority = 10
    summary = "ACDC cardiac cine MR: patientXXX/patientXXX_frameYY.nii.gz + _gt; read as 2D short-axis slices"
    tree = """\
acdc/
  patient001/
    patient001_frame01.nii.gz      (H, W, Z) short-axis stack
    patient001_frame01_gt.nii.gz   0 bg, 1 RV, 2 myocardium, 3 LV blood pool
    patient001_frame12.nii.gz ...  (Info.cfg, *_4d.nii.gz are ignored / read for ED-ES)"""
    options = {
        "label_map": Option(
            "medloop",
            "medloop: 0 bg, 1 myocardium, 2 blood pool (RV -> background); medloop-rv: RV as class 3; raw: ACDC labels",
            tuple(ACDC_LABEL_MAPS),
        )
    }
    volumetric = True

    @classmethod
    def detect(cls, root: Path) -> bool:
        for sub in root.iterdir():
            if sub.is_dir() and _PATIENT.match(sub.name) and any(_FRAME.match(strip_suffix(p)) for p in _nifti_files(sub)):
                return True
        return False

    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, str(self.root), (), ACDC_LABEL_MAPS[self.opts["label_map"]][1], True)

    def mask_values(self) -> set[int]:
        return {0, 1, 2, 3}

    def label_map(self) -> dict[int, int]:
        return ACDC_LABEL_MAPS[self.opts["label_map"]][0]

    @staticmethod
    def _phases(folder: Path) -> dict[int, str]:
        cfg = folder / "Info.cfg"
        phases: dict[int, str] = {}
        if cfg.is_file():
            for line in cfg.read_text(errors="replace").splitlines():
                key, _, value = line.partition(":")
                if key.strip() in ("ED", "ES") and value.strip().isdigit():
                    phases[int(value)] = key.strip()
        return phases

    def scan(self) -> Iterator[Entry | DataError]:
        _, folders, problems = list_dir(self.root, recursive=False)
        yield from problems
        for folder in (p for p in folders if _PATIENT.match(p.name)):
            listed, problems = _nifti_listing(folder)
            yield from problems
            files = {strip_suffix(p): p for p in listed}
            phases = self._phases(folder)
            for stem, path in files.items():
                match = _FRAME.match(stem)
                if not match:
                    continue  # patientXXX_4d.nii.gz: the whole cine, not an annotated frame
                patient, frame, is_gt = match.group(1), int(match.group(2)), match.group(3)
                if is_gt:
                    if stem[:-3] not in files:
                        yield DataError("label volume without its image volume; add the image or remove the label", path, "missing")
                    continue
                gt = files.get(f"{stem}_gt")
                meta = {"frame": frame}
                if frame in phases:
                    meta["phase"] = phases[frame]
                yield Entry(stem, patient, path, (gt,) if gt else (), None, meta=meta)

    def load(self, entry: Entry, size: int | None) -> RawItem:
        image = read_nifti(entry.image)
        if not entry.masks:
            return RawItem(_as_slices(image, entry.image))
        label = read_nifti(entry.masks[0])
        _check_same_grid(image, label, entry.image, entry.masks[0])
        return RawItem(_as_slices(image, entry.image), _as_slices(label, entry.masks[0])[..., 0], str(entry.masks[0]))


@LAYOUTS.register("nifti")
class NiftiLayout(Layout):
    name = "nifti"
    priority = 20
    summary = "generic NIfTI (Medical Segmentation Decathlon / nnU-Net): imagesTr/ + labelsTr/ (+ imagesTs/ unlabeled)"
    tree = """\
Task02_Heart/
  dataset.json                 (optional: "labels" names the label values)
  imagesTr/la_003.nii.gz       (H, W, Z) or (H, W, Z, modalities); nnU-Net names case_0000.nii.gz work too
  labelsTr/la_003.nii.gz
  imagesTs/la_001.nii.gz       (optional: read as unlabeled)"""
    options = {"mask_labels": Option(None, "declared label values when there is no dataset.json, e.g. [0,1,2]", kind=list)}
    volumetric = True

    def __init__(self, root, seed: int = 0, **options):
        super().__init__(root, seed, **options)
        self._labels = self._read_labels()

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "imagesTr").is_dir()

    def _read_labels(self) -> dict[int, str] | None:
        option = self.opts["mask_labels"]
        if option is not None:
            if not all(isinstance(v, int) and v >= 0 for v in option):
                raise ConfigError(f"The 'mask_labels' option of layout 'nifti' must be integers >= 0; got {option!r} instead")
            return {v: "background" if v == 0 else f"label {v}" for v in sorted(option)}
        path = self.root / "dataset.json"
        if not path.is_file():
            return None
        try:
            labels = json.loads(path.read_text()).get("labels")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise DataError(f"not valid JSON ({exc}); fix it or remove it", path, "format") from None
        if not isinstance(labels, dict):
            return None
        try:
            if all(str(k).isdigit() for k in labels):  # MSD: {"0": "background", ...}
                return {int(k): str(v) for k, v in labels.items()}
            return {int(v): str(k) for k, v in labels.items() if not isinstance(v, list)}  # nnU-Net v2
        except (TypeError, ValueError):
            raise DataError("the 'labels' entry must map label values to names", path, "format") from None

    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, str(self.root), (), dict(self._labels or {}), True)

    def mask_values(self) -> set[int] | None:
        return set(self._labels) if self._labels is not None else None

    @staticmethod
    def _group(files: list[Path]) -> dict[str, list[Path]]:
        cases: dict[str, list[Path]] = {}
        for path in files:
            stem = strip_suffix(path)
            match = re.match(r"^(.*)_(\d{4})$", stem)  # nnU-Net modality suffix
            cases.setdefault(match.group(1) if match else stem, []).append(path)
        return cases

    def scan(self) -> Iterator[Entry | DataError]:
        listings = {sub: _nifti_listing(self.root / sub) for sub in ("imagesTr", "labelsTr", "imagesTs")}
        for _, problems in listings.values():
            yield from problems
        labels = {strip_suffix(p): p for p in listings["labelsTr"][0]}
        train = self._group(listings["imagesTr"][0])
        for case, paths in train.items():
            label = labels.get(case)
            yield Entry(case, case, paths[0], (label,) if label else (), None, meta={"modalities": [str(p) for p in paths], "split": "Tr"})
        for case in sorted(set(labels) - set(train)):
            yield DataError("label volume without an image in imagesTr/; add the image or remove the label", labels[case], "missing")
        for case, paths in self._group(listings["imagesTs"][0]).items():
            yield Entry(f"Ts/{case}", case, paths[0], (), None, meta={"modalities": [str(p) for p in paths], "split": "Ts"})

    def load(self, entry: Entry, size: int | None) -> RawItem:
        paths = [Path(p) for p in entry.meta["modalities"]]
        volumes = [read_nifti(p) for p in paths]
        for p, v in zip(paths[1:], volumes[1:]):
            if v.shape != volumes[0].shape:
                raise DataError(f"modality shape {v.shape} differs from {paths[0].name} {volumes[0].shape}", p, "mask-size")
        image = volumes[0] if len(volumes) == 1 else np.stack(volumes, axis=-1)
        slices = _as_slices(image, entry.image)
        if not entry.masks:
            return RawItem(slices)
        label = read_nifti(entry.masks[0])
        _check_same_grid(image, label, entry.image, entry.masks[0])
        return RawItem(slices, _as_slices(label, entry.masks[0])[..., 0], str(entry.masks[0]))
