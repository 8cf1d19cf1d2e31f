"""Label files in and out of the server: PNG, NIfTI and NRRD as 3D Slicer, ITK and pynrrd write them, read on
the image's grid; every malformed, oversized or mismatched file a 4xx naming the problem."""

from __future__ import annotations

import bz2
import gzip
import io

import nibabel as nib
import numpy as np
import pytest

from medloop.serve.datastore import RequestError
from medloop.serve.labelfile import EXTENSIONS, decode_label, encode_label, result_extension
from tests.serve_support import png

nrrd = pytest.importorskip("nrrd", reason="pynrrd comes with the test extra: pip install -e .[test]")

SHAPE = (6, 9)  # [H, W]: not square, so a transposed file cannot pass


def mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[1:3, 2:7] = 1
    m[4, 0] = 2
    return m


def nifti(xy: np.ndarray, compressed: bool) -> bytes:
    raw = nib.Nifti1Image(xy, np.diag([-1.0, -1.0, 1.0, 1.0])).to_bytes()
    return gzip.compress(raw) if compressed else raw


def pynrrd(xy: np.ndarray, encoding: str, **header) -> bytes:
    """What pynrrd (and so ITK and Slicer, which write the same layout) writes for an ``[x, y, ...]`` array."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "label.nrrd")
        nrrd.write(path, xy, {"encoding": encoding, **header})
        with open(path, "rb") as fh:
            return fh.read()


SLICER_GRID = mask().T[:, :, None]  # Slicer exports a 2D image's label as an x-by-y-by-1 volume

GOOD = [
    ("png", lambda: png(mask())),
    ("png-rgba-gray", lambda: png(np.stack([mask()] * 3 + [np.full(SHAPE, 255, np.uint8)], -1))),
    ("png-16bit", lambda: _png16(mask())),
    ("nii", lambda: nifti(SLICER_GRID, False)),
    ("nii.gz", lambda: nifti(SLICER_GRID, True)),
    ("nii.gz-2d-int16", lambda: nifti(mask().T.astype(np.int16), True)),
    ("nii-float-integral", lambda: nifti(SLICER_GRID.astype(np.float32), False)),
    ("nrrd-raw", lambda: pynrrd(SLICER_GRID, "raw")),
    ("nrrd-gzip", lambda: pynrrd(SLICER_GRID, "gzip")),
    ("nrrd-bzip2-int32", lambda: pynrrd(SLICER_GRID.astype(np.int32), "bzip2")),
    ("nrrd-ascii", lambda: pynrrd(mask().T.astype(np.int16), "ascii")),
    ("nrrd-big-endian", lambda: pynrrd(SLICER_GRID.astype(">u2"), "raw")),
]


def _png16(m: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(m.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("data", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_every_format_reads_back_the_label_on_the_images_grid(data):
    upload = decode_label(data(), "label", SHAPE)
    assert upload.mask.dtype == np.int64 and np.array_equal(upload.mask, mask())


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_what_infer_writes_reads_back(ext):
    assert np.array_equal(decode_label(encode_label(mask(), ext), f"x{ext}", SHAPE).mask, mask())


def test_nrrd_and_nifti_results_are_one_slice_in_the_png_images_geometry(tmp_path):
    (tmp_path / "r.nrrd").write_bytes(encode_label(mask(), ".nrrd"))
    voxels, fields = nrrd.read(str(tmp_path / "r.nrrd"))  # as pynrrd (and Slicer) read it
    assert voxels.shape == (SHAPE[1], SHAPE[0], 1) and np.array_equal(voxels[:, :, 0].T, mask())
    assert fields["space"] == "left-posterior-superior"
    image = nib.Nifti1Image.from_bytes(gzip.decompress(encode_label(mask(), ".nii.gz")))
    assert image.shape == (SHAPE[1], SHAPE[0], 1) and np.allclose(np.diag(image.affine), [-1, -1, 1, 1])


def test_a_slicer_seg_nrrd_is_placed_at_its_extent_and_names_its_segments():
    cropped = mask()[1:5, 0:7]  # Slicer stores only the segments' extent
    header = ("NRRD0004\ntype: unsigned char\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {cropped.shape[1]} {cropped.shape[0]} 1\nencoding: gzip\n"
              "Segment0_Name:=lung\nSegment0_LabelValue:=1\nSegment1_Name:=nodule\nSegment1_LabelValue:=2\n"
              "Segmentation_ReferenceImageExtentOffset:=0 1 0\n\n")
    upload = decode_label(header.encode() + gzip.compress(cropped.tobytes()), "label.seg.nrrd", SHAPE)
    assert np.array_equal(upload.mask, mask()) and upload.names == {1: "lung", 2: "nodule"}


def gzip_bomb() -> bytes:
    return gzip.compress(nib.Nifti1Image(np.zeros((3000, 3000, 1), np.uint8), np.eye(4)).to_bytes())


def header(fields: str) -> bytes:
    return f"NRRD0004\n{fields}\n".encode()


BAD = [
    (b"", 400, "is empty"),
    (b"GIF89a", 415, "is not a PNG"),
    (png(mask().T), 422, "is 6 x 9 (width x height) but the image is 9 x 6"),
    (nifti(mask()[:, :, None], False), 422, "stored row first"),
    (nifti(np.zeros((9, 6, 2), np.uint8), False), 422, "send one slice"),
    (nifti(SLICER_GRID.astype(np.float32) + 0.5, False), 422, "non-integer"),
    (nifti(SLICER_GRID, False)[:360], 422, "cannot be read"),
    (gzip_bomb(), 413, "decompresses to more than"),
    (b"\x1f\x8b" + bytes(30), 422, "cannot be decompressed"),
    (header("type: uchar\ndimension: 2\nsizes: 9 6\nencoding: raw\ndata file: label.raw\n"), 415, "separate file"),
    (header("type: block\ndimension: 2\nsizes: 9 6\nencoding: raw\n"), 422, "type 'block'"),
    (header("type: short\ndimension: 2\nsizes: 9 6\nencoding: raw\n") + bytes(108), 422, "'endian'"),
    (header("type: uchar\ndimension: 2\nsizes: 9 6\nencoding: raw\n") + bytes(10), 422, "holds 10 bytes"),
    (header("type: uchar\ndimension: 2\nsizes: 9\nencoding: raw\n"), 422, "declares dimension 2"),
    (header("type: uchar\ndimension: 2\nsizes: 9 6\nencoding: hex\n"), 422, "encoding 'hex'"),
    (header("type: uchar\ndimension: 2\nsizes: 9 6\nencoding: gzip\n") + gzip.compress(bytes(10 ** 6)), 413,
     "decompresses to more than"),
    (header("type: uchar\ndimension: 2\nsizes: 9 6\nencoding: bzip2\n") + bz2.compress(bytes(10 ** 6)), 413,
     "decompresses to more than"),
    (header("type: uchar\ndimension: 2\nsizes: 9 6\nencoding: ascii\n") + b"1 2 x", 422, "other than numbers"),
    (header("type: uchar\ndimension: 2\nsizes: 9 6\nencoding: raw\nbyte skip: 4\n") + bytes(60), 422, "skips bytes"),
    (b"NRRD0004\ntype: uchar\n", 422, "no end of header"),
    (header("type uchar\ndimension: 2\n"), 422, "neither 'field: value'"),
    (header("dimension: 2\nsizes: 9 6\nencoding: raw\n"), 422, "no 'type' field"),
]


@pytest.mark.parametrize("data,status,message", BAD, ids=[f"{b[1]}-{b[2]}" for b in BAD])
def test_bad_label_files_are_refused_naming_the_file_and_problem(data, status, message):
    with pytest.raises(RequestError) as err:
        decode_label(data, "upload.nii", SHAPE)
    assert err.value.status == status and message in str(err.value)
    assert "'upload.nii'" in str(err.value)


@pytest.mark.parametrize("asked,ext", [(None, ".png"), ("", ".png"), (".nrrd", ".nrrd"), ("nii.gz", ".nii.gz"),
                                       (".SEG.NRRD", ".nrrd")])
def test_result_extension_as_clients_ask_it(asked, ext):
    assert result_extension(asked) == ext


def test_an_unknown_result_extension_is_refused():
    with pytest.raises(RequestError, match="result_extension '.dcm'"):
        result_extension(".dcm")
