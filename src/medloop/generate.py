"""Library entry point behind ``medloop generate``: train (or load) the generator, write synthetic variants.

A job (it trains the generator and, when masks are missing, a lung segmenter), so it sits beside ``jobs.py``
rather than in ``synth/``, which never imports ``training/``. The output folder is itself a medloop ``folder``
dataset (``images/``, ``masks/``, ``labels.csv``) plus ``manifest.jsonl`` (one record per variant: source, class,
operations and parameters, which mask was used), ``gallery.png`` (the paper's Fig. 2 layout), ``generator.pt``,
``summary.json`` and ``run.json``; every file is written atomically, the index files last.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medloop.config import DataConfig, TrainConfig
from medloop.data import MedDataset, load_dataset
from medloop.errors import ConfigError
from medloop.progress import make_progress
from medloop.runinfo import write_run_record
from medloop.seeding import stream, torch_init
from medloop.storage import atomic_write, save_figure, write_json, write_text
from medloop.synth.generator import GeneratedVariant, MaskConditionedSampler
from medloop.training import fit, load_checkpoint, predict
from medloop.training.cgan import CGANConfig, check_vgg_source, fit_generator

__all__ = ["generate_job", "save_gallery", "lung_masks_for", "render_source", "read_variants"]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _save_png(path: Path, image: np.ndarray) -> None:
    """A 2-D uint8 / uint16 array as a PNG, written atomically."""
    png = Image.fromarray(image)
    atomic_write(path, lambda fh: png.save(fh, format="PNG"))


def _png16(path: Path, image: np.ndarray) -> None:
    """Single-channel float image in [0, 1] -> 16-bit PNG (keeps the generator's precision)."""
    _save_png(path, (np.clip(image, 0.0, 1.0) * 65535 + 0.5).astype(np.uint16))


def lung_masks_for(ds: MedDataset, segmenter: str | Path | None, seg_epochs: int, seed: int,
                   progress: bool = True) -> tuple[list[np.ndarray], list[str], dict[str, Any]]:
    """A binary lung mask for every sample: the manual one, or the segmenter's prediction when there is none.

    The segmenter is a ``medloop train --model unet`` checkpoint, or (when none is given and some images lack
    masks) a UNet trained here on the images that have masks. Returns masks, where each came from, and a
    description of the segmenter.
    """
    has = ds.has_mask
    info: dict[str, Any] = {"segmenter": None}
    masks: list[np.ndarray | None] = [ds[i].mask.numpy() > 0 if has[i] else None for i in range(len(ds))]
    sources = ["manual" if h else "" for h in has]
    missing = np.nonzero(~has)[0]
    if len(missing):
        if segmenter:
            model, record = load_checkpoint(segmenter)
            if record.get("model") != "unet":
                raise ConfigError(f"{segmenter}: the segmenter must be a unet checkpoint; got '{record.get('model')}'")
            info["segmenter"] = f"checkpoint {segmenter}"
        else:
            if not has.any():
                raise ConfigError(f"{ds.info.root}: no image has a lung mask, so no segmenter can be trained here; "
                                  "give --segmenter (a `medloop train --model unet` checkpoint)")
            from medloop.models import build_model

            with torch_init(seed):
                model = build_model("unet", in_channels=int(ds[0].image.shape[0]), num_classes=2)
            fit(model, ds.subset(np.nonzero(has)[0]), None,
                TrainConfig(task="segment", model="unet", epochs=seg_epochs, patience=0, seed=seed), progress=progress)
            info["segmenter"] = f"UNet trained {seg_epochs} epochs on the {int(has.sum())} images with manual masks"
        pred = predict(model, ds.subset(missing))["pred"].numpy()
        for j, i in enumerate(missing):
            masks[i] = pred[j] > 0
            sources[i] = "predicted"
    return [m for m in masks], sources, info  # type: ignore[misc]


def save_gallery(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray, list[GeneratedVariant]]],
                 n_variants: int = 6) -> None:
    """The paper's Fig. 2 layout: per row the source with its mask, then variants with their masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + min(n_variants, max((len(r[3]) for r in rows), default=0))
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.4 * len(rows)), squeeze=False)
    for r, (title, image, mask, variants) in enumerate(rows):
        panels = [(f"source {title}", image, mask, None)] + [
            (", ".join(op["op"] for op in v.ops), v.image[0], v.mask > 0, mask) for v in variants[: cols - 1]]
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(panels):
                continue
            name, img, msk, src_mask = panels[c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.contour(msk.astype(float), levels=[0.5], colors="#E69F00", linewidths=0.8)
            ax.set_title(name[:38], fontsize=7)
    fig.suptitle("source (orange: lung mask) and generated variants (orange: conditioning mask)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def render_source(sampler: MaskConditionedSampler, sample: Any, mask: np.ndarray, mask_source: str,
                  class_names: list[str], out: Path, per_image: int, seed: int, batch_size: int
                  ) -> tuple[list[list[Any]], list[str], list[GeneratedVariant]]:
    """Render and write one source's variants; returns its ``labels.csv`` rows, manifest lines and variants."""
    rng = stream(seed, "generate", "variants", sample.sample_id)
    variants = sampler.variants(sample.image.numpy(), mask.astype(np.int64), per_image, rng, batch_size)
    label = sample.label
    label_text = "" if label is None else (class_names[label] if label < len(class_names) else str(label))
    rows, lines = [], []
    for j, v in enumerate(variants):
        vid = f"{_safe(sample.sample_id)}-v{j:03d}"
        _png16(out / "images" / f"{vid}.png", v.image[0])
        _save_png(out / "masks" / f"{vid}.png", (v.mask > 0).astype(np.uint8) * 255)
        rows.append([f"images/{vid}.png", f"masks/{vid}.png", label_text, sample.case_id, sample.sample_id,
                     mask_source])
        lines.append(json.dumps({"id": vid, "source_sample": sample.sample_id, "case_id": sample.case_id,
                                 "label": label, "class": label_text or None, "mask_source": mask_source,
                                 "ops": v.ops}) + "\n")
    return rows, lines, variants


def read_variants(out: Path, lines: list[str]) -> list[GeneratedVariant]:
    """Variants back from their PNGs and manifest lines (for the gallery of a run rendered elsewhere)."""
    variants = []
    for line in lines:
        record = json.loads(line)
        image = np.asarray(Image.open(out / "images" / f"{record['id']}.png"), dtype=np.float32) / 65535
        mask = (np.asarray(Image.open(out / "masks" / f"{record['id']}.png")) > 0).astype(np.int64)
        variants.append(GeneratedVariant(image[None], mask, image[None], mask, record["ops"]))
    return variants


def generate_job(data: DataConfig, out: str | Path, per_image: int = 200, cgan: CGANConfig | None = None,
                 checkpoint: str | Path | None = None, segmenter: str | Path | None = None, seg_epochs: int = 15,
                 limit: int | None = None, batch_size: int = 32, gallery_rows: int = 4, seed: int = 0,
                 progress: bool = True, engine: str = "local", address: str | None = None) -> dict[str, Any]:
    """Train (or load from ``checkpoint``) the generator on ``data``, write ``per_image`` variants per image.

    Each source's variants draw from the stream ``(seed, "generate", "variants", source id)``, so they do not
    depend on the other sources or on which worker renders them.

    Args:
        limit: only the first ``limit`` images get variants (all images still train the generator).
        engine: ``local`` (this process) or ``ray``: the variants are rendered by an actor pool on a Ray cluster
            (``address``, or a local one; ``pip install medloop[ray]``), each actor loading ``generator.pt`` once
            and writing its PNGs into ``out``, which every node must see. The generator trains here either way.
    Returns a summary: counts, throughput (variants/s), where things were written.
    """
    from medloop.engine import check_engine

    check_engine(engine, address)
    if engine == "ray":
        from medloop.engine.ray import require_ray

        require_ray()  # before the generator trains
    out = Path(out)
    cgan = cgan or CGANConfig(seed=seed)
    if per_image < 1:
        raise ConfigError(f"--per-image must be >= 1; got {per_image}")
    if data.size is None:
        raise ConfigError("generation needs a working size (e.g. --size 128) so images can be batched")
    ds = load_dataset(data, progress=progress)
    if ds[0].image.shape[0] != 1:
        raise ConfigError(f"{data.source}: the generator works on single-channel radiographs; set channels: 1")
    sampler = None
    if checkpoint:  # checked before any training
        sampler = MaskConditionedSampler.load(checkpoint)
        if sampler.size != data.size:
            raise ConfigError(f"{checkpoint}: the generator was trained at {sampler.size} px; run with --size {sampler.size}")
    else:
        check_vgg_source(cgan, ds.labels[ds.has_mask])
    masks, mask_sources, seg_info = lung_masks_for(ds, segmenter, seg_epochs, seed, progress)
    if sampler is not None:
        trained = f"loaded from {checkpoint}"
    else:
        manual = np.nonzero(ds.has_mask)[0]
        if len(manual) < 2:
            raise ConfigError(f"{ds.info.root}: training the generator needs images with manual lung masks; found "
                              f"{len(manual)}. Give --checkpoint (a generator.pt) instead")
        images = torch.stack([ds[i].image for i in manual])
        lung = torch.from_numpy(np.stack([masks[i] for i in manual])).long()
        sampler, _ = fit_generator(images, lung, cgan, ds.labels[manual], progress=progress)
        trained = f"trained on {len(manual)} images with manual masks"
    sampler.save(out / "generator.pt")
    class_names = list(ds.info.class_names)
    n_sources = len(ds) if limit is None else min(limit, len(ds))
    gallery: list = []
    written = 0
    labels_csv = io.StringIO()
    writer = csv.writer(labels_csv)
    writer.writerow(["image", "mask", "label", "case_id", "source_sample", "mask_source"])
    manifest: list[str] = []
    started = time.perf_counter()
    if engine == "ray":
        from medloop.engine.ray import generate_ray

        results = generate_ray(ds, masks, mask_sources, n_sources, out, per_image=per_image, batch_size=batch_size,
                               seed=seed, address=address, progress=progress)
        for rows, lines in results:
            writer.writerows(rows)
            manifest.extend(lines)
            written += len(rows)
        for i, (_, lines) in enumerate(results[:gallery_rows]):
            sample = ds[i]
            gallery.append((sample.sample_id, sample.image[0].numpy(), masks[i], read_variants(out, lines[:6])))
    else:
        with make_progress(transient=not progress) as bar:
            task = bar.add_task("generating", total=n_sources * per_image, visible=progress)
            for i in range(n_sources):
                sample = ds[i]
                rows, lines, variants = render_source(sampler, sample, masks[i], mask_sources[i], class_names, out,
                                                      per_image, seed, batch_size)
                writer.writerows(rows)
                manifest.extend(lines)
                written += len(variants)
                if len(gallery) < gallery_rows:
                    gallery.append((sample.sample_id, sample.image[0].numpy(), masks[i], variants[:6]))
                rate = written / max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=len(variants), description=f"generating ({rate:.1f} images/s)")
    seconds = time.perf_counter() - started
    # the dataset's index files last: a folder with labels.csv has all its images
    write_text(out / "manifest.jsonl", "".join(manifest))
    write_text(out / "labels.csv", labels_csv.getvalue())
    save_gallery(out / "gallery.png", gallery)
    summary = {"sources": n_sources, "variants": written, "per_image": per_image, "seconds": round(seconds, 2),
               "images_per_s": round(written / max(seconds, 1e-9), 2), "generator": trained,
               "masks": {"manual": mask_sources[:n_sources].count("manual"),
                         "predicted": mask_sources[:n_sources].count("predicted")},
               "out": str(out), **seg_info, "content_vgg": sampler.record.get("content_vgg"),
               "autoencoder": sampler.record.get("autoencoder"), "engine": engine}
    write_json(out / "summary.json", summary, indent=2)
    write_run_record(out, seed, {"data": data.to_dict(), "cgan": cgan.to_dict(), "per_image": per_image,
                                 "engine": engine, "address": address,
                                 "checkpoint": str(checkpoint) if checkpoint else None,
                                 "segmenter": str(segmenter) if segmenter else None, "limit": limit,
                                 "content_vgg": summary["content_vgg"]}, "medloop generate")
    return summary
