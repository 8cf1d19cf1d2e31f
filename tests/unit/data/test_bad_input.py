"""Every bad input is rejected with a DataError naming the file, the problem and the fix, or skipped
(with a one-line warning, counted in the summary) under ``on_error: skip``. Nothing is dropped silently."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medloop.data import load_dataset, summarize
from medloop.errors import ConfigError, DataError
from tests.conftest import gray, lung_mask, write_nifti, write_png


def _folder(tmp_path, n=3):
    root = tmp_path / "ds"
    for i in range(n):
        write_png(root / "images" / f"{i:03d}.png", gray(32, 32, i))
        write_png(root / "masks" / f"{i:03d}.png", lung_mask(32, 32))
    return root


def _expect(root, match, reason, **kw):
    """Raise mode names the problem; skip mode keeps the rest and counts the skip."""
    with pytest.raises(DataError, match=match) as info:
        load_dataset(str(root), progress=False, **kw)
    assert info.value.reason == reason
    return info.value


def _skip(root, caplog, **kw):
    with caplog.at_level(logging.WARNING, logger="medloop.data"):
        ds = load_dataset(str(root), on_error="skip", progress=False, **kw)
    return ds


def test_truncated_image(tmp_path, caplog):
    root = _folder(tmp_path)
    path = root / "images" / "001.png"
    path.write_bytes(path.read_bytes()[:60])
    err = _expect(root, r"images/001\.png: corrupt or truncated image .*re-export or remove", "corrupt")
    assert err.path.endswith("001.png")
    ds = _skip(root, caplog)
    assert len(ds) == 2 and summarize(ds).skipped == {"corrupt": 1}
    assert any("skipped" in r.message and "001.png" in r.message for r in caplog.records)


def test_corrupt_content_with_image_suffix(tmp_path):
    root = _folder(tmp_path)
    (root / "images" / "002.png").write_text("this is not a png")
    _expect(root, r"002\.png: not a readable PNG image", "corrupt")


def test_unknown_format(tmp_path, caplog):
    root = _folder(tmp_path)
    (root / "images" / "notes.xyz").write_text("hello")
    _expect(root, r"notes\.xyz: unknown image format '\.xyz'; supported: .*Convert the file or move it", "format")
    assert summarize(_skip(root, caplog)).skipped == {"format": 1}


def test_mask_size_differs_from_image(tmp_path, caplog):
    root = _folder(tmp_path)
    write_png(root / "masks" / "001.png", lung_mask(48, 40))
    _expect(root, r"masks/001\.png: size 40x48 does not match image 32x32 \(001\.png\); resample the mask", "mask-size")
    ds = _skip(root, caplog)
    assert ds.sample_ids == ["000", "002"]


def test_mask_values_outside_declared_label_set(tmp_path):
    root = _folder(tmp_path)
    bad = lung_mask(32, 32, value=1)
    bad[0, 0] = 3
    write_png(root / "masks" / "000.png", bad)
    _expect(root, r"masks/000\.png: mask values \{0, 1, 3\} are outside the declared label set \{0, 1\}.*mask_labels", "mask-values")


def test_mask_values_outside_multiclass_label_set(tmp_path):
    root = _folder(tmp_path)
    m = np.zeros((32, 32), np.uint8)
    m[:4] = 1
    m[4:8] = 7
    write_png(root / "masks" / "000.png", m)
    _expect(root, r"masks/000\.png: mask values \{7\} are outside the declared label set \(0=background, 1=label 1, "
            r"2=label 2\)", "mask-values", options={"mask_labels": [0, 1, 2]})


def test_anti_aliased_0_255_mask_is_thresholded_at_128_and_counted(tmp_path):
    root = _folder(tmp_path)
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 255
    m[8:24, 7] = 127  # anti-aliased edge below the threshold
    m[8:24, 24] = 128  # at the threshold: foreground
    write_png(root / "masks" / "000.png", m)
    ds = load_dataset(str(root), progress=False)
    mask = ds[0].mask
    assert mask[10, 7] == 0 and mask[10, 24] == 1 and mask[10, 10] == 1
    assert set(mask.unique().tolist()) == {0, 1}
    assert ds[0].meta["mask_thresholded"] is True
    assert summarize(ds).notes == {"masks thresholded (anti-aliased 0/255)": 1}


def test_labels_csv_row_naming_a_missing_file(tmp_path, caplog):
    root = _folder(tmp_path)
    (root / "labels.csv").write_text("image,mask,label\nimages/000.png,masks/000.png,0\nimages/404.png,,1\n"
                                     "images/001.png,masks/missing.png,1\n")
    _expect(root, r"labels\.csv: line 3: image 'images/404\.png' not found .*fix the path or remove the row", "missing")
    ds = _skip(root, caplog)
    # 000 from the csv, 002 not listed -> read as unlabeled (counted), 404 and 001's missing mask skipped
    assert sorted(ds.sample_ids) == ["000", "002"]
    summary = summarize(ds)
    assert summary.skipped == {"missing": 2}
    assert summary.notes == {"images not in labels.csv (read as unlabeled, no mask)": 1}
    assert any("masks/missing.png" in m for m in summary.skipped_messages)


def test_labels_csv_without_image_column(tmp_path):
    root = _folder(tmp_path)
    (root / "labels.csv").write_text("file,label\n000.png,1\n")
    with pytest.raises(DataError, match=r"labels\.csv: missing required column 'image' \(columns found: file, label\)"):
        load_dataset(str(root), progress=False)


def test_duplicate_case_ids(tmp_path, caplog):
    root = _folder(tmp_path)
    write_png(root / "images" / "001.tif", gray(32, 32, 9))  # same id '001' as 001.png
    _expect(root, r"001\.tif: duplicate case id '001' \(also .*001\.png\); rename one of the files", "duplicate")
    assert summarize(_skip(root, caplog)).skipped == {"duplicate": 1}


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect(tmp_path / "empty", r"empty: the folder is empty", "empty")


def test_folder_with_empty_images_dir(tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    _expect(tmp_path / "ds", r"no images found for layout 'folder'; expected:", "empty")


def test_missing_folder_and_undetectable_layout(tmp_path):
    _expect(tmp_path / "nope", r"nope: folder not found", "missing")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "readme.txt").write_text("x")
    _expect(tmp_path / "odd", r"could not detect the data layout.*pass --layout", "empty")


def test_nan_image(tmp_path, caplog):
    import tifffile

    root = _folder(tmp_path)
    arr = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    arr[3, 4] = np.nan
    (root / "images" / "000.png").unlink()
    tifffile.imwrite(root / "images" / "000.tif", arr)
    _expect(root, r"000\.tif: image contains 1 NaN or infinite values; fix or remove the file", "nan")
    assert summarize(_skip(root, caplog)).skipped == {"nan": 1}


def test_constant_image(tmp_path):
    root = _folder(tmp_path)
    write_png(root / "images" / "002.png", np.full((32, 32), 17, np.uint8))
    _expect(root, r"002\.png: constant image \(every pixel = 17\)", "constant")


def test_label_volume_shape_differs_from_image_volume(tmp_path, caplog):
    root = tmp_path / "acdc"
    for p, shape in ((1, (16, 16, 3)), (2, (16, 16, 2))):
        folder = root / f"patient{p:03d}"
        write_nifti(folder / f"patient{p:03d}_frame01.nii.gz", np.random.default_rng(p).random((16, 16, 3)).astype(np.float32))
        write_nifti(folder / f"patient{p:03d}_frame01_gt.nii.gz", np.zeros(shape, np.uint8))
    _expect(root, r"patient002_frame01_gt\.nii\.gz: label volume shape 16x16x2 does not match image volume 16x16x3",
            "mask-size")
    ds = _skip(root, caplog)
    assert set(ds.case_ids) == {"patient001"}


def test_truncated_nifti_and_jsrt_raw(tmp_path):
    root = tmp_path / "acdc" / "patient001"
    path = write_nifti(root / "patient001_frame01.nii.gz", np.random.default_rng(0).random((16, 16, 3)).astype(np.float32))
    path.write_bytes(path.read_bytes()[:100])
    _expect(tmp_path / "acdc", r"patient001_frame01\.nii\.gz: cannot read NIfTI", "corrupt")
    jsrt = tmp_path / "jsrt"
    jsrt.mkdir()
    (jsrt / "JPCLN001.IMG").write_bytes(b"\0" * 1000)
    _expect(jsrt, r"JPCLN001\.IMG: truncated or not a JSRT raw image: 1000 bytes, expected 8388608", "corrupt")


def test_every_entry_bad_is_an_error_even_when_skipping(tmp_path):
    root = tmp_path / "ds"
    write_png(root / "images" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"every entry was skipped \(\{'constant': 1\}\)"):
        load_dataset(str(root), on_error="skip", progress=False)


def test_unknown_option_and_layout_suggest_the_fix(folder_tree):
    with pytest.raises(ConfigError, match=r"unknown option 'mask_label' for layout 'folder' \(did you mean 'mask_labels'\?\)"):
        load_dataset(str(folder_tree), options={"mask_label": [0, 1]}, progress=False)
    with pytest.raises(ConfigError, match=r"unknown layout 'acdcc' \(did you mean 'acdc'\?\)"):
        load_dataset(str(folder_tree), layout="acdcc", progress=False)
    with pytest.raises(ConfigError, match=r"unknown built-in dataset 'chest' .*chest-xray"):
        load_dataset("builtin:chest", progress=False)


def _flip_a_bit_the_crc_catches(path):
    """Flip one bit in the middle of the deflate stream such that gzip still inflates it (same length) but the
    CRC-32 fails, and nibabel alone reads the damaged voxels without complaint (the case this guards)."""
    import gzip

    import nibabel as nib

    original = path.read_bytes()
    for pos in range(len(original) // 2, len(original) - 8):  # the last 8 bytes are the CRC and length
        damaged = bytearray(original)
        damaged[pos] ^= 0x10
        try:
            gzip.decompress(bytes(damaged))
        except gzip.BadGzipFile as exc:
            if "CRC check failed" not in str(exc):
                continue
        except Exception:  # zlib.error, EOFError: caught by nibabel too, not this test's case
            continue
        else:
            continue
        path.write_bytes(bytes(damaged))
        try:
            np.asarray(nib.load(str(path)).dataobj)
        except Exception:
            continue
        return pos
    raise AssertionError(f"no bit flip in {path} gives a CRC failure that inflates")


def _realistic_volume(seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:40]
    blob = 800 * np.exp(-((yy - 24) ** 2 + (xx - 20) ** 2) / 200.0)
    return (blob[:, :, None] + rng.normal(0, 20, (48, 40, 4))).astype(np.int16)


def test_gzip_crc_failure_in_nifti_is_refused_naming_the_file(tmp_path):
    from medloop.data.io import read_nifti

    path = write_nifti(tmp_path / "case.nii.gz", _realistic_volume(0))
    np.testing.assert_array_equal(read_nifti(path), _realistic_volume(0))
    _flip_a_bit_the_crc_catches(path)
    expected = r"case\.nii\.gz: cannot read NIfTI: gzip checksum failed \(CRC check failed.*re-download"
    with pytest.raises(DataError, match=expected) as info:
        read_nifti(path)
    assert info.value.reason == "corrupt"


def test_gzip_crc_failure_is_skipped_by_the_acdc_reader(tmp_path, caplog):
    root = tmp_path / "acdc"
    for p in (1, 2):
        folder = root / f"patient{p:03d}"
        write_nifti(folder / f"patient{p:03d}_frame01.nii.gz", _realistic_volume(p))
        write_nifti(folder / f"patient{p:03d}_frame01_gt.nii.gz", np.ones((48, 40, 4), np.uint8))
    _flip_a_bit_the_crc_catches(root / "patient002" / "patient002_frame01.nii.gz")
    _expect(root, r"patient002_frame01\.nii\.gz: cannot read NIfTI: gzip checksum failed", "corrupt")
    ds = _skip(root, caplog)
    assert set(ds.case_ids) == {"patient001"}
    assert "patient002_frame01.nii.gz: cannot read NIfTI: gzip checksum failed" in caplog.text
    assert [e.reason for e in ds.skipped] == ["corrupt"]


def test_truncated_and_damaged_gzip_streams_are_named(tmp_path):
    from medloop.data.io import read_nifti

    path = write_nifti(tmp_path / "cut.nii.gz", _realistic_volume(0))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"cut\.nii\.gz: cannot read NIfTI: truncated: the gzip stream ends"):
        read_nifti(path)
    path = write_nifti(tmp_path / "tail.nii.gz", _realistic_volume(0))
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(DataError, match=r"tail\.nii\.gz: cannot read NIfTI: damaged gzip header or trailing data"):
        read_nifti(path)
