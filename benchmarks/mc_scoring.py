"""MC-dropout scoring speed: medloop's trunk-once scoring vs one deterministic pass vs baal 2.1.

Same model (ResNet-18, ImageNet width unless --width) and pool (--n-images phantom radiographs at
--size px) for everyone, T = --mc-samples passes:
  (a) one deterministic pass over the pool,
  (b) medloop.uncertainty.score_pool (trunk once, head T times batched, every measure computed),
  (c) baal 2.1 MCDropoutModule + ModelWrapper.predict_on_batch(iterations=T), plain and with MCCachingModule
      each in its recommended mode: plain with replicate_in_memory=True (T copies in one batch), cached with
      replicate_in_memory=False (baal warns that caching needs it); --all-modes times both modes for both.
The head is first fitted on the pool's labels (features frozen) so predictions are not all 0.5; then the
predictive entropy and BALD of medloop and baal are compared (Pearson r, two-sample KS), next to the noise
floor: medloop against itself with other dropout masks (per-image agreement cannot beat it).

    pip install -e ".[bench]"     # baal is a benchmark extra, never a runtime dependency
    python benchmarks/mc_scoring.py [--n-images 512] [--size 128] [--mc-samples 20] [--width 64] [--batch-size 64]

Final line (JSON): single_s, medloop_s, baal_s, baal_cached_s, ratio_vs_single, speedup_vs_baal_best, peak_rss_mb, ...

--task segment: the segmentation UNet and pix2pix, one thread, for each dropout layout (``decoder``, ``head``):
  (a) one deterministic pass of the UNet (default channels) over --seg-slices phantom slices (whole volumes of 8)
      at --size px,
  (b) ``mc_forward`` and (c) ``score_pool`` (every measure and reduction) at T = --mc-samples (default 10 here),
  (d) MC sample diversity after --train-steps of training on 64 px phantom slices: mean per-pixel std of the
      class probabilities, on the predicted boundaries and inside,
  (e) pix2pix (G with that layout) training and discriminator-scoring throughput in slices/s at 64 px on
      --data (e.g. ../shared/data/acdc-train; default the cardiac phantom); with --pix2pix-workers N > 1 also
      ``train_pix2pix`` in one process and in N data-parallel processes (``Pix2PixConfig.workers``, one thread
      each): slices/s of 15 epochs beyond a first (the difference of a 1-epoch and a 16-epoch call, so the
      processes' start is left out), that start in seconds, and the 16-epoch call's slices/s with its start.

    python benchmarks/mc_scoring.py --task segment [--seg-slices 16] [--size 128] [--data ../shared/data/acdc-train]
        [--pix2pix-workers 2] [--pix2pix-precision bf16]

Final line (JSON): {layout: {single_s, mc_forward_s, score_pool_s, ratio_mc_forward, ratio_score_pool, mc_std,
mc_std_boundary, mc_std_interior, pix2pix_train_slices_per_s, pix2pix_score_slices_per_s[,
pix2pix_workers_{1,N}_slices_per_s, pix2pix_workers_{1,N}_start_s, pix2pix_workers_{1,N}_end_to_end_slices_per_s]},
..., "threads": 1}
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time

import numpy as np
import torch
from scipy import stats
from torch import nn

from medloop.data import collate_samples, load_dataset
from medloop.models import build_model
from medloop.uncertainty import bald, predictive_entropy, score_pool


class PlainClassifier(nn.Module):
    """The same network as medloop's, shaped for baal: nn.Dropout in the head, logits only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = copy.deepcopy(model.backbone)
        self.dropout = nn.Dropout(model.head.dropout.p)
        self.fc = copy.deepcopy(model.head.fc)

    def forward(self, x):
        return self.fc(self.dropout(self.backbone(x)))


PIX2PIX_EPOCHS = 15  # timed epochs of the --pix2pix-workers comparison, beyond a first that includes the start


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def segmentation(args: argparse.Namespace) -> None:
    """The UNet's MC scoring cost and sample diversity, and pix2pix throughput, for each dropout layout."""
    import torch.nn.functional as F

    from medloop.models import mc_dropout_layers, mc_generators
    from medloop.training.pix2pix import Pix2PixConfig, Pix2PixTrainer, train_pix2pix
    from medloop.uncertainty import mc_forward
    from medloop.uncertainty.discriminator import discriminator_scores

    torch.set_num_threads(1)
    t_samples = args.mc_samples or 10
    pool = load_dataset("builtin:cardiac-mr", size=args.size, seed=args.seed, progress=False,  # volumes of 8 slices
                        options={"n_volumes": -(-args.seg_slices // 8), "min_slices": 8, "max_slices": 8})
    x = collate_samples(list(pool))["image"]
    small = load_dataset("builtin:cardiac-mr", size=64, seed=args.seed, progress=False,
                         options={"n_volumes": 4, "min_slices": 8, "max_slices": 8})
    batch = collate_samples(list(small))
    sx, sy = batch["image"], batch["mask"].long()
    p2p = load_dataset(args.data, size=64, seed=args.seed, progress=False) if args.data else small
    p2p_batch = collate_samples([p2p[i] for i in range(min(64, len(p2p)))])
    px, py = p2p_batch["image"], p2p_batch["mask"].long()
    num_classes = max(int(py.max()) + 1, int(sy.max()) + 1, 2)

    def best_of(fn, repeats: int = 2) -> float:
        return min(timed(fn)[1] for _ in range(repeats))

    result: dict = {}
    for layout in ("decoder", "head"):
        torch.manual_seed(args.seed)  # a script owns its process; library code never seeds globally
        model = build_model("unet", num_classes=num_classes, dropout_layout=layout).eval()
        with torch.no_grad():
            model(x)  # warm-up
            single_s = best_of(lambda: model(x))
        mc_s = best_of(lambda: mc_forward(model, x, mc_generators(args.seed, t_samples), max_head_batch=64))
        pool_s = best_of(lambda: score_pool(model, pool, n_mc_samples=t_samples, batch_size=len(x), seed=args.seed,
                                            progress=False))

        torch.manual_seed(args.seed)  # a script owns its process; library code never seeds globally
        net = build_model("unet", num_classes=num_classes, channels=(16, 32, 64, 128), dropout_layout=layout)
        for i, layer in enumerate(mc_dropout_layers(net)):
            layer.generator = torch.Generator().manual_seed(args.seed + i)
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        net.train()
        for _ in range(args.train_steps):
            loss = F.cross_entropy(net(sx)[0], sy)
            opt.zero_grad()
            loss.backward()
            opt.step()
        mc_probs = mc_forward(net, sx, mc_generators(args.seed, t_samples))[0].softmax(2)  # [N, T, K, H, W]
        std = mc_probs.std(1).mean(1)  # [N, H, W]
        pred = mc_probs.mean(1).argmax(1, keepdim=True).float()
        edge = (F.max_pool2d(pred, 3, 1, 1) != -F.max_pool2d(-pred, 3, 1, 1))[:, 0]

        trainer = Pix2PixTrainer(1, num_classes, 64, Pix2PixConfig(seed=args.seed, dropout_layout=layout,
                                                                    precision=args.pix2pix_precision))
        weights = torch.ones(len(px))

        def train_epoch():
            for i in range(0, len(px) - 1, 8):
                trainer.step(px[i:i + 8], py[i:i + 8], weights[i:i + 8])

        train_s = best_of(train_epoch)
        score_s = best_of(lambda: discriminator_scores(trainer.G, trainer.D, px))
        parallel = {}
        if args.pix2pix_workers > 1:
            for workers in (1, args.pix2pix_workers):
                config = Pix2PixConfig(seed=args.seed, dropout_layout=layout, workers=workers,
                                       precision=args.pix2pix_precision)

                def train_s_of(epochs: int) -> float:
                    fresh = Pix2PixTrainer(1, num_classes, 64, config)
                    return timed(lambda: train_pix2pix(fresh, px, py, weights, args.seed, False, epochs))[1]

                first_s, longer_s = train_s_of(1), train_s_of(1 + PIX2PIX_EPOCHS)
                rate = PIX2PIX_EPOCHS * len(px) / (longer_s - first_s)
                parallel.update({f"pix2pix_workers_{workers}_slices_per_s": round(rate, 1),
                                 f"pix2pix_workers_{workers}_start_s": round(first_s - len(px) / rate, 2),
                                 f"pix2pix_workers_{workers}_end_to_end_slices_per_s":
                                     round((1 + PIX2PIX_EPOCHS) * len(px) / longer_s, 1)})
        result[layout] = {
            "single_s": round(single_s, 3), "mc_forward_s": round(mc_s, 3), "score_pool_s": round(pool_s, 3),
            "ratio_mc_forward": round(mc_s / single_s, 2), "ratio_score_pool": round(pool_s / single_s, 2),
            "train_loss": round(loss.item(), 4), "mc_std": round(float(std.mean()), 4),
            "mc_std_boundary": round(float(std[edge].mean()), 4), "mc_std_interior": round(float(std[~edge].mean()), 4),
            "pix2pix_train_slices_per_s": round(len(px) / train_s, 1),
            "pix2pix_score_slices_per_s": round(len(px) / score_s, 1), **parallel,
        }
        print(layout, json.dumps(result[layout]), flush=True)
    result.update(slices=len(x), size=args.size, mc_samples=t_samples, train_steps=args.train_steps,
                  pix2pix_data=args.data or "builtin:cardiac-mr", pix2pix_workers=args.pix2pix_workers,
                  pix2pix_precision=args.pix2pix_precision,
                  threads=torch.get_num_threads())
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("classify", "segment"), default="classify")
    parser.add_argument("--seg-slices", type=int, default=16, help="segment: slices scored at once")
    parser.add_argument("--train-steps", type=int, default=150,
                        help="segment: training steps before the diversity check")
    parser.add_argument("--data", default=None, help="segment: pix2pix data (default: the cardiac phantom)")
    parser.add_argument("--pix2pix-workers", type=int, default=1,
                        help="segment: also time pix2pix training in this many data-parallel processes (> 1)")
    parser.add_argument("--pix2pix-precision", choices=("fp32", "bf16"), default="fp32",
                        help="segment: pix2pix training precision (Pix2PixConfig.precision)")
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--mc-samples", type=int, default=None, help="T (default 20; 10 for --task segment)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-modes", action="store_true", help="time baal with replicate_in_memory on and off")
    args = parser.parse_args()
    if args.task == "segment":
        segmentation(args)
        return
    args.mc_samples = args.mc_samples or 20
    half = args.n_images // 2
    ds = load_dataset("builtin:chest-xray", size=args.size, seed=args.seed,
                      options={"n_normal": half, "n_nodule": args.n_images - half}, progress=False)
    x_all = collate_samples(list(ds))["image"]
    batches = [x_all[i:i + args.batch_size] for i in range(0, len(x_all), args.batch_size)]
    torch.manual_seed(args.seed)
    model = build_model("resnet18", in_channels=1, num_classes=2, width=args.width, dropout=0.5).eval()

    # (a) one deterministic pass
    def single():
        with torch.no_grad():
            return torch.cat([model.forward_features(b) for b in batches])

    single()  # warm-up (allocator, threads)
    feats, single_s = timed(single)

    # fit the head on frozen features so the scores mean something (dropout active, a few hundred steps)
    y = torch.from_numpy(ds.labels)
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    model.head.train()
    for _ in range(300):
        logits, _ = model.forward_head(feats)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    # (b) medloop
    scores, medloop_s = timed(lambda: score_pool(model, ds, n_mc_samples=args.mc_samples, batch_size=args.batch_size,
                                                 seed=args.seed, progress=False))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # noise floor of the agreement checks: medloop against itself with other dropout masks
    rescored = score_pool(model, ds, n_mc_samples=args.mc_samples, batch_size=args.batch_size, seed=args.seed + 1,
                          progress=False)

    # (c) baal
    from baal.bayesian.caching_utils import MCCachingModule
    from baal.bayesian.dropout import MCDropoutModule
    from baal.modelwrapper import ModelWrapper, TrainingArgs

    def baal_run(cached: bool, replicate: bool):
        net = MCDropoutModule(PlainClassifier(model))
        if cached:
            net = MCCachingModule(net)
        wrapper = ModelWrapper(net, TrainingArgs(batch_size=args.batch_size, use_cuda=False, replicate_in_memory=replicate,
                                                 criterion=nn.CrossEntropyLoss()))
        net.eval()
        torch.manual_seed(args.seed)  # a script owns its process; library code never seeds globally
        return torch.cat([wrapper.predict_on_batch(b, iterations=args.mc_samples) for b in batches])  # [N, C, T]

    timings = {}
    outputs = {}
    modes = [(c, r) for c in (False, True) for r in (False, True)] if args.all_modes else [(False, True), (True, False)]
    for cached, replicate in modes:
        out, secs = timed(lambda: baal_run(cached, replicate))
        timings[(cached, replicate)] = secs
        outputs[(cached, replicate)] = out
        print(f"baal cached={cached} replicate_in_memory={replicate}: {secs:.1f}s", flush=True)
    baal_s = min(v for (c, _), v in timings.items() if not c)
    baal_cached_s = min(v for (c, _), v in timings.items() if c)
    baal_probs = outputs[modes[0]].permute(0, 2, 1).softmax(-1)  # [N, T, C]
    baal_entropy, baal_bald = predictive_entropy(baal_probs).numpy(), bald(baal_probs).numpy()
    ours_entropy, ours_bald = scores.columns["entropy"], scores.columns["bald"]
    result = {
        "single_s": round(single_s, 2),
        "medloop_s": round(medloop_s, 2),
        "baal_s": round(baal_s, 2),
        "baal_cached_s": round(baal_cached_s, 2),
        "ratio_vs_single": round(medloop_s / single_s, 3),
        "speedup_vs_baal_best": round(min(baal_s, baal_cached_s) / medloop_s, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "entropy_pearson_r": round(float(stats.pearsonr(ours_entropy, baal_entropy)[0]), 4),
        "bald_pearson_r": round(float(stats.pearsonr(ours_bald, baal_bald)[0]), 4),
        "bald_ks_p": round(float(stats.ks_2samp(ours_bald, baal_bald).pvalue), 4),
        "bald_mean": [round(float(np.mean(ours_bald)), 5), round(float(np.mean(baal_bald)), 5)],
        "prob_pearson_r": round(float(stats.pearsonr(scores.columns["prob_1"], baal_probs.mean(1)[:, 1].numpy())[0]), 4),
        "prob_pearson_r_noise_floor": round(float(stats.pearsonr(scores.columns["prob_1"], rescored.columns["prob_1"])[0]), 4),
        "entropy_pearson_r_noise_floor": round(float(stats.pearsonr(ours_entropy, rescored.columns["entropy"])[0]), 4),
        "entropy_ks_p": round(float(stats.ks_2samp(ours_entropy, baal_entropy).pvalue), 4),
        "n_images": len(ds), "size": args.size, "mc_samples": args.mc_samples, "width": args.width,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
