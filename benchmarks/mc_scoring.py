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


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-modes", action="store_true", help="time baal with replicate_in_memory on and off")
    args = parser.parse_args()
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
        torch.manual_seed(args.seed)
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
