"""Each real-data layout on a tiny tree: detection, counts, labels, masks, case ids, record shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.config import DataConfig
from medloop.data import load_dataset, resolve_layout
from tests.conftest import gray, lung_mask, write_png


@pytest.mark.parametrize(
    "fixture, layout",
    [
        ("folder_tree", "folder"),
        ("montgomery_tree", "montgomery"),
        ("shenzhen_tree", "shenzhen"),
        ("jsrt_tree", "jsrt"),
        ("acdc_tree", "acdc"),
        ("msd_tree", "nifti"),
        ("dicom_tree", "dicom"),
    ],
)
def test_layout_is_auto_detected(fixture, layout, request):
    root = request.getfixturevalue(fixture)
    assert resolve_layout(DataConfig(source=str(root))).name == layout


def _check_record(sample, channels=1):
    assert sample.image.dtype == torch.float32 and sample.image.ndim == 3 and sample.image.shape[0] == channels
    assert 0.0 <= float(sample.image.min()) and float(sample.image.max()) <= 1.0
    if sample.mask is not None:
        assert sample.mask.dtype == torch.int64 and sample.mask.shape == sample.image.shape[1:]


def test_folder_layout_reads_csv_labels_masks_and_metadata(folder_tree):
    ds = load_dataset(str(folder_tree), progress=False)
    assert len(ds) == 4
    assert ds.labels.tolist() == [0, 1, 0, 1]
    assert ds.has_mask.tolist() == [True, True, True, False]  # empty mask cell = no mask
    s = ds[0]
    _check_record(s)
    assert set(s.mask.unique().tolist()) == {0, 1}  # 0/255 read as 0/1
    assert s.meta["site"] == "A"  # extra CSV columns kept as metadata
    assert s.case_id == "000" and s.source.endswith("images/000.png")


def test_folder_layout_without_csv_matches_masks_by_name(tmp_path):
    root = tmp_path / "plain"
    write_png(root / "images" / "a.png", gray(16, 16, 0))
    write_png(root / "images" / "b.png", gray(16, 16, 1))
    write_png(root / "masks" / "a_mask.png", lung_mask(16, 16))
    ds = load_dataset(str(root), progress=False)
    assert ds.sample_ids == ["a", "b"] and ds.has_mask.tolist() == [True, False]
    assert ds.labels.tolist() == [-1, -1]


@pytest.mark.parametrize("suffix, dtype", [(".png", np.uint16), (".tif", np.uint16), (".jpg", np.uint8), (".tiff", np.uint8)])
def test_folder_layout_reads_8_and_16_bit_png_jpeg_tiff(tmp_path, suffix, dtype):
    root = tmp_path / "bits"
    arr = (np.linspace(0, 1, 24 * 24).reshape(24, 24) * (65535 if dtype == np.uint16 else 255)).astype(dtype)
    path = root / "images" / f"x{suffix}"
    path.parent.mkdir(parents=True)
    if suffix.startswith(".tif"):
        import tifffile

        tifffile.imwrite(path, arr)
    else:
        from PIL import Image

        Image.fromarray(arr).save(path, quality=95) if suffix == ".jpg" else Image.fromarray(arr).save(path)
    s = load_dataset(str(root), progress=False)[0]
    _check_record(s)
    assert s.meta["native_dtype"] == np.dtype(dtype).name
    # a ramp keeps its order after normalization
    assert float(s.image[0, -1, -1]) > float(s.image[0, 12, 12]) > float(s.image[0, 0, 0])


def test_montgomery_merges_left_and_right_masks_and_reads_suffix_labels(montgomery_tree):
    ds = load_dataset(str(montgomery_tree), progress=False)
    assert ds.labels.tolist() == [0, 1, 1] and ds.info.class_names == ("normal", "tuberculosis")
    assert set(ds[0].mask.unique().tolist()) == {0, 1}
    lr = load_dataset(str(montgomery_tree), options={"lung_labels": "left-right"}, progress=False)[0].mask
    assert set(lr.unique().tolist()) == {0, 1, 2}
    assert (lr[:, :16] == 2).sum() == 0 and (lr[:, 16:] == 1).sum() == 0  # right lung on the image left


def test_shenzhen_reads_optional_masks(shenzhen_tree):
    ds = load_dataset(str(shenzhen_tree), progress=False)
    assert ds.labels.tolist() == [0, 1, 0] and ds.has_mask.tolist() == [True, True, False]


def test_jsrt_raw_is_inverted_and_downsampled_to_the_scr_mask_grid(jsrt_tree):
    ds = load_dataset(str(jsrt_tree), progress=False)
    by_id = {s.sample_id: s for s in ds}
    raw = by_id["JPCLN001"]
    assert raw.label == 1 and by_id["JPCNN002"].label == 0
    assert raw.image.shape[-2:] == (1024, 1024) and raw.mask.shape == (1024, 1024)
    # raw 4000 (low density) on the left becomes dark after inversion
    assert float(raw.image[0, :, :512].mean()) < float(raw.image[0, :, 512:].mean())
    assert by_id["JPCNN002"].mask is None


def test_acdc_reads_slices_with_case_id_and_label_maps(acdc_tree):
    ds = load_dataset(str(acdc_tree), progress=False)
    assert len(ds) == 4 * 3  # 4 frames x 3 slices
    assert set(ds.case_ids) == {"patient001", "patient002"}  # frames of one patient share the case id
    s = ds[0]
    _check_record(s)
    assert s.sample_id == "patient001_frame01:z00" and s.slice_index == 0 and s.meta["phase"] == "ED"
    assert set(s.mask.unique().tolist()) == {0, 1, 2}  # RV -> background, myo 2 -> 1, LV 3 -> 2
    assert ds.has_mask.sum() == 9  # patient002 frame02 has no _gt
    rv = load_dataset(str(acdc_tree), options={"label_map": "medloop-rv"}, progress=False)[0].mask
    assert set(rv.unique().tolist()) == {0, 1, 2, 3}
    raw = load_dataset(str(acdc_tree), options={"label_map": "raw"}, progress=False)[0].mask
    assert (raw == 3).sum() == (s.mask == 2).sum() and (raw == 2).sum() == (s.mask == 1).sum()


def test_acdc_normalizes_per_volume_not_per_slice(tmp_path):
    from tests.conftest import write_nifti

    folder = tmp_path / "acdc" / "patient001"
    vol = np.stack([np.full((16, 16), v, np.float32) for v in (0.1, 0.5, 0.9)], axis=2)
    vol[0, 0, :] = 0.0
    write_nifti(folder / "patient001_frame01.nii.gz", vol)
    ds = load_dataset(str(tmp_path / "acdc"), normalize="minmax", progress=False)
    means = [float(ds[i].image[0, 4:, 4:].mean()) for i in range(3)]
    assert means[0] < means[1] < means[2]  # per-slice scaling would flatten them all to 1


def test_nifti_msd_layout_with_dataset_json_and_unlabeled_test_images(msd_tree):
    ds = load_dataset(str(msd_tree), progress=False)
    assert ds.info.mask_labels == {0: "background", 1: "left atrium"}
    assert len(ds) == 4 + 4 + 2
    assert ds.has_mask.sum() == 8
    assert "Ts/la_001:z00" in ds.sample_ids


def test_nifti_nnunet_modalities_are_stacked_as_channels(tmp_path):
    from tests.conftest import write_nifti

    root = tmp_path / "nnunet"
    rng = np.random.default_rng(0)
    for m in (0, 1):
        write_nifti(root / "imagesTr" / f"case1_{m:04d}.nii.gz", rng.random((16, 16, 2)).astype(np.float32))
    write_nifti(root / "labelsTr" / "case1.nii.gz", np.zeros((16, 16, 2), np.uint8))
    ds = load_dataset(str(root), channels=2, progress=False)
    assert ds[0].image.shape == (2, 16, 16) and ds[0].case_id == "case1"


def test_dicom_pool_reads_unlabeled_images_with_patient_case_ids(dicom_tree):
    ds = load_dataset(str(dicom_tree), progress=False)
    assert len(ds) == 3 and not ds.has_mask.any() and (ds.labels == -1).all()
    assert sorted(ds.case_ids) == ["P1", "P1", "P2"]
    assert ds.notes == {"non-DICOM files ignored": 1}
    _check_record(ds[0])


def test_dicom_monochrome1_is_inverted(tmp_path):
    from tests.conftest import write_dicom

    ramp = np.tile(np.arange(32, dtype=np.uint16) * 100, (32, 1))
    write_dicom(tmp_path / "a" / "m2.dcm", ramp, photometric="MONOCHROME2")
    write_dicom(tmp_path / "b" / "m1.dcm", ramp, photometric="MONOCHROME1")
    m2 = load_dataset(str(tmp_path / "a"), progress=False)[0].image[0]
    m1 = load_dataset(str(tmp_path / "b"), progress=False)[0].image[0]
    assert m2[0, -1] > m2[0, 0] and m1[0, -1] < m1[0, 0]


def test_resizing_uses_nearest_neighbour_for_masks(acdc_tree):
    ds = load_dataset(str(acdc_tree), size=20, progress=False)
    s = ds[1]
    assert s.image.shape == (1, 20, 20) and s.mask.shape == (20, 20)
    assert set(s.mask.unique().tolist()) <= {0, 1, 2}  # no interpolated in-between labels


def test_uncached_dataset_serves_the_same_samples(acdc_tree):
    cached = load_dataset(str(acdc_tree), progress=False)
    lazy = load_dataset(str(acdc_tree), cache=False, progress=False)
    for i in (0, 4, 11):
        assert torch.equal(cached[i].image, lazy[i].image)
        assert (cached[i].mask is None and lazy[i].mask is None) or torch.equal(cached[i].mask, lazy[i].mask)
    assert lazy[11].mask is None and lazy[0].mask is not None


def test_three_channel_output_replicates_grayscale(folder_tree):
    s = load_dataset(str(folder_tree), channels=3, progress=False)[0]
    assert s.image.shape[0] == 3 and torch.equal(s.image[0], s.image[2])
