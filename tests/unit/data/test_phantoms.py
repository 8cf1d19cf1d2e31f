"""Built-in phantoms: deterministic under a seed, any size, anatomy and labels where they belong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medloop.data import load_dataset
from medloop.data.phantoms import render_cardiac_volume, render_chest_xray
from medloop.errors import ConfigError

SMALL_CHEST = {"n_normal": 3, "n_nodule": 3}


def test_chest_default_class_counts_match_jsrt_without_rendering():
    from medloop.data.builtin import ChestXrayPhantom

    labels = [e.label for e in ChestXrayPhantom("builtin:chest-xray").scan()]
    assert len(labels) == 247 and labels.count(0) == 93 and labels.count(1) == 154


def test_chest_is_deterministic_under_a_seed_and_varies_with_it():
    a = load_dataset("builtin:chest-xray", size=48, seed=1, options=SMALL_CHEST, progress=False)
    b = load_dataset("builtin:chest-xray", size=48, seed=1, options=SMALL_CHEST, cache=False, progress=False)
    c = load_dataset("builtin:chest-xray", size=48, seed=2, options=SMALL_CHEST, progress=False)
    assert all(torch.equal(a[i].image, b[i].image) and torch.equal(a[i].mask, b[i].mask) for i in range(len(a)))
    assert not torch.equal(a[0].image, c[0].image)


def test_a_case_does_not_depend_on_how_many_cases_are_asked():
    from medloop.data.builtin import CardiacMRPhantom, ChestXrayPhantom

    few = ChestXrayPhantom("builtin:chest-xray", seed=4, n_normal=3, n_nodule=3)
    many = ChestXrayPhantom("builtin:chest-xray", seed=4, n_normal=9, n_nodule=9)
    many_entries = list(many.scan())
    compared = 0
    for entry in few.scan():
        twin = many_entries[entry.index]
        if twin.label == entry.label:  # class assignment is a permutation over all cases
            assert np.array_equal(few.load(entry, 24).image, many.load(twin, 24).image)
            compared += 1
    assert compared >= 2
    small = CardiacMRPhantom("builtin:cardiac-mr", seed=4, n_volumes=2)
    large = CardiacMRPhantom("builtin:cardiac-mr", seed=4, n_volumes=5)
    a, b = next(iter(small.scan())), next(iter(large.scan()))
    assert np.array_equal(small.load(a, 16).image, large.load(b, 16).image)


@pytest.mark.parametrize("size", [16, 37, 64])
def test_chest_renders_at_any_size(size):
    image, mask, meta = render_chest_xray(np.random.default_rng(0), size, nodule=True)
    assert image.shape == (size, size) and mask.shape == (size, size) and image.dtype == np.uint16
    assert set(np.unique(mask).tolist()) <= {0, 1, 2}


def test_chest_anatomy_lungs_darker_than_body_and_left_right_labels():
    image, mask, _ = render_chest_xray(np.random.default_rng(3), 96, nodule=False)
    body_outside_lungs = image[(mask == 0)][image[(mask == 0)] > 400]
    assert image[mask > 0].mean() < body_outside_lungs.mean()  # lungs are air-filled: dark
    cols = np.nonzero(mask == 1)[1], np.nonzero(mask == 2)[1]
    assert cols[0].mean() < 48 < cols[1].mean()  # patient's right lung on the image left


def test_chest_nodules_lie_inside_the_lungs_and_only_in_nodule_cases():
    for seed in range(4):
        _, mask, meta = render_chest_xray(np.random.default_rng(seed), 128, nodule=True)
        assert 1 <= len(meta["nodule_centres"]) <= 3
        for x, y in meta["nodule_centres"]:
            assert mask[y, x] > 0
        _, _, meta0 = render_chest_xray(np.random.default_rng(seed), 128, nodule=False)
        assert meta0["nodule_centres"] == []


def test_chest_nodule_raises_local_intensity():
    rng_args = [7, 1]
    with_nodule, _, meta = render_chest_xray(np.random.default_rng(rng_args), 128, nodule=True)
    x, y = meta["nodule_centres"][0]
    # same case rendered without nodules: same anatomy draws up to the nodule step
    without, _, _ = render_chest_xray(np.random.default_rng(rng_args), 128, nodule=False)
    assert int(with_nodule[y, x]) - int(without[y, x]) > 0


def test_cardiac_volume_labels_and_topology():
    image, mask, _ = render_cardiac_volume(np.random.default_rng(0), 64, 12)
    assert image.shape == (12, 64, 64) and mask.shape == (12, 64, 64)
    assert set(np.unique(mask).tolist()) == {0, 1, 2}
    mid = mask[4]
    pool = mid == 2
    # the blood pool is enclosed by myocardium: growing it by a few pixels reaches myocardium, not background only
    ring = ndimage.binary_dilation(pool, iterations=2) & ~pool
    assert (mid[ring] == 1).mean() > 0.9
    # bright blood, dark myocardium (bSSFP contrast)
    assert image[4][mid == 2].mean() > image[4][mid == 1].mean()


def test_cardiac_cavity_shrinks_from_base_to_apex():
    _, mask, _ = render_cardiac_volume(np.random.default_rng(1), 64, 16)
    pool = (mask == 2).reshape(16, -1).sum(1)
    assert pool[0] > pool[8] > pool[-1] and pool[-1] == 0  # apical cap: myocardium only


def test_cardiac_dataset_slices_keep_their_volume_case_id():
    ds = load_dataset("builtin:cardiac-mr", size=32, options={"n_volumes": 3, "min_slices": 10, "max_slices": 20},
                      progress=False)
    per_case = {c: ds.case_ids.count(c) for c in set(ds.case_ids)}
    assert set(per_case) == {"cmr-01", "cmr-02", "cmr-03"}
    assert all(10 <= n <= 20 for n in per_case.values())
    assert ds.info.mask_labels == {0: "background", 1: "myocardium", 2: "blood pool"}
    assert ds[0].slice_index == 0 and ds[0].sample_id == "cmr-01:z00"


def test_phantom_options_are_validated():
    with pytest.raises(ConfigError, match=r"min_slices <= max_slices; got 9 and 5"):
        load_dataset("builtin:cardiac-mr", options={"min_slices": 9, "max_slices": 5}, progress=False)
    with pytest.raises(ConfigError, match=r"'n_normal' option of builtin:chest-xray must be >= 0"):
        load_dataset("builtin:chest-xray", options={"n_normal": -1}, progress=False)
    with pytest.raises(ConfigError, match=r"'lung_labels' option of layout 'chest-xray' must be one of"):
        load_dataset("builtin:chest-xray", options={"lung_labels": "lobes"}, progress=False)


def test_phantom_disk_cache_returns_identical_pixels(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLOOP_CACHE_DIR", str(tmp_path / "c"))
    first = load_dataset("builtin:chest-xray", size=32, options=SMALL_CHEST, progress=False)
    assert len(list((tmp_path / "c" / "phantoms").glob("*.npz"))) == 6
    second = load_dataset("builtin:chest-xray", size=32, options=SMALL_CHEST, progress=False)
    assert all(torch.equal(first[i].image, second[i].image) for i in range(6))
    assert second[3].meta["nodule_centres"] == first[3].meta["nodule_centres"]


def test_nodule_difficulty_options_change_the_render_and_are_validated():
    easy = load_dataset("builtin:chest-xray", size=48, options={**SMALL_CHEST, "nodule_contrast": [0.3, 0.3]}, progress=False)
    hard = load_dataset("builtin:chest-xray", size=48, options={**SMALL_CHEST, "nodule_contrast": [0.01, 0.01]}, progress=False)
    nodule = int(np.nonzero(easy.labels == 1)[0][0])
    normal = int(np.nonzero(easy.labels == 0)[0][0])
    assert not torch.equal(easy[nodule].image, hard[nodule].image)
    assert torch.equal(easy[normal].image, hard[normal].image)  # normal cases have no nodule to change
    with pytest.raises(ConfigError, match=r"'nodule_radius' option of builtin:chest-xray must be \[low, high\]"):
        load_dataset("builtin:chest-xray", options={"nodule_radius": [0.05, 0.01]}, progress=False)


def test_chest_xray_repeat_acquisition_changes_the_noise_only():
    first, mask, meta = render_chest_xray(np.random.default_rng(4), 64, nodule=True)
    again, mask_again, meta_again = render_chest_xray(np.random.default_rng(4), 64, nodule=True)
    repeat, mask_repeat, meta_repeat = render_chest_xray(np.random.default_rng(4), 64, nodule=True,
                                                         noise_rng=np.random.default_rng(5))
    assert np.array_equal(first, again)  # noise_rng defaults to the case's own generator
    assert np.array_equal(mask, mask_repeat) and meta == meta_repeat  # same anatomy, pose and exposure
    diff = (repeat.astype(float) - first.astype(float)) / 4095
    sigma = meta["exposure"]["noise"]
    # two independent noise draws: the difference is noise-like (zero mean, spread ~ sqrt(2) x the noise sigma)
    assert abs(diff.mean()) < 0.2 * sigma
    assert 0.5 * sigma < diff.std() < 3 * sigma
    smooth = ndimage.gaussian_filter(diff, 3)  # no structure: the difference averages out over a few px
    assert smooth.std() < 0.25 * diff.std()
