"""Short-axis cine MR phantom (bSSFP-like): LV myocardium and blood pool with RV, papillary muscles,
pericardial fat, lungs, liver, aorta, spine, body wall; bias field and Rician noise.

Labels follow medloop's cardiac classes: 0 background, 1 myocardium, 2 blood pool (LV cavity,
papillary muscles included as in ACDC). The RV and all other tissue are background, so the model has
to tell the LV cavity from the equally bright RV, as on real data. Shape varies between volumes
(size, ellipticity, wall thickness, orientation, irregular contours) and along slices (base to apex:
the cavity shrinks and closes, the RV disappears, the liver appears).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from medloop.data.phantoms.shapes import fill_polygon, smooth_field

__all__ = ["CardiacMRParams", "render_cardiac_volume"]


@dataclasses.dataclass(frozen=True)
class CardiacMRParams:
    """Ranges the per-volume parameters are drawn from (uniform), in normalized image units."""

    endo_radius: tuple[float, float] = (0.085, 0.125)
    wall: tuple[float, float] = (0.030, 0.050)
    noise_sigma: tuple[float, float] = (0.02, 0.05)
    bias_strength: float = 0.3


def _radial_contour(center, radius, coeffs, n=128) -> np.ndarray:
    """Closed contour r(theta) = radius * (1 + sum_k a_k cos(k theta) + b_k sin(k theta))."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones_like(theta)
    for k, (a, b) in enumerate(coeffs, start=2):
        r += a * np.cos(k * theta) + b * np.sin(k * theta)
    r *= radius
    return np.stack([center[0] + r * np.cos(theta), center[1] + r * np.sin(theta)], axis=1)


def _disk(xx, yy, center, rx, ry=None, angle=0.0) -> np.ndarray:
    ry = rx if ry is None else ry
    ca, sa = np.cos(angle), np.sin(angle)
    dx, dy = xx - center[0], yy - center[1]
    u, v = dx * ca + dy * sa, -dx * sa + dy * ca
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def render_cardiac_volume(rng: np.random.Generator, size: int, n_slices: int,
                          params: CardiacMRParams = CardiacMRParams()) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one short-axis stack, base (slice 0) to apex.

    Returns:
        image ``[Z, size, size]`` float32 (arbitrary MR units, >= 0), mask ``[Z, size, size]`` int64,
        meta (per-volume parameters).
    """
    s = size
    yy, xx = np.mgrid[0:s, 0:s] / s
    r_endo0 = rng.uniform(*params.endo_radius)
    wall0 = rng.uniform(*params.wall)
    ellipticity = rng.uniform(-0.10, 0.10)
    orient = rng.uniform(0, np.pi)
    base_center = np.array([0.54, 0.48]) + rng.uniform(-0.04, 0.04, 2)
    drift = rng.uniform(-0.03, 0.03, 2)
    apex_cut = rng.uniform(0.85, 0.95)  # fraction of the stack where the cavity closes
    shape_coeffs = rng.normal(0, 0.025, (3, 2))
    intensity = {
        "blood": rng.uniform(0.80, 0.95), "myo": rng.uniform(0.22, 0.34), "tissue": rng.uniform(0.30, 0.42),
        "fat": rng.uniform(0.75, 0.90), "lung": rng.uniform(0.03, 0.08), "liver": rng.uniform(0.36, 0.46),
        "bone": rng.uniform(0.40, 0.55),
    }
    pap_angles = orient + np.array([0.6, 2.2]) + rng.normal(0, 0.2, 2)
    body_rx, body_ry = rng.uniform(0.42, 0.47), rng.uniform(0.32, 0.38)

    images = np.zeros((n_slices, s, s), dtype=np.float32)
    masks = np.zeros((n_slices, s, s), dtype=np.int64)
    walk = np.zeros(2)
    for z in range(n_slices):
        t = z / max(n_slices - 1, 1)
        walk += rng.normal(0, 0.004, 2)
        c = base_center + drift * t + walk
        r_endo = r_endo0 * (1.0 - 0.75 * t**1.6)
        wall = wall0 * (1.0 + 0.25 * t)
        slice_coeffs = shape_coeffs + rng.normal(0, 0.008, shape_coeffs.shape)
        ell = [(ellipticity * np.cos(2 * orient), ellipticity * np.sin(2 * orient))]
        epi = fill_polygon(_radial_contour(c, r_endo + wall, ell + list(slice_coeffs)) * s, (s, s))
        if t < apex_cut:
            trabec = list(slice_coeffs) + list(rng.normal(0, 0.02, (4, 2)))
            endo = fill_polygon(_radial_contour(c, r_endo, ell + trabec) * s, (s, s))
        else:
            endo = np.zeros((s, s), dtype=bool)  # apical cap: myocardium only
        myo = epi & ~endo

        body = _disk(xx, yy, (0.5, 0.52), body_rx, body_ry)
        inner = _disk(xx, yy, (0.5, 0.52), body_rx - 0.035, body_ry - 0.035)
        img = np.zeros((s, s), dtype=np.float32)
        img[body] = intensity["fat"]
        img[inner] = intensity["tissue"]
        lung_r = _disk(xx, yy, (0.24, 0.46), 0.15, 0.22, 0.2) & inner
        lung_l = _disk(xx, yy, (0.82, 0.44), 0.13, 0.21, -0.2) & inner
        img[lung_r | lung_l] = intensity["lung"]
        if t > 0.55:  # liver rises into the apical slices (patient's right = image left)
            liver = _disk(xx, yy, (0.30, 0.72), 0.22 * (t - 0.4), 0.16, 0.3) & inner
            img[liver] = intensity["liver"]
        img[_disk(xx, yy, (0.50, 0.86), 0.05)] = intensity["bone"]
        img[_disk(xx, yy, (0.60, 0.77), 0.032)] = intensity["blood"]  # descending aorta
        # pericardial fat on part of the epicardium
        peri = ndimage.binary_dilation(epi, iterations=max(1, int(0.018 * s))) & ~epi
        ang = np.arctan2(yy - c[1], xx - c[0])
        img[peri & (np.cos(ang - orient) > 0.3)] = intensity["fat"]
        # right ventricle: crescent wrapped around the septum, shrinking to the apex
        if t < 0.8:
            rv_scale = 1.0 - t
            rv_c = c + np.array([-(r_endo0 + wall0) * 1.05, -0.01])
            rv = _disk(xx, yy, rv_c, (0.07 + 0.05 * rv_scale), (0.12 + 0.05 * rv_scale), 0.3)
            rv_wall = ndimage.binary_dilation(rv, iterations=max(1, int(0.008 * s))) & ~rv
            img[rv_wall & ~epi] = intensity["myo"]
            img[rv & ~ndimage.binary_dilation(epi, iterations=max(1, int(0.01 * s)))] = intensity["blood"]
        img[myo] = intensity["myo"]
        img[endo] = intensity["blood"]
        # papillary muscles: myocardium-dark disks in the cavity, labelled blood pool (as in ACDC)
        if 0.15 < t < 0.7 and endo.any():
            for a in pap_angles:
                p = c + 0.62 * r_endo * np.array([np.cos(a), np.sin(a)])
                pap = _disk(xx, yy, p, 0.22 * r_endo) & endo
                img[pap] = intensity["myo"] * 1.1
        images[z] = img
        masks[z][myo] = 1
        masks[z][endo] = 2

    # -- acquisition: partial volume, bias field, Rician noise -------------------------------------------
    images = ndimage.gaussian_filter(images, (0, 0.7 * s / 128, 0.7 * s / 128))
    images += 0.02 * smooth_field(rng, images.shape, (1, 0.01 * s, 0.01 * s)).astype(np.float32) * (images > 0.1)
    zz = np.linspace(-1, 1, n_slices)[:, None, None]
    x, y = (xx - 0.5)[None] * 2, (yy - 0.5)[None] * 2
    a = rng.normal(0, params.bias_strength / 2, 6)
    bias = np.exp(a[0] * x + a[1] * y + a[2] * x**2 + a[3] * y**2 + a[4] * x * y + a[5] * zz * 0.5)
    images = images * bias
    sigma = rng.uniform(*params.noise_sigma)
    noisy = np.sqrt((images + rng.normal(0, sigma, images.shape)) ** 2 + rng.normal(0, sigma, images.shape) ** 2)
    meta = {
        "endo_radius": round(float(r_endo0), 4),
        "wall": round(float(wall0), 4),
        "ellipticity": round(float(ellipticity), 3),
        "noise_sigma": round(float(sigma), 4),
    }
    return noisy.astype(np.float32), masks, meta
