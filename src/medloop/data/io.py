"""Low-level readers: 2D image files, JSRT raw, NIfTI, DICOM. Every failure is a `DataError` naming the file."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medloop.errors import DataError

log = logging.getLogger("medloop.data")

__all__ = [
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "read_image",
    "read_jsrt_raw",
    "read_nifti",
    "gunzip_checked",
    "read_dicom",
    "read_dicom_header",
    "is_dicom_file",
    "check_png_chunks",
    "binarize_mask",
    "strip_suffix",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom")
_GZIP_MAGIC = b"\x1f\x8b"
JSRT_SHAPE = (2048, 2048)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Third-party loggers whose warnings belong to the file being read (reported with its name, not printed bare).
# nibabel.global has a stream handler of its own, so it is listed beside its parent.
_READER_LOGGERS = ("pydicom", "nibabel", "nibabel.global", "PIL", "tifffile")
# Anti-aliased 0/255 masks are thresholded at this value (>= is foreground); documented in README.
MASK_THRESHOLD = 128


def strip_suffix(path: Path | str) -> str:
    """File name without its (possibly double, ``.nii.gz``) suffix."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES + (".img",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


class ReaderNoise(logging.Handler):
    """What third-party readers warned or logged while one file was read (see ``reader_noise``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.logged: list[str] = []
        self.warned: list[warnings.WarningMessage] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.logged.append(record.getMessage())

    def lines(self) -> list[str]:
        return self.logged + [str(w.message) for w in self.warned]

    def note(self, message: str = "") -> str:
        """`` (the reader also said: ...)`` to append to ``message``, or an empty string; each line once, shortened,
        and none that ``message`` already quotes."""
        lines = list(dict.fromkeys(line.strip().splitlines()[0][:200] for line in self.lines() if line.strip()))
        lines = [line for line in lines if line not in message]
        if not lines:
            return ""
        return f" (the reader also said: {'; '.join(lines[:3])}{' ...' if len(lines) > 3 else ''})"


@contextlib.contextmanager
def reader_noise(path: Path | str) -> Iterator[ReaderNoise]:
    """Collect what third-party readers warn or log while ``path`` is read.

    pydicom, nibabel and Pillow report problems through ``warnings`` and their own loggers, printed without
    the file's name (pydicom even logs tracebacks at ERROR level for files medloop then skips). Inside this
    block nothing is printed: a reader that fails puts ``noise.note()`` into its DataError for the file; when
    the file is read anyway, the lines are logged once at INFO level (``--verbose``) under the file's name.
    """
    with _NOISE_LOCK:  # logger handlers and the warnings filters are process-wide: one reader at a time swaps them
        with _collect(path) as noise:
            yield noise


_NOISE_LOCK = threading.RLock()


@contextlib.contextmanager
def _collect(path: Path | str) -> Iterator[ReaderNoise]:
    noise = ReaderNoise()
    loggers = [logging.getLogger(name) for name in _READER_LOGGERS]
    saved = [(lg.handlers, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers = [noise]
        lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            noise.warned = caught
            yield noise
    finally:
        for lg, (handlers, propagate) in zip(loggers, saved):
            lg.handlers = handlers
            lg.propagate = propagate
    if noise.lines():
        log.info("%s: read, with reader warnings%s", path, noise.note())


def check_png_chunks(data: bytes | memoryview, path: Path | str) -> None:
    """Verify the CRC-32 of every chunk of PNG ``data`` read from ``path`` (signature already matched).

    Pillow does not check the CRC of image data chunks, and damaged IDAT bytes often still inflate: the
    image then decodes with wrong pixels and no error. The CRCs are what the format offers to catch that;
    checking them costs one pass of zlib.crc32 over bytes already in memory. Raises a DataError (``corrupt``).
    """
    view = memoryview(data)
    fix = "re-export or remove the file, or download it again"
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 12 > len(view):
            raise DataError(f"corrupt or truncated image (the PNG ends at byte {len(view)} before its IEND chunk); {fix}",
                            path, "corrupt")
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8])
        name = kind.decode("ascii") if kind.isalpha() else repr(kind)
        end = pos + 12 + length
        if end > len(view):
            raise DataError(f"corrupt or truncated image (PNG chunk {name} at byte {pos} holds {length} bytes but the file "
                            f"ends at byte {len(view)}); {fix}", path, "corrupt")
        if zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(view[end - 4:end], "big"):
            raise DataError(f"corrupt image: PNG chunk {name} at byte {pos} fails its CRC-32 check (bit flips on disk or in "
                            f"transfer), so its pixels cannot be trusted; {fix}", path, "corrupt")
        if kind == b"IEND":
            return
        pos = end


def read_image(path: Path) -> np.ndarray:
    """Read a 2D image file as ``[H, W, C]`` (C = 1 or 3), keeping its bit depth.

    PNG/JPEG/GIF/BMP through Pillow (8 and 16 bit), TIFF through tifffile, DICOM through pydicom. A PNG's
    chunk CRCs are verified before it is decoded (``check_png_chunks``).
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
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found; check the path", path, "missing") from None
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror}); check its permissions", path, "unreadable") from None
    if data[:8] == _PNG_SIGNATURE:
        check_png_chunks(data, path)
    with reader_noise(path) as noise:
        try:
            array = _decode_image(data, suffix, path)
        except DataError as err:
            raise DataError(err.detail + noise.note(err.detail), path, err.reason) from None
    return _to_hwc(array, path)


def _decode_image(data: bytes, suffix: str, path: Path) -> np.ndarray:
    """Decode image bytes already read (and checked) once; every failure is a DataError naming ``path``."""
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            return tifffile.imread(io.BytesIO(data))
        except Exception as exc:  # tifffile raises many types on broken files
            raise DataError(f"cannot read TIFF ({exc}); the file is corrupt or truncated, re-export it", path, "corrupt") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode == "P":  # palette GIF/PNG: use palette indices' luminance
                img = img.convert("L")
            elif img.mode in ("RGBA", "LA", "CMYK", "YCbCr"):
                img = img.convert("RGB" if img.mode != "LA" else "L")
            elif img.mode == "1":
                img = img.convert("L")
            return np.array(img)
    except UnidentifiedImageError:
        raise DataError(
            f"not a readable {suffix[1:].upper()} image (unknown or corrupt content); re-export the file", path, "corrupt"
        ) from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image too large to decode safely ({exc}); a damaged size field or the wrong file: check it, "
                        "or downsample it before use", path, "too-large") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on broken files
        raise DataError(f"corrupt or truncated image ({exc}); re-export or remove the file", path, "corrupt") from None


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
    data would otherwise enter the pool as wrong voxels. ``check_nifti_header`` then holds the header against
    the data it describes.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError("file not found; check the path", path, "missing")
    with reader_noise(path) as noise:
        try:
            with open(path, "rb") as fh:
                head = fh.read(540)
            if head[:2] != _GZIP_MAGIC:
                img = nib.load(str(path))  # plain .nii: nibabel memory-maps it, no checksum to verify
                size = path.stat().st_size
            else:
                try:
                    data = gunzip_checked(path.read_bytes(), path)
                except DataError as err:
                    raise DataError(f"cannot read NIfTI: {err.detail}", path, err.reason) from None
                head, size = data[:540], len(data)
                image_class = nib.Nifti2Image if nib.Nifti2Header.may_contain_header(head) else nib.Nifti1Image
                img = image_class.from_bytes(data)
            check_nifti_header(head, img, size, path)
            return np.asarray(img.dataobj)
        except DataError as err:
            raise DataError(err.detail + noise.note(err.detail), path, err.reason) from None
        except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib errors...
            raise DataError(f"cannot read NIfTI ({type(exc).__name__}: {exc}); the file is corrupt or truncated"
                            + noise.note(str(exc)), path, "corrupt") from None


# nibabel's header diagnosis also judges the spatial transform (pixdim, qfac, qform/sform codes): those do not
# change a voxel value, are often imperfect in valid files, and medloop reads the voxel grid as stored.
_GEOMETRY_WORDS = ("pixdim", "qfac", "qform", "sform")


def check_nifti_header(head: bytes, img, size: int, path: Path | str) -> None:
    """Hold a NIfTI header against its data: fields that decide the voxel layout agree, and the data is exactly
    ``vox_offset + product(dims) * bytes per voxel`` long.

    Args:
        head: the first 540 bytes of the (decompressed) file, as stored, before nibabel fixes anything.
        img: the nibabel image read from it.
        size: length of the (decompressed) file in bytes.

    A damaged dims field that makes the data look smaller (``dim[3] - 1``, ``dim[0] = 2``) is otherwise read
    without complaint: nibabel ignores the surplus, and a slice is dropped or the volume is sheared. nibabel
    also quietly overrides a ``bitpix`` that disagrees with ``datatype``. Raises a DataError (``corrupt``).
    """
    import nibabel as nib

    fix = "the header or the data is damaged; re-export or re-download the file, or remove it"
    header_class = nib.Nifti2Header if nib.Nifti2Header.may_contain_header(head) else nib.Nifti1Header
    problems = [line.strip() for line in header_class.diagnose_binaryblock(head[:header_class.sizeof_hdr]).splitlines()
                if line.strip() and not any(word in line for word in _GEOMETRY_WORDS)]
    if problems:
        raise DataError(f"inconsistent NIfTI header ({'; '.join(problems)}); {fix}", path, "corrupt")
    proxy = img.dataobj
    shape = tuple(int(d) for d in proxy.shape)
    expected = int(proxy.offset) + int(np.prod(shape, dtype=np.int64)) * np.dtype(proxy.dtype).itemsize
    if size != expected:
        dims = "x".join(map(str, shape))
        more = "more" if size > expected else "fewer"
        raise DataError(f"the data holds {size} bytes where the header's dims {dims} of {np.dtype(proxy.dtype)} from byte "
                        f"{int(proxy.offset)} need {expected}: {abs(size - expected)} bytes {more} than the header "
                        f"describes; {fix}", path, "corrupt")


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


_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
# Photometric interpretation -> samples per pixel (PS3.3 C.7.6.3.1.2).
_PHOTOMETRIC_SAMPLES = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "HSV": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
    "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3, "YBR_ICT": 3, "YBR_RCT": 3, "XYB": 3, "ARGB": 4, "CMYK": 4,
}
# pydicom reads on past these disagreements between the header and the pixel data with only a warning
# (returning extra frames, or cutting the surplus off): a Rows, Columns or Number of Frames value is damaged.
_PIXEL_SIZE_WARNINGS = ("excess padding", "non-conformant padding", "larger than the given", "frames have been found")


def _dicom_element_at(head: bytes, offset: int) -> bool:
    """Whether a plausible first data element (group 0002 or 0008) starts at ``offset``: explicit VR in either
    byte order, or implicit VR little endian with a short length."""
    elem = head[offset:offset + 8]
    if len(elem) < 8:
        return False
    if elem[:2] in (b"\x00\x02", b"\x00\x08"):  # big endian is always explicit VR
        return elem[4:6] in _DICOM_VRS
    if elem[:2] in (b"\x02\x00", b"\x08\x00"):
        return elem[4:6] in _DICOM_VRS or int.from_bytes(elem[4:8], "little") < 0x10000
    return False


def _dicom_kind(path: Path) -> str | None:
    """``"part10"`` (DICM marker), ``"raw"`` (a dataset without the 128-byte preamble), ``"damaged-marker"``
    (the marker is not there but file meta elements follow where it should be) or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(140)
    except OSError:
        return None
    if head[128:132] == b"DICM":
        return "part10"
    if _dicom_element_at(head, 132):
        return "damaged-marker"
    if _dicom_element_at(head, 0):
        return "raw"
    return None


def is_dicom_file(path: Path) -> bool:
    """True for a ``.dcm`` / ``.dicom`` name, or content that starts like DICOM: the ``DICM`` marker at byte 128,
    a dataset written without the preamble (a group 0002/0008 element at byte 0), or file meta elements at
    byte 132 behind a damaged marker (listed so that the damage is named, not passed over)."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or _dicom_kind(path) is not None


def _open_dicom(path: Path, stop_before_pixels: bool):
    """dcmread ``path`` with every element's value converted (a damaged value representation or length raises
    here, inside the caller's guarded region, rather than when a tag is first used)."""
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    kind = _dicom_kind(path)
    if kind == "damaged-marker":
        raise DataError("the 'DICM' marker at byte 128 is damaged (file meta elements follow where it should be); "
                        "re-export or re-download the file, or remove it", path, "corrupt")
    if kind is None and not path.is_file():
        raise DataError("file not found; check the path", path, "missing")
    if kind is None:
        raise DataError("not a DICOM file: no 'DICM' marker at byte 128 and no DICOM element at the start; the file is "
                        "damaged or of another format: re-export it or move it out of the folder", path, "corrupt")
    ds = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, force=kind == "raw")
    for _ in ds.iterall():  # iterating converts each raw element (VR, length, value)
        pass
    if kind == "raw" and "TransferSyntaxUID" not in ds.file_meta:
        # a dataset without file meta is uncompressed, in the encoding its elements were read with
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def read_dicom_header(path: Path):
    """Read a DICOM file's elements without its pixel data; any damage is a DataError naming ``path``.

    Returns a pydicom Dataset whose element values are already converted, so reading a tag cannot raise.
    """
    path = Path(path)
    with reader_noise(path) as noise:
        try:
            return _open_dicom(path, stop_before_pixels=True)
        except DataError as err:
            raise DataError(err.detail + noise.note(err.detail), path, err.reason) from None
        except Exception as exc:
            raise DataError(f"cannot read DICOM header ({type(exc).__name__}: {exc}); the file is corrupt"
                            + noise.note(str(exc)), path, "corrupt") from None


def _check_pixel_module(ds, path: Path) -> tuple[int, int, int, int]:
    """Check the Image Pixel module's values against each other and the standard; returns
    ``(frames, rows, columns, samples)``."""
    fix = "the header is damaged; re-export or re-download the file, or remove it"
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError("no pixel data element (7FE0,0010); this DICOM holds no image (a report, a plan, a structured "
                        "document?): move it out of the folder", path, "format")
    missing = [k for k in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")
               if ds.get(k) in (None, "")]
    if missing:
        raise DataError(f"the image pixel module lacks {', '.join(missing)}; {fix}", path, "corrupt")
    rows, columns, bits, samples = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated), int(ds.SamplesPerPixel)
    stored = int(ds.get("BitsStored") or bits)
    high = ds.get("HighBit")
    frames_value = ds.get("NumberOfFrames")
    frames = int(frames_value) if frames_value not in (None, "") else 1
    photometric = str(ds.PhotometricInterpretation).strip()
    bad = []
    if rows < 1 or columns < 1:
        bad.append(f"Rows x Columns = {rows} x {columns}")
    if bits not in (1, 8, 16, 32, 64):
        bad.append(f"Bits Allocated = {bits} (1, 8, 16, 32 or 64)")
    if not 1 <= stored <= bits:
        bad.append(f"Bits Stored = {stored} with Bits Allocated {bits}")
    if high not in (None, "") and int(high) != stored - 1:
        bad.append(f"High Bit = {int(high)} where Bits Stored {stored} needs {stored - 1}")
    if ds.get("PixelRepresentation") not in (None, 0, 1):
        bad.append(f"Pixel Representation = {ds.PixelRepresentation} (0 or 1)")
    if frames < 1:
        bad.append(f"Number of Frames = {frames}")
    if photometric not in _PHOTOMETRIC_SAMPLES:
        bad.append(f"Photometric Interpretation = '{photometric}' (unknown)")
    elif _PHOTOMETRIC_SAMPLES[photometric] != samples:
        bad.append(f"Samples per Pixel = {samples} where {photometric} has {_PHOTOMETRIC_SAMPLES[photometric]}")
    if samples > 1 and ds.get("PlanarConfiguration") not in (None, 0, 1):
        bad.append(f"Planar Configuration = {ds.PlanarConfiguration} (0 or 1)")
    for key in ("RescaleSlope", "RescaleIntercept"):
        value = ds.get(key)
        if value in (None, ""):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not np.isfinite(number) or (key == "RescaleSlope" and number == 0):
            bad.append(f"{key} = {value!r}")
    if bad:
        raise DataError(f"impossible image pixel values: {'; '.join(bad)}; {fix}", path, "corrupt")
    return frames, rows, columns, samples


def _check_native_length(ds, path: Path) -> None:
    """Uncompressed pixel data is exactly Rows x Columns x Samples x Bits Allocated / 8 x Frames bytes long
    (plus one pad byte to an even length). A damaged Rows or Columns smaller than the data is otherwise read
    as a cut or sheared image, or as extra frames."""
    from pydicom.pixels.utils import get_expected_length

    keyword = next(k for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in ds)
    actual = len(ds[keyword].value)
    expected = get_expected_length(ds, unit="bytes")
    if actual not in (expected, expected + expected % 2):
        more = "more" if actual > expected else "fewer"
        raise DataError(
            f"pixel data holds {actual} bytes where Rows x Columns x Samples x Bits Allocated x Frames "
            f"({ds.Rows} x {ds.Columns} x {ds.SamplesPerPixel} x {ds.BitsAllocated} bits x "
            f"{ds.get('NumberOfFrames') or 1}) need {expected}: {abs(actual - expected)} bytes {more}; the header or the "
            "pixel data is damaged: re-export or re-download the file, or remove it",
            path,
            "corrupt",
        )


def read_dicom(path: Path) -> np.ndarray:
    """Read a DICOM file as ``[F, H, W, C]`` (F frames) in modality units.

    Applies the modality LUT (rescale slope/intercept) and inverts MONOCHROME1 so high = bright. Before
    decoding, the image pixel module is checked for consistency and uncompressed pixel data against the size
    the header gives; compressed pixel data is decoded and its shape held against the header.
    """
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    with reader_noise(path) as noise:
        try:
            ds = _open_dicom(path, stop_before_pixels=False)
            frames, rows, columns, samples = _check_pixel_module(ds, path)
            encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
            if not encapsulated:
                _check_native_length(ds, path)
            pixels = ds.pixel_array
            size_warnings = [line for line in noise.lines() if any(w in line for w in _PIXEL_SIZE_WARNINGS)]
            if size_warnings:
                raise DataError(f"the pixel data does not match the header ({size_warnings[0]}); the header or the pixel "
                                "data is damaged: re-export or re-download the file, or remove it", path, "corrupt")
            expected = (*((frames,) if frames > 1 else ()), rows, columns, *((samples,) if samples > 1 else ()))
            if pixels.shape != expected:
                raise DataError(f"decoded pixel array {pixels.shape} does not match the header's {expected} (frames, rows, "
                                "columns, samples); the header or the compressed data is damaged: re-export or re-download "
                                "the file, or remove it", path, "corrupt")
            array = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
        except DataError as err:
            raise DataError(err.detail + noise.note(err.detail), path, err.reason) from None
        except Exception as exc:
            raise DataError(f"cannot read DICOM pixels ({type(exc).__name__}: {exc}); the file is corrupt, truncated "
                            "or uses a compression without a decoder installed" + noise.note(str(exc)), path, "corrupt") from None
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        array = array.max() - array
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
