"""Shared fixtures: tiny data trees in every supported layout, built on the fly (no real data needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep phantom renders out of the user's cache."""
    os.environ["MEDLOOP_CACHE_DIR"] = str(tmp_path_factory.mktemp("medloop-cache"))
    yield


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def lung_mask(h: int, w: int, value: int = 255) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    m = (((xx - w * 0.3) / (w * 0.15)) ** 2 + ((yy - h / 2) / (h * 0.3)) ** 2 <= 1) | (
        ((xx - w * 0.7) / (w * 0.15)) ** 2 + ((yy - h / 2) / (h * 0.3)) ** 2 <= 1
    )
    return (m * value).astype(np.uint8)


def gray(h: int, w: int, seed: int, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 4095
    return rng.integers(0, top, (h, w)).astype(dtype)


@pytest.fixture
def folder_tree(tmp_path) -> Path:
    """images/ (4 PNG, 8-bit) + masks/ (3, 0/255) + labels.csv (one row with an empty mask cell)."""
    root = tmp_path / "folder"
    rows = ["image,mask,label,site"]
    for i in range(4):
        write_png(root / "images" / f"{i:03d}.png", gray(32, 32, i))
        if i < 3:
            write_png(root / "masks" / f"{i:03d}.png", lung_mask(32, 32))
            rows.append(f"images/{i:03d}.png,masks/{i:03d}.png,{i % 2},A")
        else:
            rows.append(f"images/{i:03d}.png,,1,B")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def montgomery_tree(tmp_path) -> Path:
    root = tmp_path / "MontgomerySet"
    for i, label in enumerate((0, 1, 1)):
        name = f"MCUCXR_{i:04d}_{label}.png"
        write_png(root / "CXR_png" / name, gray(40, 32, i))
        full = lung_mask(40, 32)
        left, right = full.copy(), full.copy()
        left[:, :16] = 0  # patient's left lung is on the image right
        right[:, 16:] = 0
        write_png(root / "ManualMask" / "leftMask" / name, left)
        write_png(root / "ManualMask" / "rightMask" / name, right)
    return root


@pytest.fixture
def shenzhen_tree(tmp_path) -> Path:
    root = tmp_path / "ChinaSet"
    for i, label in enumerate((0, 1, 0)):
        stem = f"CHNCXR_{i:04d}_{label}"
        write_png(root / "CXR_png" / f"{stem}.png", gray(32, 32, i))
        if i < 2:
            write_png(root / "masks" / f"{stem}_mask.png", lung_mask(32, 32))
    return root


def write_nifti(path: Path, array: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def acdc_label(h: int, w: int, z: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    lab = np.zeros((h, w), np.uint8)
    lab[r < 10] = 2
    lab[r < 6] = 3
    lab[(np.abs(yy - h / 2) < 5) & (xx <= 3)] = 1  # right ventricle beside the LV
    return np.repeat(lab[:, :, None], z, axis=2)


@pytest.fixture
def acdc_tree(tmp_path) -> Path:
    """Two patients, two frames each, (H, W, Z) = (32, 28, 3); patient002 frame 02 has no _gt."""
    root = tmp_path / "acdc"
    rng = np.random.default_rng(0)
    for p in (1, 2):
        folder = root / f"patient{p:03d}"
        (folder).mkdir(parents=True)
        (folder / "Info.cfg").write_text("ED: 1\nES: 2\nGroup: NOR\n")
        for f in (1, 2):
            stem = f"patient{p:03d}_frame{f:02d}"
            write_nifti(folder / f"{stem}.nii.gz", rng.random((32, 28, 3)).astype(np.float32))
            if not (p == 2 and f == 2):
                write_nifti(folder / f"{stem}_gt.nii.gz", acdc_label(32, 28, 3))
    return root


@pytest.fixture
def msd_tree(tmp_path) -> Path:
    root = tmp_path / "Task02_Heart"
    rng = np.random.default_rng(1)
    (root).mkdir()
    (root / "dataset.json").write_text('{"labels": {"0": "background", "1": "left atrium"}}')
    for name in ("la_003", "la_004"):
        write_nifti(root / "imagesTr" / f"{name}.nii.gz", rng.random((24, 24, 4)).astype(np.float32))
        lab = np.zeros((24, 24, 4), np.uint8)
        lab[8:16, 8:16, 1:3] = 1
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", lab)
    write_nifti(root / "imagesTs" / "la_001.nii.gz", rng.random((24, 24, 2)).astype(np.float32))
    return root


def write_dicom(path: Path, pixels: np.ndarray, patient_id: str = "P1", photometric: str = "MONOCHROME2",
                slope: float = 1.0, intercept: float = 0.0) -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture
def dicom_tree(tmp_path) -> Path:
    root = tmp_path / "pool"
    write_dicom(root / "study1" / "IM0001.dcm", gray(32, 32, 1, np.uint16), "P1")
    write_dicom(root / "study1" / "IM0002.dcm", gray(32, 32, 2, np.uint16), "P1")
    write_dicom(root / "study2" / "1.2.3", gray(32, 32, 3, np.uint16), "P2", photometric="MONOCHROME1")
    (root / "README.txt").write_text("not an image")
    return root


@pytest.fixture
def jsrt_tree(tmp_path) -> Path:
    """One raw .IMG (2048x2048 big-endian) with 1024 SCR masks, one PNG case without masks."""
    root = tmp_path / "JSRT"
    (root / "All247images").mkdir(parents=True)
    img = np.zeros((2048, 2048), dtype=">u2")
    img[:, :1024] = 4000  # raw high value = low density -> dark after inversion
    img[:, 1024:] = 100
    img.tofile(root / "All247images" / "JPCLN001.IMG")
    write_png(root / "All247images" / "JPCNN002.png", gray(64, 64, 5))
    m = lung_mask(1024, 1024)
    left, right = m.copy(), m.copy()
    left[:, :512] = 0
    right[:, 512:] = 0
    write_png(root / "scr" / "masks" / "left lung" / "JPCLN001.png", left)
    write_png(root / "scr" / "masks" / "right lung" / "JPCLN001.png", right)
    return root
