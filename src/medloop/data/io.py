"""Low-level readers: 2D image files, JSRT raw, NIfTI, DICOM. Every failure is a `DataError` naming the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from medloop.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "read_image",
    "read_jsrt_raw",
    "read_nifti",
    "gunzip_checked",
    "read_dicom",
    "is_dicom_file",
    "binarize_mask",
    "strip_suffix",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom")
_GZIP_MAGIC = b"\x1f\x8b"
JSRT_SHAPE = (2048, 2048)
# Anti-aliased 0/255 masks are thresholded at this value (>= is foreground); documented in README.
MASK_THRESHOLD = 128


def strip_suffix(path: Path | str) -> str:
    """File name without its (possibly double, ``.nii.gz``) suffix."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES + (".img",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_image(path: Path) -> np.ndarray:
    """Read a 2D image file as ``[H, W, C]`` (C = 1 or 3), keeping its bit depth.

    PNG/JPEG/GIF/BMP through Pillow (8 and 16 bit), TIFF through tifffile, DICOM through pydicom.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        volume = read_dicom(path)
        if volume.shape[0] != 1:
            raise DataError(
                f"DICOM has {volume.shape[0]} frames where one 2D image was expected; use the 'dicom' layout "
                "to read multi-frame files as slices",
                path,
                "format",
            )
        return volume[0]
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(
            f"unknown image format '{suffix or path.name}'; supported: {', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)}."
            " Convert the file or move it out of the folder",
            path,
            "format",
        )
    if not path.is_file():
        raise DataError("file not found; check the path", path, "missing")
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            array = tifffile.imread(path)
        except Exception as exc:  # tifffile raises many types on broken files
            raise DataError(f"cannot read TIFF ({exc}); the file is corrupt or truncated, re-export it", path, "corrupt") from None
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img.load()
                if img.mode == "P":  # palette GIF/PNG: use palette indices' luminance
                    img = img.convert("L")
                elif img.mode in ("RGBA", "LA", "CMYK", "YCbCr"):
                    img = img.convert("RGB" if img.mode != "LA" else "L")
                elif img.mode == "1":
                    img = img.convert("L")
                array = np.array(img)
        except UnidentifiedImageError:
            raise DataError(
                f"not a readable {suffix[1:].upper()} image (unknown or corrupt content); re-export the file", path, "corrupt"
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"corrupt or truncated image ({exc}); re-export or remove the file", path, "corrupt") from None
    return _to_hwc(array, path)


def _to_hwc(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and array.shape[-1] in (1, 3):
        return array
    if array.ndim == 3 and array.shape[-1] == 4:
        return array[..., :3]
    raise DataError(f"unsupported image shape {array.shape}; expected a 2D grayscale or RGB image", path, "format")


def read_jsrt_raw(path: Path) -> np.ndarray:
    """Read a JSRT ``.IMG`` file: 2048x2048, 12-bit, big-endian, no header.

    JSRT stores high values for low density; the result is inverted (``4095 - v``) so lungs are dark
    and bone bright, as radiographs are displayed. Returns ``[H, W, 1]`` uint16.
    """
    path = Path(path)
    expected = JSRT_SHAPE[0] * JSRT_SHAPE[1] * 2
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError("file not found; check the path", path, "missing") from None
    if size != expected:
        raise DataError(
            f"truncated or not a JSRT raw image: {size} bytes, expected {expected} (2048x2048, 16-bit); "
            "re-download the file",
            path,
            "corrupt",
        )
    data = np.fromfile(path, dtype=">u2").reshape(JSRT_SHAPE)
    data = np.clip(data, 0, 4095)
    return (4095 - data).astype(np.uint16)[:, :, None]


def read_nifti(path: Path) -> np.ndarray:
    """Read a NIfTI file's data array as stored (``(H, W, Z)`` or ``(H, W, Z, M)`` or 2D).

    A gzip-wrapped file (``.nii.gz``, or any file starting with the gzip magic) is decompressed once, in full,
    by ``gunzip_checked``, which verifies the CRC-32 and length at the end of each gzip member; nibabel then
    parses the decompressed bytes. nibabel's own reader never checks the CRC, so bit flips in the compressed
    data would otherwise enter the pool as wrong voxels.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError("file not found; check the path", path, "missing")
    try:
        with open(path, "rb") as fh:
            gzipped = fh.read(2) == _GZIP_MAGIC
        if not gzipped:
            img = nib.load(str(path))  # plain .nii: nibabel memory-maps it, no checksum to verify
        else:
            try:
                data = gunzip_checked(path.read_bytes(), path)
            except DataError as err:
                raise DataError(f"cannot read NIfTI: {err.detail}", path, err.reason) from None
            image_class = nib.Nifti2Image if nib.Nifti2Header.may_contain_header(data[:540]) else nib.Nifti1Image
            img = image_class.from_bytes(data)
        return np.asarray(img.dataobj)
    except DataError:
        raise
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors...
        raise DataError(f"cannot read NIfTI ({type(exc).__name__}: {exc}); the file is corrupt or truncated", path, "corrupt") from None


def gunzip_checked(data: bytes, path: Path | str) -> bytes:
    """Decompress gzip ``data`` read from ``path``, verifying each member's CRC-32 and length.

    Raises a DataError (reason ``corrupt``) naming ``path`` for a checksum mismatch, a truncated stream,
    damaged deflate data or a damaged gzip header.
    """
    import gzip
    import zlib

    fix = "re-download or re-export the file, or remove it"
    try:
        return gzip.decompress(data)
    except gzip.BadGzipFile as exc:
        if "CRC check failed" in str(exc) or "Incorrect length" in str(exc):
            raise DataError(f"gzip checksum failed ({exc}): the compressed data is damaged (bit flips on disk or "
                            f"in transfer), so its contents cannot be trusted; {fix}", path, "corrupt") from None
        raise DataError(f"damaged gzip header or trailing data ({exc}); {fix}", path, "corrupt") from None
    except EOFError:
        raise DataError(f"truncated: the gzip stream ends before its end marker; {fix}", path, "corrupt") from None
    except zlib.error as exc:
        raise DataError(f"damaged compressed data (zlib: {exc}); {fix}", path, "corrupt") from None


def is_dicom_file(path: Path) -> bool:
    """True for a ``.dcm`` name or a file with the DICOM ``DICM`` preamble marker."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: Path) -> np.ndarray:
    """Read a DICOM file as ``[F, H, W, C]`` (F frames) in modality units.

    Applies the modality LUT (rescale slope/intercept) and inverts MONOCHROME1 so high = bright.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
    except Exception as exc:
        raise DataError(f"cannot read DICOM pixels ({type(exc).__name__}: {exc}); the file is corrupt, truncated "
                        "or uses a compression without a decoder installed", path, "corrupt") from None
    array = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        array = array.max() - array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames == 1:
        array = array[None]
    if samples == 1:
        array = array[..., None]
    return array


def binarize_mask(array: np.ndarray, path: Path | str) -> tuple[np.ndarray, bool]:
    """Turn a binary mask stored as 0/1 or 0/255 into 0/1.

    Anti-aliased 0/255 masks (values between, e.g. after resizing with interpolation or JPEG) are
    thresholded at 128. Returns ``(mask, thresholded)``. Any other value set raises a DataError.
    """
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., 0]
    values = np.unique(array)
    if set(values.tolist()) <= {0, 1}:
        return array.astype(np.int64), False
    if set(values.tolist()) <= {0, 255}:
        return (array == 255).astype(np.int64), False
    if values.max() == 255 and values.min() >= 0:
        return (array >= MASK_THRESHOLD).astype(np.int64), True
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    raise DataError(
        f"mask values {{{shown}}} are outside the declared label set {{0, 1}} (binary mask, 0/255 accepted); "
        "save the mask as 0/1 or 0/255, or declare the labels with the 'mask_labels' option",
        path,
        "mask-values",
    )
