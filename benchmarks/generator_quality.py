"""Does the mask-conditioned generator do its job? (Mahapatra et al. 2018, Sect. 2.1; issue targets at 128 px)

Splits the data by case; on the training side trains a UNet segmenter and a ResNet-18 classifier on *real*
images, and the generator (mask autoencoder + cGAN). For every test image it renders ``--per-image`` variants and
measures:
  (i)   mask fidelity: Dice between the real-trained segmenter's prediction on the generated image and the
        conditioning mask (beside it, the same Dice against the source's own mask, and the Dice between the two
        masks); and, on the pixels where the boundary moved, the fraction the segmenter puts on the conditioning
        mask's side, on the generated image and on the source (the generator should follow the new mask, not
        copy the old one);
  (ii)  label preservation: agreement of the real-trained classifier's predicted class between generated images
        and their sources (the source as the generator received it, after the variant's flip / rotation / shift,
        so a judge that is not flip-invariant does not count against the generator; the agreement with the
        untransformed source is reported beside it; ``label_agreement_intensity_op_alone`` applies the variants'
        lung intensity changes to their sources without the generator, to tell how much of the disagreement
        that op causes on its own), with the classifier's own test AUC, since agreement means
        little for a classifier at chance. ``--judge resnet18`` is the project's ResNet-18 (early stopping on the validation split);
        ``--judge smallcnn`` is the global-max-pooling CNN of ``phantom_difficulty.py`` trained on train + val
        with its fixed schedule: the phantom's nodules are small local findings that the ResNet-18 does not
        learn from ~160 images (test AUC at chance) while this CNN does;
  (iii) diversity: SSIM and L1 distance between generated image and its source (the source after the variant's
        geometric ops, i.e. what the generator received); beside them, the SSIM after a 1 px Gaussian blur of
        both (how much of the difference is coarser than fine texture and detector noise), the SSIM between two
        renderings of one variant (1.0 for a generator without noise channels), and the amount of fine texture
        in the lung (std of what a 1 px blur removes) in generated images and their sources: a ratio well above
        1 means the generator buys its diversity with noise; and the training images' median detector-noise sigma
        (Immerkaer's estimate, which sets the weight of the generator's TV source view);
plus generation throughput (images/s), and agreement / SSIM split by which perturbation ops made the variant
(``by_op``: with and without each op). Final line: JSON.

    python benchmarks/generator_quality.py --data builtin:chest-xray --size 128 --judge smallcnn --work W
    python benchmarks/generator_quality.py --data ../shared/data/cxr-tb-256 --size 128 --work W2

``--work`` keeps the judges and the generator; the generator file is keyed by its training config
(``generator-<hash>.pt``), so runs with other ``--cgan key=value`` settings reuse the judges only.
``--generator FILE`` evaluates a trained generator without training one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from medloop.config import DataConfig, TrainConfig, apply_overrides, parse_overrides
from medloop.data import load_dataset, split_by_case
from medloop.models import build_model
from medloop.synth.generator import MaskConditionedSampler
from medloop.synth.perturb import intensity_shift, shift_lung
from medloop.synth.views import noise_sigma
from medloop.training import evaluate, fit
from medloop.metrics import classification_metrics, mask_dice
from medloop.training.cgan import CGANConfig, fit_generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:chest-xray")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--per-image", type=int, default=10)
    ap.add_argument("--max-test", type=int, default=60, help="test images that get variants")
    ap.add_argument("--epochs", type=int, default=20, help="cGAN epochs")
    ap.add_argument("--seg-epochs", type=int, default=25)
    ap.add_argument("--cls-epochs", type=int, default=40)
    ap.add_argument("--cls-patience", type=int, default=10)
    ap.add_argument("--cls-lr", type=float, default=1e-3)
    ap.add_argument("--g-features", type=int, default=64)
    ap.add_argument("--d-features", type=int, default=32)
    ap.add_argument("--max-train", type=int, default=None, help="train the generator on at most N images (CPU time)")
    ap.add_argument("--judge", choices=("resnet18", "smallcnn"), default="resnet18",
                    help="label-preservation classifier (smallcnn for the phantom: see the module docstring)")
    ap.add_argument("--cgan", action="append", default=[], metavar="KEY=VALUE",
                    help="a CGANConfig field, e.g. --cgan vgg_weight=1.0 (repeatable)")
    ap.add_argument("--generator", default=None,
                    help="evaluate this generator file instead of training one (one cached in --work, or a "
                         "generator.pt trained on this split's training side only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder keeping the trained judges and generator (reused if there)")
    args = ap.parse_args()
    work = Path(args.work) if args.work else None
    if work:
        work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    ds = load_dataset(DataConfig(source=args.data, size=args.size, seed=args.seed))
    split = split_by_case(ds, val=0.15, test=0.2, seed=args.seed)
    train, val, test = ds.subset(split.train), ds.subset(split.val), ds.subset(split.test)

    # real-image segmenter and classifier (the judges)
    torch.manual_seed(args.seed)
    seg = _cached(work, "seg.pt", build_model("unet", in_channels=1, num_classes=2),
                  lambda m: fit(m, train, val, TrainConfig(task="segment", model="unet", epochs=args.seg_epochs,
                                                           patience=8, seed=args.seed)))
    seg_test = evaluate(seg, test, "segment")
    torch.manual_seed(args.seed)
    if args.judge == "resnet18":
        cls = _cached(work, "cls.pt", build_model("resnet18", in_channels=1, num_classes=2, width=16),
                      lambda m: fit(m, train, val, TrainConfig(model="resnet18", model_params={"width": 16},
                                                               epochs=args.cls_epochs, patience=args.cls_patience,
                                                               lr=args.cls_lr, seed=args.seed)))
        cls_test = evaluate(cls, test, "classify")
        classify = lambda x: cls.eval()(x)[0].argmax(1)  # noqa: E731
    else:
        from phantom_difficulty import predict, small_cnn, train_fold

        def train_small(model: torch.nn.Module) -> None:
            both = ds.subset(np.concatenate([split.train, split.val]))
            x_tr, y_tr = torch.stack([s.image for s in both]), torch.from_numpy(both.labels)
            model.load_state_dict(train_fold(x_tr, y_tr, args.cls_epochs, args.seed).state_dict())

        cls = _cached(work, "smallcnn.pt", small_cnn(), train_small)
        x_te = torch.stack([s.image for s in test])
        p_te = predict(cls, x_te)
        cls_test = classification_metrics(np.stack([1 - p_te, p_te], 1), test.labels)
        classify = lambda x: torch.from_numpy(predict(cls, x) > 0.5).long()  # noqa: E731

    # the generator, trained on the training side only, on the images with manual lung masks
    has = np.nonzero(train.has_mask)[0]
    if args.max_train:
        has = np.sort(np.random.default_rng(args.seed).choice(has, min(args.max_train, len(has)), replace=False))
    images = torch.stack([train[i].image for i in has])
    lung = torch.stack([(train[i].mask > 0).long() for i in has])
    overrides = parse_overrides(args.cgan)
    cgan = CGANConfig.from_dict(apply_overrides({"epochs": args.epochs, "g_features": args.g_features,
                                                 "d_features": args.d_features, "d_dense": 256, "seed": args.seed},
                                                overrides))
    key = hashlib.sha1(json.dumps({"cgan": cgan.to_dict(), "max_train": args.max_train, "data": args.data,
                                   "size": args.size}, sort_keys=True).encode()).hexdigest()[:10]
    if args.generator and args.cgan:
        ap.error("--generator evaluates a trained generator (its training options are in its record); drop --cgan")
    gen_file = Path(args.generator) if args.generator else work / f"generator-{key}.pt" if work else None
    if gen_file and (args.generator or gen_file.exists()):
        sampler = MaskConditionedSampler.load(gen_file)
        record = sampler.record  # includes the training time measured when it was trained
    else:
        t0 = time.time()
        sampler, record = fit_generator(images, lung, cgan, train.labels[has])
        record["train_minutes"] = round((time.time() - t0) / 60, 2)
        if gen_file:
            sampler.save(gen_file, train_minutes=record["train_minutes"])

    # variants of test images
    pick = [i for i in range(len(test)) if test.labels[i] >= 0 and test.has_mask[i]][: args.max_test]
    rng = np.random.default_rng(args.seed + 1)
    draw_rng = np.random.default_rng(args.seed + 2)  # its own stream: the variants drawn do not depend on it
    cond_vs_src, fid, fid_src, agree, agree_correct, ssim, l1 = [], [], [], [], [], [], []
    ssim_low, ssim_draws, tex_gen, tex_src = [], [], [], []
    follow, follow_src = [], []
    made_by, agree_v, agree_orig, agree_shift_only = [], [], [], []
    n_gen = 0
    gen_seconds = 0.0
    for i in pick:
        s = test[i]
        t1 = time.perf_counter()
        variants = sampler.variants(s.image.numpy(), (s.mask.numpy() > 0).astype(np.int64), args.per_image, rng)
        gen_seconds += time.perf_counter() - t1
        n_gen += len(variants)
        gen = torch.from_numpy(np.stack([v.image for v in variants]))
        src = torch.from_numpy(np.stack([v.source for v in variants]))
        cond = torch.from_numpy(np.stack([v.mask > 0 for v in variants]))
        src_masks = torch.from_numpy(np.stack([v.source_mask > 0 for v in variants]))
        with torch.no_grad():
            pred_mask = seg.eval()(gen)[0].argmax(1) > 0
            p_gen = classify(gen)
            p_geo = classify(src)  # the source as the generator received it (after the variant's flip/rotation/shift)
            p_src = classify(s.image[None])
        cond_vs_src += mask_dice(cond, src_masks).tolist()
        # where the boundary moved: does the segmenter see the new side on the generated image (and on the source)?
        with torch.no_grad():
            pred_src_img = seg(src)[0].argmax(1) > 0
        for pm, ps, c, m in zip(pred_mask, pred_src_img, cond, src_masks):
            changed = c ^ m
            if changed.any():
                follow.append(float((pm == c)[changed].float().mean()))
                follow_src.append(float((ps == c)[changed].float().mean()))
        fid += mask_dice(pred_mask, cond).tolist()
        fid_src += mask_dice(pred_mask, src_masks).tolist()
        # the same lung intensity change applied to the source itself, no generator: how much of the judge's
        # disagreement the (paper's) intensity op causes on its own
        lo, hi = float(s.image.min()), float(s.image.max())
        shifted = [(j, shift_lung(v.source, v.source_mask > 0, intensity_shift(v.ops), lo, hi))
                   for j, v in enumerate(variants) if intensity_shift(v.ops)]
        if shifted:
            with torch.no_grad():
                p_shift = classify(torch.from_numpy(np.stack([img for _, img in shifted])))
            sel = [j for j, _ in shifted]
            agree_shift_only += (p_shift == p_geo[sel]).float().tolist()
        agree += (p_gen == p_geo).float().tolist()
        agree_orig += (p_gen == p_src).float().tolist()
        if int(p_src) == s.label:
            agree_correct += (p_gen == p_geo).float().tolist()
        for v, g, r, a in zip(variants, gen.numpy(), src.numpy(), (p_gen == p_geo).tolist()):
            ssim.append(structural_similarity(g[0], r[0], data_range=1.0))
            # the same after a 1 px Gaussian: how much of the difference is structure, not fine texture
            g_low, r_low = ndimage.gaussian_filter(g[0], 1.0), ndimage.gaussian_filter(r[0], 1.0)
            ssim_low.append(structural_similarity(g_low, r_low, data_range=1.0))
            l1.append(float(np.abs(g[0] - r[0]).mean()))
            region = v.mask > 0  # amount of fine texture (what the blur removes) in the lung: realistic or noise?
            tex_gen.append(fine_texture_std(g[0], region, g_low))
            tex_src.append(fine_texture_std(r[0], region, r_low))
            made_by.append({o["op"] for o in v.ops if o["op"] != "intensity" or o.get("shift")})
            agree_v.append(bool(a))
        # one variant rendered twice (source, mask and pose fixed): a generator with noise gives each draw its own look
        twice = sampler.render(src[:1].repeat(2, 1, 1, 1), cond[:1].repeat(2, 1, 1), draw_rng).numpy()
        ssim_draws.append(structural_similarity(twice[0, 0], twice[1, 0], data_range=1.0))
    by_op = {}
    for op in ("boundary", "intensity", "flip", "rotate", "translate"):
        has_op = np.array([op in m for m in made_by])
        by_op[op] = {"n": int(has_op.sum()),
                     **{f"{k}_{side}": round(float(np.mean(np.asarray(vals)[sel])), 4) if sel.any() else None
                        for k, vals in (("agreement", agree_v), ("ssim", ssim))
                        for side, sel in (("with", has_op), ("without", ~has_op))}}
    result = {
        "data": args.data, "size": args.size, "n_train_images": len(images), "n_test_sources": len(pick),
        "variants_per_image": args.per_image, "n_generated": n_gen,
        "mask_fidelity_dice": round(float(np.mean(fid)), 4),
        "dice_to_source_mask": round(float(np.mean(fid_src)), 4),
        "dice_condition_vs_source_mask": round(float(np.mean(cond_vs_src)), 4),
        "moved_pixels_following_condition": round(float(np.mean(follow)), 4) if follow else None,
        "moved_pixels_following_condition_on_source": round(float(np.mean(follow_src)), 4) if follow_src else None,
        "label_preservation": round(float(np.mean(agree)), 4),
        "label_preservation_vs_untransformed_source": round(float(np.mean(agree_orig)), 4),
        "label_agreement_intensity_op_alone": round(float(np.mean(agree_shift_only)), 4) if agree_shift_only else None,
        "label_preservation_where_source_correct": round(float(np.mean(agree_correct)), 4) if agree_correct else None,
        "ssim_mean": round(float(np.mean(ssim)), 4), "ssim_min": round(float(np.min(ssim)), 4),
        "ssim_max": round(float(np.max(ssim)), 4), "l1_mean": round(float(np.mean(l1)), 4),
        "ssim_lowpass_mean": round(float(np.mean(ssim_low)), 4),
        "ssim_between_draws": round(float(np.mean(ssim_draws)), 4),
        "fine_texture_std_generated": round(float(np.median(tex_gen)), 4),
        "fine_texture_std_source": round(float(np.median(tex_src)), 4),
        "fine_texture_std_real_p5_p95": [round(float(v), 4) for v in np.percentile(
            [fine_texture_std(im[0].numpy(), m.numpy() > 0) for im, m in zip(images, lung)], [5, 95])],
        "fine_texture_ratio": round(float(np.median(tex_gen) / max(np.median(tex_src), 1e-9)), 3),
        # how much detector noise the data carries (Immerkaer; what sets the TV view's weight)
        "source_noise_sigma_median": round(float(np.median([noise_sigma(im[0].numpy()) for im in images])), 4),
        "images_per_s": round(n_gen / max(gen_seconds, 1e-9), 2),
        "segmenter_test_dice": round(float(seg_test["dice_mean"]), 4),
        "judge": args.judge, "classifier_test_auc": round(float(cls_test["auc"]), 4),
        "classifier_test_accuracy": round(float(cls_test["accuracy"]), 4),
        "autoencoder_val_dice": record["autoencoder"].get("val_dice"),
        "content_vgg": record["content_vgg"]["vgg"], "g_features": args.g_features, "d_features": args.d_features,
        "cgan_epochs": record.get("cgan_config", {}).get("epochs"), "cgan_overrides": overrides, "generator_file": gen_file.name if gen_file else None,
        "cgan_train_minutes": record.get("train_minutes"), "by_op": by_op,
        "minutes": round((time.time() - started) / 60, 2),
    }
    print(json.dumps(result))


def fine_texture_std(image: np.ndarray, region: np.ndarray, blurred: np.ndarray | None = None) -> float:
    """Std, inside ``region``, of what a 1 px Gaussian blur removes from ``image`` (noise and fine texture)."""
    blurred = ndimage.gaussian_filter(image, 1.0) if blurred is None else blurred
    return float((image - blurred)[region].std())


def _cached(work: Path | None, name: str, model: torch.nn.Module, train) -> torch.nn.Module:
    """Load ``work/name`` when it exists, else ``train(model)`` and save it there."""
    if work and (work / name).exists():
        model.load_state_dict(torch.load(work / name, weights_only=True))
        return model
    train(model)
    if work:
        torch.save(model.state_dict(), work / name)
    return model


if __name__ == "__main__":
    main()
