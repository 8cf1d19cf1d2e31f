"""Dataset mechanics: normalization, collation, subsets, inspection summary and preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.data import collate_samples, load_dataset, save_preview, summarize
from medloop.errors import ConfigError, DataError
from tests.conftest import gray, write_png


def test_percentile_normalization_is_robust_to_a_hot_pixel(tmp_path):
    arr = np.tile(np.linspace(0, 1000, 64, dtype=np.float32), (64, 1)).astype(np.uint16)
    arr[0, 0] = 65535  # one saturated pixel
    write_png(tmp_path / "d" / "images" / "x.png", arr)
    pct = load_dataset(str(tmp_path / "d"), progress=False)[0].image
    mm = load_dataset(str(tmp_path / "d"), normalize="minmax", progress=False)[0].image
    assert float(pct.min()) == 0.0 and float(pct.max()) == 1.0
    assert float(pct[0, 5, 32]) > 0.4  # mid-gray stays mid-gray
    assert float(mm[0, 5, 32]) < 0.02  # min-max squashes everything under the hot pixel


def test_collate_batches_with_missing_masks_and_labels(folder_tree):
    ds = load_dataset(str(folder_tree), size=16, progress=False)
    batch = collate_samples([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 16, 16) and batch["mask"].shape == (4, 16, 16)
    assert batch["has_mask"].tolist() == [True, True, True, False]
    assert (batch["mask"][3] == -1).all() and batch["label"].tolist() == [0, 1, 0, 1]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_samples)
    assert sum(b["image"].shape[0] for b in loader) == 4


def test_collate_different_native_sizes_asks_for_a_working_size(tmp_path):
    write_png(tmp_path / "d" / "images" / "a.png", gray(16, 16, 0))
    write_png(tmp_path / "d" / "images" / "b.png", gray(20, 16, 1))
    ds = load_dataset(str(tmp_path / "d"), progress=False)
    with pytest.raises(DataError, match="set a working size"):
        collate_samples([ds[0], ds[1]])


def test_subset_is_a_view_with_consistent_ids(acdc_tree):
    ds = load_dataset(str(acdc_tree), progress=False)
    sub = ds.subset([5, 0])
    assert len(sub) == 2 and sub.sample_ids == [ds.sample_ids[5], ds.sample_ids[0]]
    assert torch.equal(sub[0].image, ds[5].image)
    assert sub.entry_ids == ["patient001_frame02", "patient001_frame01"]  # slices keep their volume


def test_summary_counts(folder_tree):
    summary = summarize(load_dataset(str(folder_tree), progress=False))
    assert summary.n_samples == 4 and summary.class_counts == {"0": 2, "1": 2}
    assert summary.samples_without_mask == 1 and summary.cases_without_mask == ["003"]
    assert summary.native_sizes == {"32x32": 4} and summary.native_dtypes == {"uint8": 4}
    assert summary.label_values["1"]["samples"] == 3
    assert 0.1 < summary.mask_coverage["mean"] < 0.5
    assert summary.to_dict()["n_cases"] == 4


def test_summary_of_volumes_counts_volumes_and_cases(acdc_tree):
    summary = summarize(load_dataset(str(acdc_tree), progress=False))
    assert summary.n_entries == 4 and summary.n_cases == 2 and summary.native_sizes == {"32x28x3": 4}
    assert summary.samples_without_mask == 3 and summary.cases_without_mask == []  # patient002 has other masks


def test_preview_is_written(tmp_path, acdc_tree):
    from PIL import Image

    ds = load_dataset(str(acdc_tree), progress=False)
    path = save_preview(ds, tmp_path / "out" / "preview.png", n=4)
    with Image.open(path) as img:
        assert img.size[0] > 300 and img.size[1] > 300


def _labeled(labels, class_names=(), mask_labels=None):
    from medloop.data import DatasetInfo, MedDataset, Sample

    samples = [Sample(torch.zeros(1, 4, 4), None, label, f"c{i}", f"s{i}", "test") for i, label in enumerate(labels)]
    return MedDataset.from_samples(samples, DatasetInfo("test", "mem", tuple(class_names), dict(mask_labels or {})))


@pytest.mark.parametrize(
    "labels, class_names, expected",
    [
        ([0, 1, 0], ("normal", "nodule"), 2),
        ([0, None, 0], ("normal", "nodule"), 2),  # a named class without samples still counts
        ([0, 2, None], (), 3),  # no names: the largest known label decides
        ([0, 3], ("a", "b"), 4),  # a label beyond the names
        ([None, None], (), 0),  # unlabeled
    ],
)
def test_num_classes_from_names_and_known_labels(labels, class_names, expected):
    assert _labeled(labels, class_names).num_classes == expected


def test_num_classes_of_a_subset_is_that_of_its_source():
    ds = _labeled([0, 1, 2, 0])
    assert ds.subset([0, 3]).num_classes == 3


@pytest.mark.parametrize(
    "mask_labels, expected",
    [({}, 2), ({0: "background", 1: "lung"}, 2), ({0: "background", 1: "myocardium", 2: "blood pool"}, 3),
     ({0: "background", 4: "tumour"}, 5), ({0: "background"}, 2)],
)
def test_num_mask_classes_from_declared_labels(mask_labels, expected):
    assert _labeled([None], mask_labels=mask_labels).num_mask_classes == expected


def test_num_classes_of_real_layouts(folder_tree, acdc_tree):
    assert load_dataset(str(acdc_tree), progress=False).num_mask_classes == 3  # medloop label map: bg, myo, blood pool
    assert load_dataset(str(acdc_tree), options={"label_map": "medloop-rv"}, progress=False).num_mask_classes == 4
    ds = load_dataset(str(folder_tree), progress=False)
    assert ds.num_classes == max(len(ds.info.class_names), int(ds.labels.max()) + 1)


def test_center_crop_keeps_the_middle_before_resizing():
    from medloop.config import DataConfig
    from medloop.data import load_dataset

    full = load_dataset(DataConfig(source="builtin:cardiac-mr", size=32, options={"n_volumes": 2, "min_slices": 2,
                                                                                   "max_slices": 2}))
    cropped = load_dataset(DataConfig(source="builtin:cardiac-mr", size=32, crop=0.5,
                                      options={"n_volumes": 2, "min_slices": 2, "max_slices": 2}))
    a, b = full[0], cropped[0]
    assert b.image.shape == a.image.shape == (1, 32, 32)
    # the heart (foreground) fills a larger share of the cropped slice: about 4x at half the field of view
    assert (b.mask > 0).float().mean() > 2.5 * (a.mask > 0).float().mean() > 0
    with pytest.raises(ConfigError, match="crop"):
        DataConfig(crop=0.05)
