"""Label maps in and out of the annotation server: PNG, NIfTI (``.nii``, ``.nii.gz``) and NRRD (``.nrrd``,
``.seg.nrrd``), the files MONAI Label's client and 3D Slicer send and read.

An upload is untrusted: its declared size is checked against the image's before any pixel is decoded (a 48 KB
PNG can declare 20000 x 20000 pixels), compressed data is inflated only as far as a label of the image's size
can need, and every refusal is a ``RequestError`` (4xx) that names the file, the problem and the fix.

Axes: a PNG is ``[row, column]``. NIfTI and NRRD store x (the column) fastest, as ITK and 3D Slicer write them,
so their arrays are read as ``[x, y]`` and transposed; a third axis of length 1 (a 2D image that Slicer loaded as
a one-slice volume) is dropped. The voxel grid must be the image's; orientation and spacing are not resampled.
"""

from __future__ import annotations

import bz2
import gzip
import io
import re
import struct
import warnings
import zlib

import numpy as np

from medloop.serve.datastore import RequestError, png_bytes

__all__ = ["EXTENSIONS", "LabelFile", "decode_label", "encode_label", "result_extension"]

EXTENSIONS = (".png", ".nii", ".nii.gz", ".nrrd", ".seg.nrrd")  # what uploads and /infer results may be
_ACCEPTED = "a PNG (single-channel, or gray RGB), NIfTI (.nii, .nii.gz) or NRRD (.nrrd, .seg.nrrd) label map"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"
_LABEL_MODES = {"L", "P", "1", "I", "I;16", "I;16B", "I;16L", "LA", "RGB", "RGBA"}
_HEADER_ROOM = 1 << 16  # NIfTI header and extensions, NRRD header: more than any label file needs


class LabelFile:
    """A decoded upload: the ``[H, W]`` label values and, where the file names its values (a Slicer ``.seg.nrrd``),
    value -> segment name."""

    def __init__(self, mask: np.ndarray, names: dict[int, str] | None = None):
        self.mask, self.names = mask, names


def _refuse(message: str, status: int = 422) -> RequestError:
    return RequestError(message, status)


def result_extension(value: object) -> str:
    """The extension a client asks ``/infer`` for (``params.result_extension``, as 3D Slicer sends ``.nrrd``);
    PNG when it asks for none."""
    if value in (None, ""):
        return ".png"
    ext = str(value).lower()
    ext = ext if ext.startswith(".") else f".{ext}"
    if ext not in EXTENSIONS:
        raise _refuse(f"params.result_extension '{str(value)[:20]}' is not a label format this server writes; use one "
                      f"of {', '.join(EXTENSIONS)}")
    return ".nrrd" if ext == ".seg.nrrd" else ext


# ------------------------------------------------------------------------------------------------ reading


def decode_label(data: bytes, filename: str, shape: tuple[int, int]) -> LabelFile:
    """Decode an uploaded label map of an image of ``shape`` (``[H, W]``); the format comes from the bytes, the
    file name only words the messages."""
    name = (filename or "label")[:80]
    if not data:
        raise _refuse(f"the label file '{name}' is empty; send {_ACCEPTED}", 400)
    if data.startswith(_PNG_MAGIC):
        return LabelFile(_png(data, name, shape))
    if data.startswith(b"NRRD000"):
        return _nrrd(data, name, shape)
    height, width = shape
    need = _HEADER_ROOM + height * width * 8  # float64 voxels: the widest type a label could come in
    if data.startswith(_GZIP_MAGIC):
        data = _inflate(data, need, name, wbits=16 + zlib.MAX_WBITS)
    if _nifti_version(data):
        return LabelFile(_nifti(data, name, shape))
    raise _refuse(f"the label file '{name}' is not {_ACCEPTED}; send one of those", 415)


def _check_size(declared: tuple[int, ...], name: str, shape: tuple[int, int], order: str) -> None:
    height, width = shape
    if declared != (width, height):
        got = " x ".join(str(d) for d in declared)
        hint = ""
        if order == "xy" and declared == (height, width):
            hint = " (it looks stored row first: NIfTI and NRRD store x, the column, first, as ITK and Slicer write)"
        raise _refuse(f"the label '{name}' is {got} (width x height) but the image is {width} x {height}{hint}; send a "
                      "label map on the image's own grid")


def _png(data: bytes, name: str, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if len(data) >= 24 and data[12:16] == b"IHDR":  # the size, from the header, before Pillow decodes anything
        _check_size(struct.unpack(">II", data[16:24]), name, shape, "png")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                _check_size(im.size, name, shape, "png")
                if im.mode not in _LABEL_MODES:
                    raise _refuse(f"the label PNG '{name}' has mode {im.mode}; send a single-channel (gray or "
                                  "palette) PNG whose pixel values are the label values")
                im.load()
                pixels = np.asarray(im)
                mode = im.mode
    except RequestError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _refuse(f"the label PNG '{name}' cannot be decoded ({exc}); send an intact PNG") from None
    if pixels.ndim == 3:  # a browser's canvas.toBlob and most editors write gray labels as RGB(A)
        if mode in ("LA", "RGBA") and not (pixels[..., -1] == 255).all():
            raise _refuse(f"the label PNG '{name}' has transparent pixels; send an opaque PNG whose pixel values "
                          "are the label values")
        colour = pixels[..., :-1] if mode in ("LA", "RGBA") else pixels
        if not (colour == colour[..., :1]).all():
            raise _refuse(f"the label PNG '{name}' is in colour (its channels differ); send a single-channel PNG, or "
                          "a gray one, whose pixel values are the label values")
        pixels = colour[..., 0]
    return pixels.astype(np.int64)


def _inflate(data: bytes, limit: int, name: str, wbits: int | None = None) -> bytes:
    """Decompress at most ``limit`` bytes of a gzip or zlib stream (``wbits``) or, without ``wbits``, a bzip2
    one; more is a refusal, not a memory spike."""
    inflater = bz2.BZ2Decompressor() if wbits is None else zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except (zlib.error, OSError, ValueError) as exc:
        raise _refuse(f"the compressed label '{name}' cannot be decompressed ({exc}); send an intact file") from None
    if len(out) > limit:
        raise _refuse(f"the label '{name}' decompresses to more than {limit} bytes, more than a label of the image's "
                      "size needs; send the label map of this image", 413)
    return out


def _nifti_version(data: bytes) -> int:
    if len(data) >= 348 and data[344:348] in (b"n+1\x00", b"ni1\x00"):
        return 1
    if len(data) >= 540 and data[4:8] == b"n+2\x00":
        return 2
    return 0


def _nifti(data: bytes, name: str, shape: tuple[int, int]) -> np.ndarray:
    import nibabel as nib

    version = _nifti_version(data)
    if version == 1 and data[344:348] == b"ni1\x00":
        raise _refuse(f"the NIfTI label '{name}' is a header whose voxels are in a separate .img file; send one .nii "
                      "or .nii.gz file", 415)
    try:
        image = (nib.Nifti1Image if version == 1 else nib.Nifti2Image).from_bytes(data)
        declared = tuple(int(d) for d in image.shape)
    except Exception as exc:  # nibabel raises many types for damaged headers; all mean "not a usable NIfTI"
        raise _refuse(f"the NIfTI label '{name}' cannot be read ({type(exc).__name__}: {exc}); send an intact "
                      ".nii or .nii.gz file") from None
    _check_size(_plane(declared, name), name, shape, "xy")
    try:
        voxels = np.asanyarray(image.dataobj)
    except Exception as exc:
        raise _refuse(f"the voxels of the NIfTI label '{name}' cannot be read ({type(exc).__name__}: {exc}); send "
                      "an intact file") from None
    return _to_rows(voxels.reshape(voxels.shape[:2]), name)


def _plane(declared: tuple[int, ...], name: str) -> tuple[int, ...]:
    """``declared`` without trailing axes of length 1; a label with more than one slice is refused."""
    if len(declared) < 2 or any(d != 1 for d in declared[2:]):
        got = " x ".join(str(d) for d in declared)
        raise _refuse(f"the label '{name}' is {got}: this run's images are 2D; send one slice (x by y, or x by y by 1)")
    return declared[:2]


def _to_rows(xy: np.ndarray, name: str) -> np.ndarray:
    """An ``[x, y]`` array of label values as ``[row, column]`` int64; non-integer values are refused."""
    if xy.dtype.kind == "f":
        if not np.isfinite(xy).all() or not (xy == np.round(xy)).all():
            raise _refuse(f"the label '{name}' holds non-integer values; label values are integers (save it as an "
                          "integer label map)")
    elif xy.dtype.kind not in "iub":
        raise _refuse(f"the label '{name}' has voxel type {xy.dtype}; send integer label values")
    return np.ascontiguousarray(xy.T).astype(np.int64)


_NRRD_TYPE_NAMES = {  # NRRD's names of each voxel type -> numpy's
    "i1": ("signed char", "int8", "int8_t"), "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"), "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",), "f8": ("double",)}
_NRRD_TYPES = {name: code for code, names in _NRRD_TYPE_NAMES.items() for name in names}


def _nrrd(data: bytes, name: str, shape: tuple[int, int]) -> LabelFile:
    """A NRRD file with attached data (raw, gzip, bzip2 or ASCII encoding), as ITK, pynrrd and Slicer write it."""
    end = data.find(b"\n\n", 0, _HEADER_ROOM)
    crlf = data.find(b"\r\n\r\n", 0, _HEADER_ROOM)
    if crlf != -1 and (end == -1 or crlf < end):
        end, skip = crlf, 4
    else:
        skip = 2
    if end == -1:
        raise _refuse(f"the NRRD label '{name}' has no end of header (a blank line) in its first {_HEADER_ROOM} bytes; "
                      "send an intact .nrrd file with its data attached")
    fields: dict[str, str] = {}
    keys: dict[str, str] = {}
    for line in data[:end].decode("latin-1").splitlines()[1:]:
        if not line or line.startswith("#"):
            continue
        if ":=" in line:
            key, value = line.split(":=", 1)
            keys[key] = value
        elif ": " in line:
            field, value = line.split(": ", 1)
            fields[field.strip().lower()] = value.strip()
        else:
            raise _refuse(f"the NRRD label '{name}' has a header line that is neither 'field: value' nor 'key:=value' "
                          f"({line[:40]!r}); send an intact .nrrd file")
    body = data[end + skip:]

    def field(key: str, *aliases: str) -> str:
        for k in (key, *aliases):
            if k in fields:
                return fields[k]
        raise _refuse(f"the NRRD label '{name}' has no '{key}' field; send a complete NRRD header")

    if "data file" in fields or "datafile" in fields:
        raise _refuse(f"the NRRD label '{name}' keeps its voxels in a separate file (detached header); send one "
                      ".nrrd file with the data attached", 415)
    kind = _NRRD_TYPES.get(field("type").lower())
    if kind is None:
        raise _refuse(f"the NRRD label '{name}' has type '{fields['type'][:30]}'; send integer label values "
                      "(e.g. type: unsigned char)")
    try:
        dimension = int(field("dimension"))
        sizes = tuple(int(s) for s in field("sizes").split())
        skips = int(fields.get("byte skip", fields.get("byteskip", "0"))), int(fields.get("line skip",
                                                                                       fields.get("lineskip", "0")))
    except ValueError:
        raise _refuse(f"the NRRD label '{name}' has a malformed 'dimension', 'sizes' or skip field; send an intact "
                      ".nrrd file") from None
    if len(sizes) != dimension or any(s < 1 for s in sizes):
        raise _refuse(f"the NRRD label '{name}' declares dimension {dimension} with sizes {list(sizes)[:6]}; send an "
                      "intact .nrrd file")
    if skips != (0, 0):
        raise _refuse(f"the NRRD label '{name}' skips bytes or lines before its data; send a plain .nrrd file "
                      "(no 'byte skip' / 'line skip')")
    offset = [0, 0]
    if "Segmentation_ReferenceImageExtentOffset" in keys:  # Slicer crops a .seg.nrrd to its segments' extent
        try:
            offset = [int(v) for v in keys["Segmentation_ReferenceImageExtentOffset"].split()][:2]
        except ValueError:
            raise _refuse(f"the .seg.nrrd label '{name}' has a malformed Segmentation_ReferenceImageExtentOffset; "
                          "send an intact file") from None
    plane = _plane(sizes, name)
    height, width = shape
    if offset == [0, 0]:
        _check_size(plane, name, shape, "xy")
    elif min(offset) < 0 or offset[0] + plane[0] > width or offset[1] + plane[1] > height:
        raise _refuse(f"the .seg.nrrd label '{name}' ({plane[0]} x {plane[1]} at offset {offset}) does not fit in the "
                      f"image ({width} x {height}); export the segmentation on this image's geometry")
    dtype = np.dtype(kind)
    count = plane[0] * plane[1]
    encoding = field("encoding").lower()
    if encoding in ("raw", "gzip", "gz", "bzip2", "bz2"):
        if dtype.itemsize > 1:  # binary data of several bytes a voxel: the byte order must be said
            endian = fields.get("endian", "").lower()
            if endian not in ("little", "big"):
                raise _refuse(f"the NRRD label '{name}' has no valid 'endian' field (little or big); send a complete "
                              "header")
            dtype = dtype.newbyteorder("<" if endian == "little" else ">")
        if encoding in ("gzip", "gz"):
            body = _inflate(body, count * dtype.itemsize, name, wbits=32 + zlib.MAX_WBITS)
        elif encoding in ("bzip2", "bz2"):
            body = _inflate(body, count * dtype.itemsize, name)
        if len(body) < count * dtype.itemsize:
            raise _refuse(f"the NRRD label '{name}' holds {len(body)} bytes of data where {plane[0]} x {plane[1]} "
                          f"voxels of {dtype.itemsize} bytes need {count * dtype.itemsize}; send the whole file")
        voxels = np.frombuffer(body, dtype=dtype, count=count)
    elif encoding in ("ascii", "text", "txt"):
        try:
            voxels = np.array(body.split()[:count + 1], dtype=np.float64)
        except ValueError:
            raise _refuse(f"the ASCII data of the NRRD label '{name}' holds something other than numbers; send "
                          "an intact file") from None
        if voxels.size != count:
            raise _refuse(f"the NRRD label '{name}' holds {voxels.size} values where {count} are declared; send the "
                          "whole file")
    else:
        raise _refuse(f"the NRRD label '{name}' has encoding '{encoding[:20]}'; send raw, gzip, bzip2 or ascii data")
    xy = voxels.reshape(plane, order="F")  # x varies fastest in the file
    if offset != [0, 0]:
        full = np.zeros((width, height), dtype=xy.dtype)
        full[offset[0]:offset[0] + plane[0], offset[1]:offset[1] + plane[1]] = xy
        xy = full
    return LabelFile(_to_rows(xy, name), _segment_names(keys))


def _segment_names(keys: dict[str, str]) -> dict[int, str] | None:
    """Value -> name of the segments a Slicer ``.seg.nrrd`` declares (``SegmentN_Name``, ``SegmentN_LabelValue``)."""
    names = {}
    for key, value in keys.items():
        match = re.fullmatch(r"Segment(\d+)_Name", key)
        label = keys.get(f"Segment{match.group(1)}_LabelValue") if match else None
        if label is not None and label.strip().isdigit():
            names[int(label)] = value.strip()
    return names or None


# ------------------------------------------------------------------------------------------------ writing


def encode_label(mask: np.ndarray, ext: str) -> bytes:
    """A ``[H, W]`` label map as a file of ``ext`` (one of ``EXTENSIONS``), on the image's grid: PNG as is;
    NIfTI and NRRD as one x-by-y slice, x first, in the geometry ITK gives the PNG image (LPS, unit spacing)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    height, width = mask.shape
    if ext == ".png":
        return png_bytes(mask)
    if ext in (".nrrd", ".seg.nrrd"):
        header = ("NRRD0004\n# written by medloop serve: a label map on the image's grid\ntype: unsigned char\n"
                  "dimension: 3\nspace: left-posterior-superior\n"
                  f"sizes: {width} {height} 1\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\n"
                  "encoding: gzip\nspace origin: (0,0,0)\n\n")
        return header.encode("ascii") + gzip.compress(mask.tobytes(), mtime=0)  # rows of x: x varies fastest
    if ext in (".nii", ".nii.gz"):
        import nibabel as nib

        image = nib.Nifti1Image(mask.T[:, :, None], np.diag([-1.0, -1.0, 1.0, 1.0]))  # LPS identity, in RAS
        image.header.set_xyzt_units("mm")
        raw = image.to_bytes()
        return gzip.compress(raw, mtime=0) if ext == ".nii.gz" else raw
    raise ValueError(f"ext must be one of {EXTENSIONS}; got {ext!r}")
