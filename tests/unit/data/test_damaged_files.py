"""Damaged files in each real format are named and skipped (``on_error: skip``) or stop the read with an error
naming them: nothing damaged is read in silence, and nothing that cannot be listed is passed over unseen.

Each fixture is a real-format file (pydicom's bundled test files, PNGs and NIfTIs written here) damaged the
way disks and transfers damage them: a flipped bit, a header field that no longer matches the data."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import zlib

import numpy as np
import pytest

from medloop.data import load_dataset, summarize
from medloop.data.io import read_dicom, read_image, read_nifti
from medloop.errors import DataError
from tests.conftest import gray, lung_mask, write_nifti, write_png

pydicom = pytest.importorskip("pydicom")


def _testdata(name):
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


def _skip(root, caplog, **kw):
    with caplog.at_level(logging.WARNING, logger="medloop.data"):
        return load_dataset(str(root), on_error="skip", progress=False, **kw)


# -- DICOM ------------------------------------------------------------------------------------------------


def _dicom_pool(tmp_path):
    root = tmp_path / "pool"
    root.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(_testdata(name), root / name)
    return root


def _save_modified(src, dst, **changes):
    ds = pydicom.dcmread(_testdata(src))
    for key, value in changes.items():
        setattr(ds, key, value(ds) if callable(value) else value)
    ds.save_as(dst)
    return dst


def test_dicom_value_representation_flip_is_a_named_skip_not_a_crash(tmp_path, caplog):
    root = _dicom_pool(tmp_path)
    raw = bytearray(open(_testdata("CT_small.dcm"), "rb").read())
    at = raw.find(b"\x20\x00\x0d\x00UI")  # StudyInstanceUID, explicit VR 'UI'
    raw[at + 4:at + 6] = b"WI"
    (root / "vr_flip.dcm").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"vr_flip\.dcm: cannot read DICOM header \(NotImplementedError: Unknown Value "
                                        r"Representation 'WI'"):
        load_dataset(str(root), progress=False)
    ds = _skip(root, caplog)
    assert sorted(ds.entry_ids) == ["CT_small", "MR_small"]
    assert summarize(ds).skipped == {"corrupt": 1} and "vr_flip.dcm" in caplog.text


@pytest.mark.parametrize("change, extra", [
    ({"Rows": lambda ds: ds.Rows - 1}, 256),
    ({"Columns": lambda ds: ds.Columns - 1}, 256),
    ({"Rows": lambda ds: ds.Rows // 2}, 16384),  # read as two frames before: a two-slice volume
    ({"NumberOfFrames": 2}, -32768),
])
def test_dicom_header_size_against_uncompressed_pixel_data(tmp_path, change, extra):
    path = _save_modified("CT_small.dcm", tmp_path / "bad.dcm", **change)
    more = "more" if extra > 0 else "fewer"
    with pytest.raises(DataError, match=rf"bad\.dcm: pixel data holds \d+ bytes where Rows x Columns .* need \d+: "
                                        rf"{abs(extra)} bytes {more}; the header or the pixel data is damaged") as info:
        read_dicom(path)
    assert info.value.reason == "corrupt"


def test_dicom_rows_smaller_than_compressed_data_is_refused(tmp_path):
    path = _save_modified("MR_small_RLE.dcm", tmp_path / "rle.dcm", Rows=lambda ds: ds.Rows - 1)
    with pytest.raises(DataError, match=r"rle\.dcm: the pixel data does not match the header \(.*RLE segment"):
        read_dicom(path)


def test_dicom_rows_smaller_than_data_is_skipped_by_the_dicom_layout(tmp_path, caplog):
    root = _dicom_pool(tmp_path)
    _save_modified("CT_small.dcm", root / "half.dcm", Rows=lambda ds: ds.Rows // 2)
    ds = _skip(root, caplog)
    assert sorted(ds.entry_ids) == ["CT_small", "MR_small"]  # not a two-slice volume
    assert "half.dcm: pixel data holds 32768 bytes" in caplog.text


@pytest.mark.parametrize("change, match", [
    ({"BitsStored": 17}, r"Bits Stored = 17 with Bits Allocated 16"),
    ({"HighBit": 4}, r"High Bit = 4 where Bits Stored 16 needs 15"),
    ({"SamplesPerPixel": 3}, r"Samples per Pixel = 3 where MONOCHROME2 has 1"),
    ({"PhotometricInterpretation": "MONOCHROME3"}, r"Photometric Interpretation = 'MONOCHROME3' \(unknown\)"),
])
def test_dicom_impossible_pixel_module_values_are_named(tmp_path, change, match):
    path = _save_modified("CT_small.dcm", tmp_path / "bad.dcm", **change)
    with pytest.raises(DataError, match=rf"bad\.dcm: impossible image pixel values: .*{match}"):
        read_dicom(path)


def test_dicom_rescale_slope_that_is_not_a_number_is_named(tmp_path):
    raw = bytearray(open(_testdata("CT_small.dcm"), "rb").read())
    at = raw.find(b"\x28\x00\x53\x10DS\x02\x00")  # Rescale Slope, value '1 '
    raw[at + 8] = ord("x")
    (tmp_path / "slope.dcm").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"slope\.dcm: impossible image pixel values: RescaleSlope = 'x'"):
        read_dicom(tmp_path / "slope.dcm")


def test_dicom_decoder_tracebacks_go_into_the_message_not_the_log(tmp_path, caplog):
    raw = bytearray(open(_testdata("SC_rgb_jpeg_dcmtk.dcm"), "rb").read())
    soi = raw.find(b"\xff\xd8\xff")  # start of the JPEG codestream in the first fragment
    raw[soi + 1] = 0x00
    (tmp_path / "jpeg.dcm").write_bytes(bytes(raw))
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(DataError, match=r"jpeg\.dcm: cannot read DICOM pixels \(RuntimeError: Unable to decode"):
            read_dicom(tmp_path / "jpeg.dcm")
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]


def test_dicom_without_suffix_or_preamble_is_listed_and_a_damaged_marker_named(tmp_path, caplog):
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    root = _dicom_pool(tmp_path)
    shutil.copy(_testdata("MR_small.dcm"), root / "1.2.840.99")  # no suffix, DICM marker
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, pydicom.dcmread(_testdata("CT_small.dcm")))
    (root / "raw_dataset").write_bytes(fp.getvalue())  # no preamble, no file meta
    damaged = bytearray(open(_testdata("MR_small.dcm"), "rb").read())
    damaged[129] ^= 0x01  # 'DICM' -> 'DHCM'
    (root / "marker").write_bytes(bytes(damaged))
    (root / "notes.txt").write_text("exported by the scanner")
    ds = _skip(root, caplog)
    assert sorted(ds.entry_ids) == ["1.2.840.99", "CT_small", "MR_small", "raw_dataset"]
    assert np.array_equal(ds[ds.entry_ids.index("raw_dataset")].image, ds[ds.entry_ids.index("CT_small")].image)
    assert "marker: the 'DICM' marker at byte 128 is damaged" in caplog.text
    summary = summarize(ds)
    assert summary.notes == {"non-DICOM files ignored": 1} and summary.ignored_files == [str(root / "notes.txt")]


# -- NIfTI -------------------------------------------------------------------------------------------------


def _volume(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(100, 20, (24, 20, 5))).astype(np.int16)


def _damage_header(path, edit):
    """Apply ``edit`` to the header bytes of a .nii or .nii.gz (a valid gzip again: its CRC cannot help)."""
    gz = path.name.endswith(".gz")
    data = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    edit(data)
    path.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))


def _set_dims(data, **dims):
    values = list(struct.unpack("<8h", data[40:56]))
    for index, value in dims.items():
        values[int(index[1:])] = value(values) if callable(value) else value
    data[40:56] = struct.pack("<8h", *values)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dims, extra", [
    ({"d3": lambda d: d[3] - 1}, 24 * 20 * 2),  # a slice dropped
    ({"d0": 2}, 24 * 20 * 4 * 2),  # only the first slice kept
    ({"d1": lambda d: d[1] - 1}, 20 * 5 * 2),  # sheared
    ({"d3": lambda d: d[3] + 1}, -24 * 20 * 2),
])
def test_nifti_header_dims_against_the_data_size(tmp_path, suffix, dims, extra):
    path = write_nifti(tmp_path / f"vol{suffix}", _volume())
    _damage_header(path, lambda data: _set_dims(data, **dims))
    more = "more" if extra > 0 else "fewer"
    with pytest.raises(DataError, match=rf"vol{suffix}: the data holds \d+ bytes where the header's dims .* need \d+: "
                                        rf"{abs(extra)} bytes {more} than the header describes") as info:
        read_nifti(path)
    assert info.value.reason == "corrupt"


def test_nifti_bitpix_disagreeing_with_datatype_is_refused(tmp_path):
    path = write_nifti(tmp_path / "vol.nii.gz", _volume())
    _damage_header(path, lambda data: data.__setitem__(slice(72, 74), struct.pack("<h", 32)))
    with pytest.raises(DataError, match=r"vol\.nii\.gz: inconsistent NIfTI header \(bitpix does not match datatype\)"):
        read_nifti(path)


def test_nifti_dims_damage_is_skipped_by_acdc_without_a_label_beside_it(tmp_path, caplog):
    root = tmp_path / "acdc"
    for p in (1, 2):
        write_nifti(root / f"patient{p:03d}" / f"patient{p:03d}_frame01.nii.gz", _volume(p))
    _damage_header(root / "patient002" / "patient002_frame01.nii.gz", lambda data: _set_dims(data, d3=4))
    ds = _skip(root, caplog)
    assert set(ds.case_ids) == {"patient001"} and summarize(ds).skipped == {"corrupt": 1}
    assert "patient002_frame01.nii.gz: the data holds" in caplog.text


def test_nifti_header_warnings_are_not_printed(tmp_path, caplog, capsys):
    path = write_nifti(tmp_path / "vol.nii", _volume())
    _damage_header(path, lambda data: data.__setitem__(slice(0, 4), struct.pack("<i", 349)))  # sizeof_hdr
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(DataError, match=r"vol\.nii: inconsistent NIfTI header \(sizeof_hdr should be 348"):
            read_nifti(path)
    assert not [r for r in caplog.records if r.name.startswith("nibabel")]
    assert "sizeof_hdr" not in capsys.readouterr().err


# -- PNG ---------------------------------------------------------------------------------------------------


def _smooth(h=64, w=64, seed=0):
    """A radiograph-like image: a smooth gradient with mild noise (damaged deflate data still inflates)."""
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(seed).normal(0, 3, (h, w))
    return np.clip(60 + xx + yy + noise, 0, 255).astype(np.uint8)


def _flip_an_idat_bit_that_still_decodes(path):
    """Flip one bit inside IDAT such that Pillow decodes the image without error but with other pixels (the
    case the CRC guards: Pillow does not check IDAT CRCs)."""
    import io

    from PIL import Image

    original = path.read_bytes()
    pixels = np.array(Image.open(path))
    start = original.find(b"IDAT") + 4
    length = struct.unpack(">I", original[start - 8:start - 4])[0]
    for pos in range(start + length // 2, start + length - 8):
        damaged = bytearray(original)
        damaged[pos] ^= 0x08
        try:
            decoded = np.array(Image.open(io.BytesIO(bytes(damaged))))
        except Exception:
            continue
        if decoded.shape == pixels.shape and (decoded != pixels).sum() > 10:
            path.write_bytes(bytes(damaged))
            return
    raise AssertionError(f"no IDAT bit flip in {path} that still decodes")


def test_png_idat_bit_flip_that_still_decodes_is_refused(tmp_path):
    path = write_png(tmp_path / "x.png", _smooth())
    _flip_an_idat_bit_that_still_decodes(path)
    with pytest.raises(DataError, match=r"x\.png: corrupt image: PNG chunk IDAT at byte \d+ fails its CRC-32 check") as info:
        read_image(path)
    assert info.value.reason == "corrupt"


def test_png_bit_flips_in_image_and_mask_are_named_skips(tmp_path, caplog):
    root = tmp_path / "ds"
    for i in range(3):
        write_png(root / "images" / f"{i:03d}.png", _smooth(seed=i))
        write_png(root / "masks" / f"{i:03d}.png", lung_mask(64, 64))
    _flip_an_idat_bit_that_still_decodes(root / "images" / "001.png")
    raw = bytearray((root / "masks" / "002.png").read_bytes())
    raw[raw.find(b"IDAT") + 6] ^= 0x01  # a 0/255 mask: thresholding would hide the damage
    (root / "masks" / "002.png").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"images/001\.png: corrupt image"):
        load_dataset(str(root), progress=False)
    ds = _skip(root, caplog)
    assert ds.sample_ids == ["000"]
    assert "masks/002.png: corrupt image: PNG chunk IDAT" in caplog.text
    assert summarize(ds).notes == {}


def _png_bytes(width, height, idat):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_oversized_mask_is_reported_under_the_mask_not_its_image(tmp_path, caplog):
    root = tmp_path / "ds"
    for i in range(2):
        write_png(root / "images" / f"{i:03d}.png", gray(32, 32, i))
        write_png(root / "masks" / f"{i:03d}.png", lung_mask(32, 32))
    (root / "masks" / "001.png").write_bytes(_png_bytes(20000, 20000, zlib.compress(b"\0" * 64)))
    with pytest.raises(DataError, match=r"masks/001\.png: image too large to decode safely") as info:
        load_dataset(str(root), progress=False)
    assert info.value.reason == "too-large"
    ds = _skip(root, caplog)
    assert ds.sample_ids == ["000"]


# -- labels.csv ----------------------------------------------------------------------------------------------


def _csv_folder(tmp_path, labels, header="image,mask,label,site"):
    root = tmp_path / "ds"
    rows = [header]
    for i, label in enumerate(labels):
        write_png(root / "images" / f"{i:03d}.png", gray(16, 16, i))
        rows.append(f"images/{i:03d}.png,,{label},A")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("bad, hint", [("1.0", "write 1"), ("abc", "fix the row")])
def test_label_of_another_kind_is_a_named_row_not_a_new_class(tmp_path, caplog, bad, hint):
    root = _csv_folder(tmp_path, ["0", "1", bad, "0", "1"])
    with pytest.raises(DataError, match=rf"labels\.csv: line 4: label '{bad}' is not an integer class index like the "
                                        rf"other rows' labels; {hint}"):
        load_dataset(str(root), progress=False)
    ds = _skip(root, caplog)
    assert ds.sample_ids == ["000", "001", "003", "004"]  # 002 is not read back as unlabeled either
    assert ds.labels.tolist() == [0, 1, 0, 1] and ds.num_classes == 2
    assert summarize(ds).skipped == {"format": 1}


def test_integer_label_past_a_gap_is_named(tmp_path, caplog):
    root = _csv_folder(tmp_path, ["0", "1", "0", "3", "1"])  # a bit flip turns '1' into '3'
    ds = _skip(root, caplog)
    assert ds.sample_ids == ["000", "001", "002", "004"]
    assert "line 5: label 3 is outside the classes 0..1 that the other rows use (no row has label 2)" in caplog.text


def test_a_number_among_class_names_is_named(tmp_path, caplog):
    root = _csv_folder(tmp_path, ["normal", "tb", "1", "tb"])
    ds = _skip(root, caplog)
    assert ds.labels.tolist() == [0, 1, 1] and ds.sample_ids == ["000", "001", "003"] and ds.num_classes == 2
    assert "line 4: label '1' is a number where the other rows' labels are class names" in caplog.text


def test_decimal_labels_are_refused_for_the_whole_file(tmp_path):
    root = _csv_folder(tmp_path, ["0.0", "1.0", "1.0"])
    with pytest.raises(DataError, match=r"labels\.csv: labels in column 'label' are decimals \(0\.0, 1\.0\); write"):
        load_dataset(str(root), on_error="skip", progress=False)


def test_label_outside_declared_class_names_is_named(tmp_path, caplog):
    root = _csv_folder(tmp_path, ["normal", "tuberculosis", "tuberculsis", "1"])
    ds = _skip(root, caplog, options={"class_names": ["normal", "tuberculosis"]})
    assert ds.labels.tolist() == [0, 1, 1]
    assert "line 4: label 'tuberculsis' is not a declared class (0=normal, 1=tuberculosis)" in caplog.text


@pytest.mark.parametrize("header, match", [
    ("image,mask,lable,site", r"unknown column 'lable' \(did you mean 'label'\?\) in the header"),
    ("Image,mask,label,site", r"unknown column 'Image' \(did you mean 'image'\?\)"),
    ("image,mask,label,label", r"column 'label' appears twice in the header"),
])
def test_misspelt_or_repeated_header_column_stops_with_the_fix(tmp_path, header, match):
    root = _csv_folder(tmp_path, ["0", "1"], header=header)
    with pytest.raises(DataError, match=rf"labels\.csv: {match}") as info:
        load_dataset(str(root), on_error="skip", progress=False)  # every row would be read wrongly
    assert info.value.reason == "format"


def test_extra_columns_are_kept_as_meta(tmp_path):
    root = _csv_folder(tmp_path, ["0", "1"], header="image,mask,label,source")
    ds = load_dataset(str(root), progress=False)
    assert ds[0].meta["source"] == "A"


def test_short_long_and_duplicate_rows_are_named(tmp_path, caplog):
    root = _csv_folder(tmp_path, ["0", "1", "0", "1", "0"])
    lines = (root / "labels.csv").read_text().splitlines()
    lines[2] = "images/001.png"  # image cell only: would be read unlabeled without its mask
    lines[3] = lines[3] + ",extra"
    lines.append("images/004.png,,1,A")  # 004 again, with another label
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels\.csv: line 3: 1 cell where the header has 4 columns \(image, mask, "
                                        r"label, site\); a cell was lost"):
        load_dataset(str(root), progress=False)
    ds = _skip(root, caplog)
    assert ds.sample_ids == ["000", "003"]
    assert "line 4: 5 cells where the header has 4 columns" in caplog.text
    assert "line 6: image 'images/004.png' is listed on lines 6, 7" in caplog.text
    assert "line 7: image 'images/004.png' is listed on lines 6, 7" in caplog.text
    assert summarize(ds).skipped == {"format": 2, "duplicate": 2}


# -- entries that cannot be listed ------------------------------------------------------------------------


def test_symlink_loops_and_broken_links_are_named(tmp_path, caplog):
    root = tmp_path / "ds"
    for i in range(2):
        write_png(root / "images" / f"{i:03d}.png", gray(16, 16, i))
    os.symlink("self.png", root / "images" / "self.png")
    os.symlink(".", root / "images" / "again")
    os.symlink("gone.png", root / "images" / "gone_link.png")
    with pytest.raises(DataError, match=r"images/again: symlink loop: the link leads back to"):
        load_dataset(str(root), progress=False)
    ds = _skip(root, caplog)
    assert ds.sample_ids == ["000", "001"]
    assert summarize(ds).skipped == {"unlistable": 3}
    assert "self.png: symlink loop" in caplog.text and "gone_link.png: broken link to 'gone.png'" in caplog.text


def test_a_broken_mask_link_is_not_taken_for_no_mask(tmp_path, caplog):
    root = tmp_path / "ds"
    for i in range(2):
        write_png(root / "images" / f"{i:03d}.png", gray(16, 16, i))
    (root / "masks").mkdir()
    write_png(root / "masks" / "000.png", lung_mask(16, 16))
    os.symlink("/nonexistent/001.png", root / "masks" / "001.png")
    ds = _skip(root, caplog)
    assert summarize(ds).skipped == {"unlistable": 1} and "masks/001.png: broken link" in caplog.text


def test_unreadable_folder_is_named(tmp_path, caplog, monkeypatch):
    root = tmp_path / "ds"
    for sub in ("a", "b"):
        write_png(root / "images" / sub / "000.png", gray(16, 16, 0 if sub == "a" else 1))
    real_scandir = os.scandir

    def scandir(path):  # the tests run as root, for whom chmod 000 hides nothing
        if str(path).endswith(os.path.join("images", "b")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr("medloop.data.layouts.folder.os.scandir", scandir)
    ds = _skip(root, caplog)
    assert ds.sample_ids == ["a/000"]
    assert "images/b: folder cannot be listed (Permission denied)" in caplog.text


def test_a_linked_folder_is_followed_once(tmp_path, caplog):
    root = tmp_path / "ds"
    write_png(root / "images" / "a" / "000.png", gray(16, 16, 0))
    write_png(root / "images" / "b" / "000.png", gray(16, 16, 1))
    os.symlink(tmp_path / "more", root / "images" / "linked")  # data kept elsewhere, linked in
    write_png(tmp_path / "more" / "000.png", gray(16, 16, 2))
    os.symlink("a", root / "images" / "c")  # the same files again: they would sit on both sides of a split
    ds = _skip(root, caplog)
    assert ds.sample_ids == ["a/000", "b/000", "linked/000"]
    assert "images/c: the same folder as" in caplog.text and summarize(ds).skipped == {"unlistable": 1}


def test_a_labels_csv_without_any_label_reads_as_an_unlabeled_dataset(tmp_path):
    root = _csv_folder(tmp_path, ["", "", ""])  # an empty label column: segmentation-only or unlabeled data
    ds = load_dataset(str(root), progress=False)
    assert len(ds) == 3 and (ds.labels < 0).all()
    noncol = tmp_path / "nolabel"
    write_png(noncol / "images" / "000.png", gray(16, 16, 0))
    (noncol / "labels.csv").write_text("image,mask\nimages/000.png,\n")  # no label column at all
    assert len(load_dataset(str(noncol), progress=False)) == 1
