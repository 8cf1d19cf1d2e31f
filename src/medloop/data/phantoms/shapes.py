"""Geometry helpers shared by the phantoms: smooth closed contours, rasterization, smooth random fields."""

from __future__ import annotations

import numpy as np
from scipy import interpolate, ndimage
from PIL import Image, ImageDraw

__all__ = ["smooth_closed_curve", "fill_polygon", "smooth_field", "affine_points", "draw_band", "add_sphere"]


def smooth_closed_curve(points: np.ndarray, n: int = 256) -> np.ndarray:
    """Periodic cubic B-spline through closed control ``points [K, 2]`` (x, y); returns ``[n, 2]``."""
    pts = np.vstack([points, points[:1]])
    tck, _ = interpolate.splprep([pts[:, 0], pts[:, 1]], s=0, per=True)
    x, y = interpolate.splev(np.linspace(0, 1, n, endpoint=False), tck)
    return np.stack([x, y], axis=1)


def fill_polygon(curve_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterize a closed curve in pixel coordinates ``[n, 2]`` (x, y) into a boolean mask."""
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    # pixel centres sit at integer coordinates; PIL's polygon fill is the fast C rasterizer
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in curve_px], fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return field / (field.std() + 1e-8)


def affine_points(points: np.ndarray, angle_deg: float, shift: tuple[float, float], scale: float = 1.0,
                  center: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Rotate/scale points (normalized x, y) about ``center`` and shift them."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * scale
    c = np.asarray(center)
    return (points - c) @ rot.T + c + np.asarray(shift)


def draw_band(canvas: np.ndarray, centerline_px: np.ndarray, half_width_px: float, value: float | np.ndarray,
              profile: str = "flat") -> None:
    """Add a band of given half width around a polyline (pixel coords ``[n, 2]`` x, y) to ``canvas``.

    ``profile='tube'`` gives a projected-cylinder profile (bone cortex brighter at the edges is not
    modelled; the centre is densest as in a radiograph of a rod).
    """
    h, w = canvas.shape
    # work in the band's bounding box only: the distance transform is the cost
    margin = int(np.ceil(half_width_px)) + 2
    x0 = max(int(np.floor(centerline_px[:, 0].min())) - margin, 0)
    y0 = max(int(np.floor(centerline_px[:, 1].min())) - margin, 0)
    x1 = min(int(np.ceil(centerline_px[:, 0].max())) + margin + 1, w)
    y1 = min(int(np.ceil(centerline_px[:, 1].max())) + margin + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    # densify so the rasterized centreline has no gaps
    seg = np.diff(centerline_px, axis=0)
    steps = np.maximum(1, np.ceil(np.hypot(seg[:, 0], seg[:, 1]) * 2).astype(int))
    idx = np.repeat(np.arange(len(seg)), steps)
    frac = np.arange(len(idx)) - np.repeat(np.cumsum(steps) - steps, steps)
    dense = np.concatenate([centerline_px[idx] + seg[idx] * (frac / steps[idx])[:, None], centerline_px[-1:]])
    xs = np.round(dense[:, 0]).astype(int) - x0
    ys = np.round(dense[:, 1]).astype(int) - y0
    inside = (xs >= 0) & (xs < x1 - x0) & (ys >= 0) & (ys < y1 - y0)
    if not inside.any():
        return
    line = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    line[ys[inside], xs[inside]] = True
    dist = ndimage.distance_transform_edt(~line)
    if profile == "tube":
        band = np.sqrt(np.clip(1.0 - (dist / half_width_px) ** 2, 0.0, 1.0))
    else:
        band = np.clip(half_width_px + 0.5 - dist, 0.0, 1.0)
    canvas[y0:y1, x0:x1] += band * value


def add_sphere(canvas: np.ndarray, cx: float, cy: float, radius: float, value: float, blur: float = 0.0) -> None:
    """Add the projection of a sphere (``sqrt(1 - d^2/r^2)`` profile) centred at pixel (cx, cy)."""
    h, w = canvas.shape
    pad = int(np.ceil(radius + 3 * blur)) + 1
    x0, x1 = max(int(cx) - pad, 0), min(int(cx) + pad + 1, w)
    y0, y1 = max(int(cy) - pad, 0), min(int(cy) + pad + 1, h)
    if x1 <= x0 or y1 <= y0:
        return
    d2 = (np.arange(x0, x1)[None, :] - cx) ** 2 + (np.arange(y0, y1)[:, None] - cy) ** 2
    blob = np.sqrt(np.clip(1 - d2 / radius**2, 0, 1))
    if blur > 0:
        blob = ndimage.gaussian_filter(blob, blur)
    canvas[y0:y1, x0:x1] += blob * value
