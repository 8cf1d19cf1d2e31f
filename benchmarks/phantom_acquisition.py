"""Repeat acquisitions of the chest X-ray phantom: the reference for the generator's SSIM, and what its source
views (``medloop.synth.views.source_view``; a Gaussian blur for comparison) remove.

(a) SSIM reference. Each ``builtin:chest-xray`` case is imaged twice: the dataset's own image, and the same
anatomy, pose and exposure with an independent detector-noise draw (``render_chest_xray(..., noise_rng=)``),
both prepared by the dataset's own ``prepare_item`` (percentile normalization, channels, size). Their SSIM is
what a generator that kept the anatomy exactly and rendered a new acquisition would score against its source
(``generator_quality.py``'s ``ssim_mean``): far above it, the generator copies the source's noise; far below
it, it changes more than the noise. Beside it the SSIM after a 1 px Gaussian blur (``ssim_lowpass_mean``).

(b) Source views. The same anatomy is also rendered without noise. In detector units (/4095) and inside the
lungs: the noise left by each view (std of view - noise-free image), the correlation of its fine structure
(what a 1.5 px blur removes) with the noise-free image's, and the time per image, for the source as given,
a 1 px Gaussian blur (the rejected ``g_input_lowpass=1`` view), the total-variation view (``g_input_tv=0.5``)
and, for comparison, non-local means (scikit-image, h = 0.8 x the estimated noise sigma). Also Immerkaer's noise estimate
(``noise_sigma``, which sets the TV weight) against the true noise std. Final line: JSON.

    python benchmarks/phantom_acquisition.py --size 128 --cases 60
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity
from skimage.restoration import denoise_nl_means

from medloop.config import DataConfig
from medloop.data.builtin import ChestXrayPhantom
from medloop.data.dataset import prepare_item
from medloop.data.phantoms.chest_xray import render_chest_xray
from medloop.data.record import RawItem
from medloop.synth.views import noise_sigma, source_view


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    config = DataConfig(source="builtin:chest-xray", size=args.size, seed=args.seed)
    phantom = ChestXrayPhantom(config.source, seed=args.seed)
    noise_free = dataclasses.replace(phantom.params, noise_sigma=(0.0, 0.0))
    from monai.networks.layers import GaussianFilter

    views = {
        "source": lambda x: x,
        "gaussian_1px": GaussianFilter(2, 1.0),
        "tv_0.5": lambda x: source_view(x, 0.5),
        "nl_means": lambda x: torch.from_numpy(denoise_nl_means(
            x[0, 0].numpy(), h=0.8 * noise_sigma(x[0, 0].numpy()), patch_size=5, patch_distance=6,
            fast_mode=True)).float()[None, None],
    }
    ssim, ssim_low, sigma_est, sigma_true = [], [], [], []
    stats = {name: {"noise_left": [], "fine_corr": [], "seconds": 0.0} for name in views}
    for entry in list(phantom.scan())[: args.cases]:
        def render(params=phantom.params, noise_rng=None):
            rng = np.random.default_rng([phantom.seed, phantom.stream, entry.index])
            return render_chest_xray(rng, args.size, nodule=entry.label == 1, params=params, noise_rng=noise_rng)

        held = phantom.load(entry, args.size)  # the dataset's raw item
        first, lung, _ = render()
        if not np.array_equal(first, held.image[..., 0]):
            raise SystemExit(f"{entry.entry_id}: this script's render differs from the dataset's; the phantom's "
                             "rendering changed, update this script")
        repeat, _, _ = render(noise_rng=np.random.default_rng([args.seed, 99, entry.index]))
        a, b = (prepare_item(RawItem(img[:, :, None], held.mask), entry, phantom, config)[0].image[0].numpy()
                for img in (first, repeat))
        ssim.append(structural_similarity(a, b, data_range=1.0))
        ssim_low.append(structural_similarity(ndimage.gaussian_filter(a, 1.0), ndimage.gaussian_filter(b, 1.0),
                                              data_range=1.0))
        # (b) in detector units, against the noise-free render
        noisy, clean = first / 4095.0, render(noise_free)[0] / 4095.0
        lung = lung > 0
        sigma_est.append(noise_sigma(noisy))
        sigma_true.append(float((noisy - clean)[lung].std()))
        fine_clean = (clean - ndimage.gaussian_filter(clean, 1.5))[lung]
        x = torch.from_numpy(noisy).float()[None, None]
        for name, view in views.items():
            t0 = time.perf_counter()
            v = view(x)[0, 0].double().numpy()
            stats[name]["seconds"] += time.perf_counter() - t0
            stats[name]["noise_left"].append(float((v - clean)[lung].std()))
            stats[name]["fine_corr"].append(float(np.corrcoef((v - ndimage.gaussian_filter(v, 1.5))[lung], fine_clean)[0, 1]))
    n = len(ssim)
    print(json.dumps({
        "data": config.source, "size": args.size, "cases": n,
        "ssim_reacquisition_mean": round(float(np.mean(ssim)), 4),
        "ssim_reacquisition_p5_p95": [round(float(v), 4) for v in np.percentile(ssim, [5, 95])],
        "ssim_lowpass_reacquisition_mean": round(float(np.mean(ssim_low)), 4),
        "noise_sigma_true": round(float(np.mean(sigma_true)), 4),
        "noise_sigma_immerkaer": round(float(np.mean(sigma_est)), 4),
        "views": {name: {"noise_left": round(float(np.mean(s["noise_left"])), 4),
                         "fine_structure_corr": round(float(np.mean(s["fine_corr"])), 3),
                         "ms_per_image": round(1000 * s["seconds"] / n, 2)} for name, s in stats.items()},
    }))


if __name__ == "__main__":
    main()
