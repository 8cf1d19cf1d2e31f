"""Chest radiograph phantom: lungs, heart, mediastinum, spine, ribs, clavicles, vessels, nodules.

A frontal (PA) chest X-ray-like image with left/right lung masks and a class per image: normal or
nodule (one to three faint round opacities inside the lungs). Difficulty comes from what makes real
nodule detection hard: vessels and end-on vessel cross-sections that look like small nodules, rib
crossings, lung texture, and acquisition variation (exposure, contrast, noise, rotation, shift).
Everything is drawn in normalized coordinates, so the phantom renders at any size.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from medloop.data.phantoms.shapes import add_sphere, affine_points, draw_band, fill_polygon, smooth_closed_curve, smooth_field

__all__ = ["ChestXrayParams", "render_chest_xray"]

# Right lung (patient's right = image left) outline, clockwise from the apex; (x, y) in [0, 1].
_RIGHT_LUNG = np.array([
    [0.31, 0.13], [0.38, 0.15], [0.43, 0.24], [0.45, 0.36], [0.45, 0.50], [0.44, 0.62], [0.43, 0.70],
    [0.37, 0.72], [0.28, 0.75], [0.18, 0.79], [0.14, 0.70], [0.13, 0.54], [0.15, 0.36], [0.21, 0.21],
])
# Left lung (image right): the mirror, with the cardiac notch on its medial border and a lower dome.
_LEFT_LUNG = np.array([
    [0.69, 0.13], [0.78, 0.20], [0.85, 0.36], [0.87, 0.54], [0.86, 0.70], [0.83, 0.80], [0.74, 0.77],
    [0.66, 0.75], [0.63, 0.66], [0.60, 0.56], [0.56, 0.46], [0.55, 0.36], [0.57, 0.24], [0.62, 0.15],
])


@dataclasses.dataclass(frozen=True)
class ChestXrayParams:
    """Ranges the per-case parameters are drawn from (uniform), in normalized image units.

    Difficulty comes from look-alikes, as in real radiographs: nipple shadows and calcified granulomas
    appear in normal and nodule cases alike (independently of the class), next to end-on vessels. Making
    the nodules fainter instead does not grade the difficulty for a small CNN on ~250 images: it flips
    from learnable to unlearnable (measured with 5-fold CV: contrast 0.09-0.18 without look-alikes ->
    AUC ~0.97; 0.06-0.13 -> ~0.5; 0.03-0.18 -> ~0.5). See README and `benchmarks/phantom_difficulty.py`
    for the measured AUC of these defaults.
    """

    nodule_radius: tuple[float, float] = (0.028, 0.055)
    nodule_contrast: tuple[float, float] = (0.09, 0.18)
    n_nodules: tuple[int, int] = (1, 3)
    n_vessels: tuple[int, int] = (14, 22)  # per lung
    n_endon_vessels: tuple[int, int] = (8, 18)  # per lung: round cross-sections, the nodule look-alikes
    p_nipple_shadows: float = 0.3  # per case: a pair of soft round opacities in the lower zones
    p_granuloma: float = 0.3  # per case: one small, dense, sharp calcified nodule (benign)
    rotation_deg: float = 4.0
    shift: float = 0.03
    noise_sigma: tuple[float, float] = (0.008, 0.02)


def _ellipse(center, rx, ry, angle_deg=0.0, n=96) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return pts @ rot.T + np.asarray(center)


def _vessel_tree(rng: np.random.Generator, hilum: np.ndarray, lateral: float, n: int) -> list[tuple[np.ndarray, float]]:
    """Random branches from the hilum spreading outwards (normalized coordinates) with their widths."""
    branches = []
    for _ in range(n):
        angle = rng.uniform(-1.25, 1.35) * np.pi / 2  # up to down, outwards
        direction = np.array([lateral * np.cos(angle), -np.sin(angle)])
        length = rng.uniform(0.10, 0.30)
        steps = 12
        pts = [hilum + rng.normal(0, 0.01, 2)]
        for _ in range(steps):
            direction = direction + rng.normal(0, 0.15, 2)
            direction /= np.linalg.norm(direction)
            pts.append(pts[-1] + direction * length / steps)
        branches.append((np.array(pts), rng.uniform(0.0025, 0.0045)))
    return branches


def render_chest_xray(rng: np.random.Generator, size: int, nodule: bool,
                      params: ChestXrayParams = ChestXrayParams(),
                      noise_rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one radiograph.

    Args:
        rng: the case's generator (all randomness comes from it).
        size: output size in pixels (square).
        nodule: draw one to three nodules inside the lungs.
        noise_rng: where the detector noise comes from (default ``rng``). Another generator images the same
            anatomy, pose and exposure again with a new noise realization: a repeat acquisition.

    Returns:
        image ``[size, size]`` uint16 (12-bit detector values, bright = dense), mask ``[size, size]``
        int64 (0 background, 1 right lung, 2 left lung), and meta (nodule centres/radii in pixels,
        acquisition parameters).
    """
    s = size
    shape = (s, s)
    px = lambda pts: pts * s  # noqa: E731  normalized -> pixel coordinates
    # -- per-case anatomy and pose --------------------------------------------------------------
    angle = rng.uniform(-params.rotation_deg, params.rotation_deg)
    shift = rng.uniform(-params.shift, params.shift, 2)
    scale = rng.uniform(0.94, 1.05)
    pose = lambda pts: affine_points(pts, angle, tuple(shift), scale)  # noqa: E731
    lung_w, lung_h = rng.uniform(0.92, 1.08), rng.uniform(0.9, 1.08)

    def lung_outline(base: np.ndarray, cx: float) -> np.ndarray:
        pts = base.copy()
        pts[:, 0] = cx + (pts[:, 0] - cx) * lung_w
        pts[:, 1] = 0.13 + (pts[:, 1] - 0.13) * lung_h
        pts += rng.normal(0, 0.008, pts.shape)
        return pose(smooth_closed_curve(pts, 256))

    right = fill_polygon(px(lung_outline(_RIGHT_LUNG, 0.45)), shape)
    left = fill_polygon(px(lung_outline(_LEFT_LUNG, 0.55)), shape)
    heart_c = np.array([0.55 + rng.uniform(-0.02, 0.02), 0.58 + 0.1 * lung_h + rng.uniform(-0.02, 0.02)])
    heart_poly = pose(_ellipse(heart_c, rng.uniform(0.12, 0.16), rng.uniform(0.09, 0.12), rng.uniform(-30, -10)))
    heart = fill_polygon(px(heart_poly), shape)
    left &= ~heart
    right &= ~heart
    lungs = right | left

    yy, xx = np.mgrid[0:s, 0:s] / s
    c = pose(np.array([[0.5, 0.55]]))[0]
    body = ((np.abs((xx - c[0]) / 0.46) ** 4 + np.abs((yy - c[1]) / 0.60) ** 4) <= 1.0) | (
        (np.abs(xx - c[0]) < 0.09) & (yy < 0.2)
    )
    body = ndimage.gaussian_filter(body.astype(np.float32), 0.006 * s)

    # -- attenuation (bright = dense) ------------------------------------------------------------
    img = 0.55 * body * (1.0 + 0.05 * smooth_field(rng, shape, 0.08 * s))
    lung_soft = ndimage.gaussian_filter(lungs.astype(np.float32), 0.008 * s)
    # lungs darker at the periphery-top, denser towards the bases and hila
    lung_depth = 0.30 - 0.06 * yy
    img -= lung_soft * lung_depth
    img += ndimage.gaussian_filter(heart.astype(np.float32), 0.006 * s) * 0.05
    spine_x = pose(np.array([[0.5, 0.5]]))[0][0]
    spine = np.exp(-(((xx - spine_x) / 0.035) ** 4)) * (yy > 0.05)
    img += 0.10 * spine * (1.0 - 0.5 * lung_soft)
    # lung parenchyma texture, two scales
    texture = 0.012 * smooth_field(rng, shape, 0.006 * s) + 0.010 * smooth_field(rng, shape, 0.02 * s)
    img += texture * lung_soft

    vessels = np.zeros(shape, dtype=np.float32)
    for hilum_x, lateral, mask in ((0.42, -1.0, right), (0.58, 1.0, left)):
        hilum = np.array([hilum_x, 0.45 + 0.05 * lung_h])
        for pts, width in _vessel_tree(rng, hilum, lateral, int(rng.integers(*params.n_vessels, endpoint=True))):
            draw_band(vessels, px(pose(pts)), max(width * s, 0.6), rng.uniform(0.025, 0.045), "tube")
        # end-on vessels: small round opacities, denser towards the hilum
        ys, xs = np.nonzero(mask)
        if len(xs):
            n_end = int(rng.integers(*params.n_endon_vessels, endpoint=True))
            for idx in rng.integers(0, len(xs), n_end):
                add_sphere(vessels, xs[idx], ys[idx], max(rng.uniform(0.004, 0.010) * s, 0.7), rng.uniform(0.02, 0.05))
    img += vessels * lung_soft

    bones = np.zeros(shape, dtype=np.float32)
    rib_gap = 0.060 * lung_h
    for side in (-1.0, 1.0):
        for k in range(10):
            t = np.linspace(0, 1, 40)
            y0 = 0.15 + k * rib_gap + rng.normal(0, 0.004)
            rib = np.stack([0.5 + side * (0.035 + 0.40 * t), y0 - 0.05 * np.sin(np.pi * t * 0.9) + 0.17 * t**2], axis=1)
            draw_band(bones, px(pose(rib)), 0.010 * s, 0.055, "tube")
        t = np.linspace(0, 1, 30)
        clav = np.stack([0.5 + side * (0.05 + 0.30 * t), 0.17 - 0.07 * t + 0.03 * np.sin(np.pi * t * 1.5)], axis=1)
        draw_band(bones, px(pose(clav)), 0.013 * s, 0.09, "tube")
    img += bones * body

    # look-alikes, drawn before the class-specific nodules and independent of the class
    confusers = []
    eroded_lungs = ndimage.binary_erosion(lungs, iterations=max(1, int(0.03 * s)))
    lung_px = np.argwhere(eroded_lungs if eroded_lungs.any() else lungs)
    if rng.random() < params.p_nipple_shadows:
        r = rng.uniform(0.022, 0.034) * s
        contrast = rng.uniform(0.06, 0.13)
        y_level = rng.uniform(0.60, 0.70)
        for side_x in (0.30, 0.70):
            cx, cy = pose(np.array([[side_x + rng.normal(0, 0.015), y_level + rng.normal(0, 0.01)]]))[0] * s
            add_sphere(img, cx, cy, r, contrast * rng.uniform(0.6, 1.0), blur=0.45 * r)  # soft edge
            confusers.append({"kind": "nipple shadow", "centre": [int(cx), int(cy)]})
    if rng.random() < params.p_granuloma and len(lung_px):
        cy, cx = lung_px[rng.integers(len(lung_px))]
        r = max(rng.uniform(0.010, 0.018) * s, 0.8)
        add_sphere(img, cx, cy, r, rng.uniform(0.15, 0.28), blur=0.1 * r)  # dense, sharp
        confusers.append({"kind": "calcified granuloma", "centre": [int(cx), int(cy)]})

    centres, radii = [], []
    if nodule:
        candidates = lung_px
        for _ in range(int(rng.integers(params.n_nodules[0], params.n_nodules[1], endpoint=True))):
            cy, cx = candidates[rng.integers(len(candidates))]
            r = rng.uniform(*params.nodule_radius) * s
            contrast = rng.uniform(*params.nodule_contrast)
            add_sphere(img, cx, cy, r, contrast, blur=0.3 * r)
            centres.append([int(cx), int(cy)])
            radii.append(round(float(r), 2))

    # -- acquisition -------------------------------------------------------------------------------
    img = ndimage.gaussian_filter(img, rng.uniform(0.3, 0.8) * s / 256)
    gain, gamma, offset = rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.25), rng.uniform(0.02, 0.08)
    img = offset + gain * np.clip(img, 0, None) ** gamma
    sigma = rng.uniform(*params.noise_sigma)
    noise = (rng if noise_rng is None else noise_rng).normal(0, 1, shape)
    img = img + noise * sigma * np.sqrt(np.clip(img, 0.05, None) / 0.5)
    image = np.round(np.clip(img, 0, 1) * 4095).astype(np.uint16)
    mask = np.where(left, 2, np.where(right, 1, 0)).astype(np.int64)
    meta = {
        "nodule_centres": centres,
        "nodule_radii": radii,
        "look_alikes": confusers,
        "rotation_deg": round(float(angle), 2),
        "shift": [round(float(v), 4) for v in shift],
        "exposure": {"gain": round(float(gain), 3), "gamma": round(float(gamma), 3), "noise": round(float(sigma), 4)},
    }
    return image, mask, meta
