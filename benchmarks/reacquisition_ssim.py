"""How similar are two acquisitions of the same anatomy? A reference for the generator's SSIM target.

Renders each ``builtin:chest-xray`` case twice with the same anatomy, pose and exposure and two independent
detector-noise realizations (``render_chest_xray(..., noise_rng=...)``): the first is the image the dataset
holds (checked), the second a repeat acquisition. Both are prepared as the dataset prepares images
(percentile normalization). SSIM between them is what a generator that kept the anatomy exactly and rendered
a new acquisition would score against its source (``generator_quality.py``'s ``ssim_mean``): a generator far
above it copies the source's noise, one far below it changes more than the noise. Beside it, the SSIM after
a 1 px Gaussian blur of both (as ``ssim_lowpass_mean``). Final line: JSON.

    python benchmarks/reacquisition_ssim.py --size 128 --cases 60
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from medloop.config import DataConfig
from medloop.data import load_dataset
from medloop.data.builtin import ChestXrayPhantom
from medloop.data.dataset import PERCENTILES
from medloop.data.phantoms.chest_xray import render_chest_xray


def prepare(image: np.ndarray) -> np.ndarray:
    """The dataset's default preparation of a 2-D image: percentile normalization to [0, 1]."""
    lo, hi = np.percentile(image, PERCENTILES)
    return np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = load_dataset(DataConfig(source="builtin:chest-xray", size=args.size, seed=args.seed))
    phantom = ChestXrayPhantom("builtin:chest-xray", seed=args.seed)
    ssim, ssim_low, first_diff = [], [], []
    for entry in list(phantom.scan())[: args.cases]:
        def acquire(noise_rng):
            rng = np.random.default_rng([phantom.seed, phantom.stream, entry.index])
            image, _, _ = render_chest_xray(rng, args.size, nodule=entry.label == 1, params=phantom.params,
                                            noise_rng=noise_rng)
            return prepare(image)

        first = acquire(None)  # the dataset's own image
        first_diff.append(float(np.abs(first - ds[entry.index].image[0].numpy()).max()))
        repeat = acquire(np.random.default_rng([args.seed, 99, entry.index]))
        ssim.append(structural_similarity(first, repeat, data_range=1.0))
        ssim_low.append(structural_similarity(ndimage.gaussian_filter(first, 1.0), ndimage.gaussian_filter(repeat, 1.0),
                                              data_range=1.0))
    if max(first_diff) > 1e-4:
        raise SystemExit(f"the first acquisition differs from the dataset's image by {max(first_diff):.4f}: the "
                         "phantom's rendering changed; update this script")
    print(json.dumps({"data": "builtin:chest-xray", "size": args.size, "cases": len(ssim),
                      "ssim_reacquisition_mean": round(float(np.mean(ssim)), 4),
                      "ssim_reacquisition_p5_p95": [round(float(v), 4) for v in np.percentile(ssim, [5, 95])],
                      "ssim_lowpass_reacquisition_mean": round(float(np.mean(ssim_low)), 4)}))


if __name__ == "__main__":
    main()
