"""Lung-mask perturbations that make new (image, mask) pairs (Mahapatra et al., MICCAI 2018, Sect. 2.1).

Every perturbation is a small registered class: ``op(image, mask, rng) -> (image, mask, params)`` where
``image`` is ``[H, W]`` float, ``mask`` is ``[H, W]`` int (0 background, >0 lung labels) and ``params`` records
what was drawn, so every variant can say exactly how it was made. Randomness comes only from ``rng``.

The image a perturbation returns is a *crude* rendering (interpolated or resampled pixels where the boundary
moved); the mask-conditioned cGAN (``medloop.synth.generator``) renders the realistic image for the new mask.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import interpolate, ndimage
from skimage import draw, measure

from medloop.config import Config
from medloop.errors import ConfigError
from medloop.registry import Registry

__all__ = [
    "PERTURBATIONS",
    "PerturbConfig",
    "BoundaryDisplacement",
    "LungIntensity",
    "Flip",
    "Rotate",
    "Translate",
    "Variant",
    "make_variants",
    "geometric_ops",
    "affine_pair",
    "intensity_shift",
    "shift_lung",
]

PERTURBATIONS: Registry[type] = Registry("perturbation")


@dataclasses.dataclass(frozen=True)
class PerturbConfig(Config):
    """How variants are drawn. Distances are given at ``reference_size`` px and scale with the image size.

    Attributes:
        n_locations: boundary locations displaced per variant.
        n_points: consecutive contour points displaced at each location (the paper: 25).
        displacement: [min, max] displacement in px at ``reference_size`` (the paper: 1-15 px at 512 px).
        reference_size: image size the displacement refers to.
        fill: intensities of pixels that change side: ``interpolate`` (linear from their surroundings),
            ``sample`` (drawn from the original region's intensities) or ``both`` (one of the two per variant).
        alpha, beta: ranges of the intensity-change parameters (the paper: alpha 1-5, beta 2-10, step 0.2).
        intensity_step: grid step of alpha and beta.
        intensity_strength: fraction of ``alpha*mu + beta*sigma`` that the lung mean moves (see ``LungIntensity``).
        p_intensity, p_flip, p_rotate, p_translate: probability of each op in a variant.
        rotate_deg: maximum absolute rotation in degrees.
        translate: maximum absolute translation as a fraction of the image size.
    """

    n_locations: int = 3
    n_points: int = 25
    displacement: tuple[float, ...] = (1.0, 15.0)
    reference_size: int = 512
    fill: str = "both"
    alpha: tuple[float, ...] = (1.0, 5.0)
    beta: tuple[float, ...] = (2.0, 10.0)
    intensity_step: float = 0.2
    intensity_strength: float = 0.05
    p_intensity: float = 0.5
    p_flip: float = 0.25
    p_rotate: float = 0.5
    p_translate: float = 0.5
    rotate_deg: float = 10.0
    translate: float = 0.05

    def validate(self) -> None:
        if self.n_locations < 1 or self.n_points < 4:
            raise ConfigError("The 'n_locations' parameter of PerturbConfig must be >= 1 and 'n_points' >= 4; "
                              f"got {self.n_locations} and {self.n_points} instead")
        for name in ("displacement", "alpha", "beta"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1] or lo_hi[0] < 0:
                raise ConfigError(f"The '{name}' parameter of PerturbConfig must be [min, max] with 0 <= min <= max; "
                                  f"got {list(lo_hi)} instead")
        if self.fill not in ("interpolate", "sample", "both"):
            raise ConfigError(f"The 'fill' parameter of PerturbConfig must be one of ['interpolate', 'sample', 'both']; "
                              f"got {self.fill!r} instead")
        for name in ("p_intensity", "p_flip", "p_rotate", "p_translate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"The '{name}' parameter of PerturbConfig must be in [0, 1]; got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------- boundary


def _outer_contour(component: np.ndarray) -> np.ndarray:
    """Closed contour ``[P, 2]`` (row, col) of one connected component, resampled to ~1 px spacing."""
    padded = np.pad(component.astype(float), 1)
    contours = measure.find_contours(padded, 0.5)
    contour = max(contours, key=len) - 1.0
    if not np.allclose(contour[0], contour[-1]):
        contour = np.vstack([contour, contour[:1]])
    seg = np.linalg.norm(np.diff(contour, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(arc[-1]), 8)
    t = np.linspace(0.0, arc[-1], n, endpoint=False)
    return np.stack([np.interp(t, arc, contour[:, 0]), np.interp(t, arc, contour[:, 1])], axis=1)


def _outward_normals(contour: np.ndarray, component: np.ndarray) -> np.ndarray:
    tangent = np.roll(contour, -1, axis=0) - np.roll(contour, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-8)
    # orient outward: a small step along the normal should leave the component for most points
    probe = np.round(contour + 2.0 * normal).astype(int)
    h, w = component.shape
    inside = component[np.clip(probe[:, 0], 0, h - 1), np.clip(probe[:, 1], 0, w - 1)]
    return -normal if inside.mean() > 0.5 else normal


def _spline_polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterize the smooth closed periodic b-spline through ``points`` (scipy ``splprep``, ``per=1``)."""
    pts = points[np.r_[True, np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-6]]
    k = 3 if len(pts) > 3 else 1
    tck, _ = interpolate.splprep([pts[:, 0], pts[:, 1]], s=float(len(pts)) * 0.05, per=1, k=k, quiet=2)
    rows, cols = interpolate.splev(np.linspace(0.0, 1.0, max(4 * len(pts), 64)), tck)
    out = np.zeros(shape, dtype=bool)
    rr, cc = draw.polygon(np.asarray(rows), np.asarray(cols), shape)
    out[rr, cc] = True
    return ndimage.binary_fill_holes(out)


def _fill_interpolate(image: np.ndarray, changed: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Linear interpolation (scipy ``griddata``) from unchanged pixels of the same side near the change."""
    out = image.copy()
    ring = ndimage.binary_dilation(changed, iterations=4) & side & ~changed
    if not changed.any() or ring.sum() < 3:
        return out
    known = np.argwhere(ring)
    target = np.argwhere(changed)
    values = interpolate.griddata(known, image[ring], target, method="linear")
    missing = np.isnan(values)
    if missing.any():
        values[missing] = interpolate.griddata(known, image[ring], target[missing], method="nearest")
    out[changed] = values
    return out


def _fill_sample(image: np.ndarray, changed: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw values from the intensity distribution of ``region`` (the side the pixels now belong to)."""
    out = image.copy()
    if changed.any() and region.any():
        out[changed] = rng.choice(image[region], size=int(changed.sum()), replace=True)
    return out


@PERTURBATIONS.register("boundary")
class BoundaryDisplacement:
    """Displace ``n_points`` consecutive contour points at ``n_locations`` places, refit a closed b-spline.

    Each location gets one direction (outward or inward along the normal, so the 25 points move together
    as a bulge or a dent) and every point its own magnitude in ``displacement`` (scaled by size /
    ``reference_size``). The whole contour (displaced points included) is fitted with a smooth periodic
    b-spline and rasterized. Pixels that change side get new intensities by ``fill``: ``interpolate``
    (linear interpolation from unchanged pixels of their new side) or ``sample`` (values drawn from the
    original region they joined: the lung for pixels that joined it, a ring outside it for pixels that left).
    """

    def __init__(self, config: PerturbConfig):
        self.config = config

    def __call__(self, image: np.ndarray | None, mask: np.ndarray, rng: np.random.Generator):
        """``image=None`` moves only the mask (used to train the mask autoencoder on deformed masks)."""
        cfg = self.config
        scale = mask.shape[0] / cfg.reference_size
        lo, hi = cfg.displacement[0] * scale, cfg.displacement[1] * scale
        fill = cfg.fill if cfg.fill != "both" else ("interpolate", "sample")[int(rng.integers(2))]
        labels = [int(v) for v in np.unique(mask) if v > 0]
        new_mask = mask.copy()
        moves = []
        comps = []
        for value in labels:
            lab, n = ndimage.label(mask == value)
            comps += [(value, lab == i) for i in range(1, n + 1) if (lab == i).sum() >= 16]
        if not comps:
            return None if image is None else image.copy(), mask.copy(), {"fill": fill, "locations": []}
        sizes = np.array([c.sum() for _, c in comps], dtype=float)
        for _ in range(cfg.n_locations):
            value, comp = comps[int(rng.choice(len(comps), p=sizes / sizes.sum()))]
            lab, n = ndimage.label(new_mask == value)  # the component as it is now (earlier moves included)
            if n == 0:
                continue
            overlap = np.bincount(lab[comp], minlength=n + 1)[1:]
            comp = lab == int(np.argmax(overlap)) + 1
            if comp.sum() < 16:
                continue
            contour = _outer_contour(comp)
            normals = _outward_normals(contour, comp)
            n_pts = min(cfg.n_points, len(contour) // 2)
            start = int(rng.integers(len(contour)))
            idx = (start + np.arange(n_pts)) % len(contour)
            sign = 1.0 if rng.random() < 0.5 else -1.0
            mags = rng.uniform(lo, hi, size=n_pts)
            moved = contour.copy()
            moved[idx] += (sign * mags)[:, None] * normals[idx]
            region = _spline_polygon(moved, mask.shape)
            # never merge with another lung: keep a 1 px gap to every other component (any label)
            others = (new_mask > 0) & ~comp
            region &= ~ndimage.binary_dilation(others)
            lab_r, n_r = ndimage.label(region)
            if n_r == 0:
                continue
            # a tight spline loop can leave specks: keep the lung itself (largest piece), closed
            region = ndimage.binary_fill_holes(lab_r == int(np.argmax(np.bincount(lab_r.ravel())[1:])) + 1)
            new_mask[comp] = 0
            new_mask[region] = value
            moves.append({"label": value, "start": start, "n_points": int(n_pts), "direction": "out" if sign > 0 else "in",
                          "displacement_px": [round(float(m), 3) for m in mags]})
        if image is None:
            return None, new_mask, {"fill": None, "locations": moves}
        image_out = image.copy()
        lung_old, lung_new = mask > 0, new_mask > 0
        joined, left = lung_new & ~lung_old, lung_old & ~lung_new
        if fill == "interpolate":
            image_out = _fill_interpolate(image_out, joined, lung_new)
            image_out = _fill_interpolate(image_out, left, ~lung_new)
        else:
            outside_ring = ndimage.binary_dilation(lung_old, iterations=max(3, int(round(2 * hi)))) & ~lung_old
            image_out = _fill_sample(image_out, joined, lung_old, rng)
            image_out = _fill_sample(image_out, left, outside_ring, rng)
        return image_out.astype(image.dtype), new_mask, {"fill": fill, "locations": moves,
                                                         "changed_pixels": int((joined | left).sum())}


# --------------------------------------------------------------------------------------------- intensity


@PERTURBATIONS.register("intensity")
class LungIntensity:
    """Change the lung's intensities: the paper's ``alpha * mu + beta * sigma`` with alpha, beta on a 0.2 grid.

    The paper draws lung values "from a distribution alpha*mu + beta*sigma" of the original lung intensities
    (mean mu, standard deviation sigma) without saying how that maps to pixel values. Our reading: alpha and
    beta are drawn from their grids, the quantity ``alpha*mu + beta*sigma`` sets how far the lung's mean
    moves (times ``intensity_strength``, so the grid's extremes span a few to ~15% of the intensity range),
    in a random direction (denser or more lucent lungs), and each pixel keeps its deviation from the mean
    (texture preserved). Results are clipped to the image's original [min, max]: the new lung mean is
    ``mu + direction * strength * (alpha*mu + beta*sigma)`` unless clipping bites; pixels outside the lung
    are unchanged.
    """

    def __init__(self, config: PerturbConfig):
        self.config = config

    def _grid(self, lo_hi: tuple[float, ...], rng: np.random.Generator) -> float:
        step = self.config.intensity_step
        n = int(round((lo_hi[1] - lo_hi[0]) / step)) + 1
        return round(lo_hi[0] + step * int(rng.integers(n)), 6)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        lung = mask > 0
        if not lung.any():
            return image.copy(), mask.copy(), {"alpha": None, "beta": None, "shift": 0.0}
        alpha, beta = self._grid(self.config.alpha, rng), self._grid(self.config.beta, rng)
        values = image[lung].astype(np.float64)
        mu, sigma = float(values.mean()), float(values.std())
        direction = 1.0 if rng.random() < 0.5 else -1.0
        shift = direction * self.config.intensity_strength * (alpha * abs(mu) + beta * sigma)
        out = shift_lung(image, lung, shift, float(image.min()), float(image.max()))
        return out, mask.copy(), {"alpha": alpha, "beta": beta, "mu": round(mu, 5), "sigma": round(sigma, 5),
                                  "shift": round(shift, 5)}


def shift_lung(image: np.ndarray, lung: np.ndarray, shift: float, lo: float, hi: float) -> np.ndarray:
    """A copy of ``image [..., H, W]`` with ``shift`` added inside ``lung [H, W]``, clipped there to [lo, hi]."""
    out = image.copy()
    out[..., lung] = np.clip(out[..., lung] + shift, lo, hi)
    return out


def intensity_shift(ops: list[dict[str, Any]]) -> float:
    """The lung intensity shift recorded in a variant's ``ops`` (0.0 when the intensity op was not applied)."""
    return float(sum(o.get("shift") or 0.0 for o in ops if o["op"] == "intensity"))


# --------------------------------------------------------------------------------------------- geometric


def affine_pair(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray, offset: np.ndarray):
    """Apply one affine map to image (linear) and mask (nearest) so they stay aligned."""
    img = ndimage.affine_transform(image, matrix, offset=offset, order=1, mode="nearest")
    msk = ndimage.affine_transform(mask, matrix, offset=offset, order=0, mode="constant", cval=0)
    return img.astype(image.dtype), msk.astype(mask.dtype)


@PERTURBATIONS.register("flip")
class Flip:
    """Left-right flip of image and mask together."""

    def __init__(self, config: PerturbConfig):
        self.config = config

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        return image[:, ::-1].copy(), mask[:, ::-1].copy(), {"axis": "left-right"}


@PERTURBATIONS.register("rotate")
class Rotate:
    """Rotation about the image centre by an angle in [-rotate_deg, rotate_deg], same map for image and mask."""

    def __init__(self, config: PerturbConfig):
        self.config = config

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        angle = float(rng.uniform(-self.config.rotate_deg, self.config.rotate_deg))
        t = math.radians(angle)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        centre = (np.array(image.shape, dtype=float) - 1) / 2
        img, msk = affine_pair(image, mask, rot, centre - rot @ centre)
        return img, msk, {"degrees": round(angle, 3)}


@PERTURBATIONS.register("translate")
class Translate:
    """Integer translation of up to ``translate`` x size px along each axis (exact, no resampling blur)."""

    def __init__(self, config: PerturbConfig):
        self.config = config

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        m = int(round(self.config.translate * image.shape[0]))
        dy, dx = (int(v) for v in rng.integers(-m, m + 1, size=2))
        img, msk = affine_pair(image, mask, np.eye(2), np.array([-dy, -dx], dtype=float))
        return img, msk, {"dy": dy, "dx": dx}


# ---------------------------------------------------------------------------------------------- variants


@dataclasses.dataclass
class Variant:
    """One perturbed (image, mask) and the ops that made it, in order.

    ``geometric`` is the source after the exact geometric ops only (what the cGAN takes as its source image);
    ``image`` is the crude rendering after all ops; ``mask`` is the final (conditioning) mask.
    """

    image: np.ndarray
    mask: np.ndarray
    geometric: np.ndarray
    geometric_mask: np.ndarray
    ops: list[dict[str, Any]]


def geometric_ops(image: np.ndarray, mask: np.ndarray, config: PerturbConfig, rng: np.random.Generator,
                  ops: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Flip, rotate, translate (each with its probability in ``config``), exact on image and mask together.

    Returns the moved ``(image, mask)`` and the record of the ops applied, in order.
    """
    ops = ops or {name: PERTURBATIONS.get(name)(config) for name in ("flip", "rotate", "translate")}
    record = []
    for name, p in (("flip", config.p_flip), ("rotate", config.p_rotate), ("translate", config.p_translate)):
        if rng.random() < p:
            image, mask, params = ops[name](image, mask, rng)
            record.append({"op": name, **params})
    return image, mask, record


def make_variants(image: np.ndarray, mask: np.ndarray, n: int, config: PerturbConfig,
                  rng: np.random.Generator) -> list[Variant]:
    """Up to ``n`` variants: geometric ops (each with its probability), boundary displacement (always), intensity.

    Order: flip, rotate, translate (exact on image and mask), then boundary displacement of the moved mask,
    then the lung intensity change.
    """
    ops = {name: PERTURBATIONS.get(name)(config) for name in PERTURBATIONS.names()}
    out = []
    for _ in range(n):
        img, msk, record = geometric_ops(image, mask, config, rng, ops)
        geometric, geometric_mask = img.copy(), msk.copy()
        img, msk, params = ops["boundary"](img, msk, rng)
        record.append({"op": "boundary", **params})
        if rng.random() < config.p_intensity:
            img, msk, params = ops["intensity"](img, msk, rng)
            record.append({"op": "intensity", **params})
        out.append(Variant(img, msk, geometric, geometric_mask, record))
    return out
