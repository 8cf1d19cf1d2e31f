"""Lung-mask perturbations: each op's documented property, on constructed images whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medloop.errors import ConfigError
from medloop.synth import PERTURBATIONS, BoundaryDisplacement, LungIntensity, PerturbConfig, make_variants
from medloop.synth.perturb import intensity_shift, shift_lung


def two_lungs(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), dtype=np.int64)
    for cx in (0.3, 0.7):
        mask[((xx - size * cx) / (size * 0.14)) ** 2 + ((yy - size / 2) / (size * 0.3)) ** 2 <= 1] = 1
    rng = np.random.default_rng(0)
    image = np.where(mask > 0, 0.3, 0.7) + 0.02 * rng.standard_normal((size, size))
    return image.astype(np.float32), mask


def boundary_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance from a pixel that changed side to the original boundary (px)."""
    edge = a ^ ndimage.binary_erosion(a)
    dist = ndimage.distance_transform_edt(~edge)
    changed = a ^ b
    return float(dist[changed].max()) if changed.any() else 0.0


@pytest.mark.parametrize("seed", range(5))
def test_boundary_displacement_stays_within_configured_range(seed):
    image, mask = two_lungs()
    cfg = PerturbConfig(displacement=(2.0, 5.0), reference_size=64, n_locations=2)
    _, new, params = BoundaryDisplacement(cfg)(image, mask, np.random.default_rng(seed))
    d = boundary_distance(mask > 0, new > 0)
    assert 1.0 <= d <= 5.0 + 1.5  # + spline smoothing and rasterization
    for loc in params["locations"]:
        assert loc["n_points"] == 25 and all(2.0 <= m <= 5.0 for m in loc["displacement_px"])


def test_displacement_scales_with_image_size():
    image, mask = two_lungs(64)
    cfg = PerturbConfig(displacement=(8.0, 8.0), reference_size=128)  # 8 px at 128 -> 4 px at 64
    _, _, params = BoundaryDisplacement(cfg)(image, mask, np.random.default_rng(0))
    assert all(m == pytest.approx(4.0) for loc in params["locations"] for m in loc["displacement_px"])


@pytest.mark.parametrize("seed", range(5))
def test_masks_stay_valid_and_closed(seed):
    image, mask = two_lungs()
    cfg = PerturbConfig(displacement=(3.0, 8.0), reference_size=64, n_locations=4)
    _, new, _ = BoundaryDisplacement(cfg)(image, mask, np.random.default_rng(seed))
    assert new.dtype == mask.dtype and set(np.unique(new)) <= {0, 1}
    assert ndimage.label(new > 0)[1] == 2  # still two lungs
    assert np.array_equal(ndimage.binary_fill_holes(new > 0), new > 0)  # closed: no holes


def test_multi_label_masks_keep_their_labels():
    image, mask = two_lungs()
    mask[:, 32:] *= 2  # left-right labels
    _, new, _ = BoundaryDisplacement(PerturbConfig(reference_size=64))(image, mask, np.random.default_rng(1))
    assert set(np.unique(new)) == {0, 1, 2}
    assert ndimage.label(new == 1)[1] == 1 and ndimage.label(new == 2)[1] == 1


def test_fill_sample_draws_from_the_original_region():
    image, mask = two_lungs()
    cfg = PerturbConfig(fill="sample", displacement=(3.0, 6.0), reference_size=64)
    out, new, params = BoundaryDisplacement(cfg)(image, mask, np.random.default_rng(2))
    joined = (new > 0) & (mask == 0)
    assert params["fill"] == "sample" and joined.any()
    assert np.isin(out[joined], image[mask > 0]).all()
    unchanged = (new > 0) == (mask > 0)
    assert np.array_equal(out[unchanged], image[unchanged])


def test_fill_interpolate_uses_surrounding_values():
    image, mask = two_lungs()
    image = np.where(mask > 0, 0.3, 0.7).astype(np.float32)  # flat regions: interpolation must give the side's value
    cfg = PerturbConfig(fill="interpolate", displacement=(3.0, 6.0), reference_size=64)
    out, new, _ = BoundaryDisplacement(cfg)(image, mask, np.random.default_rng(3))
    joined, left = (new > 0) & (mask == 0), (new == 0) & (mask > 0)
    assert joined.any() or left.any()
    np.testing.assert_allclose(out[joined], 0.3, atol=1e-5)
    np.testing.assert_allclose(out[left], 0.7, atol=1e-5)


def test_intensity_change_moves_the_lung_mean_as_documented():
    image, mask = two_lungs()
    image[0, 0], image[-1, -1] = 0.0, 1.0  # intensity range [0, 1]: this shift never clips
    out, new, p = LungIntensity(PerturbConfig(intensity_strength=0.05))(image, mask, np.random.default_rng(4))
    lung = mask > 0
    assert np.array_equal(new, mask) and np.array_equal(out[~lung], image[~lung])
    mu, sigma = image[lung].mean(), image[lung].std()
    expected = 0.05 * (p["alpha"] * mu + p["beta"] * sigma)
    assert abs(p["shift"]) == pytest.approx(expected, rel=1e-3)
    assert out[lung].mean() - mu == pytest.approx(p["shift"], abs=1e-4)  # no clipping at these values
    assert out.min() >= image.min() and out.max() <= image.max()
    for name, lo in (("alpha", 1.0), ("beta", 2.0)):  # on the 0.2 grid
        assert (p[name] - lo) / 0.2 == pytest.approx(round((p[name] - lo) / 0.2))


def test_intensity_change_is_clipped_to_the_valid_range():
    image, mask = two_lungs()
    cfg = PerturbConfig(intensity_strength=2.0)  # huge: must clip, never leave the image range
    for seed in range(4):
        out, _, _ = LungIntensity(cfg)(image, mask, np.random.default_rng(seed))
        assert out.min() >= image.min() and out.max() <= image.max()


def test_intensity_shift_is_read_from_the_record_and_shift_lung_clips_in_the_lung_only():
    image, mask = two_lungs()
    cfg = PerturbConfig(reference_size=64, p_intensity=0.5, p_flip=0, p_rotate=0, p_translate=0)
    variants = make_variants(image, mask, 8, cfg, np.random.default_rng(2))
    with_op = [v for v in variants if any(o["op"] == "intensity" for o in v.ops)]
    assert with_op and len(with_op) < len(variants)
    for v in variants:
        recorded = [o["shift"] for o in v.ops if o["op"] == "intensity"]
        assert intensity_shift(v.ops) == (recorded[0] if recorded else 0.0)
        assert (intensity_shift(v.ops) != 0.0) == bool(recorded)
    stacked = shift_lung(np.stack([image, image]), mask > 0, 5.0, 0.0, 1.0)  # channel axes, clipped in the lung
    assert stacked.shape == (2, *image.shape) and np.all(stacked[:, mask > 0] == 1.0)
    assert np.array_equal(stacked[:, mask == 0], np.stack([image, image])[:, mask == 0])


@pytest.mark.parametrize("name", ["flip", "rotate", "translate"])
def test_geometric_ops_are_identical_on_image_and_mask(name):
    _, mask = two_lungs()
    op = PERTURBATIONS.get(name)(PerturbConfig(rotate_deg=15.0, translate=0.1))
    img, msk, params = op(mask.astype(np.float32), mask, np.random.default_rng(5))
    agree = ((img > 0.5) == (msk > 0)).mean()
    assert agree > (0.995 if name == "rotate" else 0.999999), params
    assert not np.array_equal(msk, mask)


def test_variants_are_recorded_seeded_and_bounded():
    image, mask = two_lungs()
    cfg = PerturbConfig(reference_size=64)
    a = make_variants(image, mask, 6, cfg, np.random.default_rng(7))
    b = make_variants(image, mask, 6, cfg, np.random.default_rng(7))
    assert len(a) == 6
    for va, vb in zip(a, b):
        assert np.array_equal(va.image, vb.image) and va.ops == vb.ops
        assert [op["op"] for op in va.ops].count("boundary") == 1
        assert va.image.shape == image.shape and va.mask.shape == mask.shape
    assert len({tuple(op["op"] for op in v.ops) for v in make_variants(image, mask, 30, cfg, np.random.default_rng(8))}) > 2


def test_bad_perturbation_config_names_the_field():
    with pytest.raises(ConfigError, match="displacement"):
        PerturbConfig(displacement=(5.0, 1.0))
    with pytest.raises(ConfigError, match="fill"):
        PerturbConfig(fill="blur")
    with pytest.raises(ConfigError, match="unknown key 'n_point'"):
        PerturbConfig.from_dict({"n_point": 3})
