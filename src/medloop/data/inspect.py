"""Dataset inspection: counts, sizes, intensities, mask coverage, and a preview montage with mask overlays."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from medloop.data.dataset import MedDataset
from medloop.storage import save_figure

__all__ = ["DatasetSummary", "summarize", "save_preview", "LABEL_COLORS"]

# Overlay colours per mask label value (1, 2, ...); colour-blind friendly (Okabe-Ito).
LABEL_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7"]


@dataclasses.dataclass
class DatasetSummary:
    """What `medloop data inspect` reports; ``to_dict()`` is JSON-ready."""

    name: str
    root: str
    volumetric: bool
    n_samples: int
    n_entries: int
    n_cases: int
    working_size: list[int] | None
    class_counts: dict[str, int]
    label_values: dict[str, dict[str, Any]]
    native_sizes: dict[str, int]
    native_range: list[float]
    native_dtypes: dict[str, int]
    normalized: dict[str, float]
    mask_coverage: dict[str, float]
    samples_without_mask: int
    cases_without_mask: list[str]
    skipped: dict[str, int]
    skipped_messages: list[str]
    notes: dict[str, int]
    ignored_files: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize(ds: MedDataset) -> DatasetSummary:
    """Compute a DatasetSummary (reads every sample once; cheap when the dataset is cached)."""
    info = ds.info
    class_counts: collections.Counter[str] = collections.Counter()
    label_samples: collections.Counter[int] = collections.Counter()
    label_pixels: collections.Counter[int] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    dtypes: collections.Counter[str] = collections.Counter()
    seen_entries: set[str] = set()
    lo, hi = np.inf, -np.inf
    means, coverage = [], []
    total_mask_pixels = 0
    no_mask_cases: dict[str, None] = {}
    n_no_mask = 0
    shape = None
    for s, entry_key in zip(ds, ds.entry_ids):
        if entry_key not in seen_entries:
            seen_entries.add(entry_key)
            sizes["x".join(map(str, s.meta["native_size"]))] += 1
            dtypes[s.meta["native_dtype"]] += 1
            lo, hi = min(lo, s.meta["native_range"][0]), max(hi, s.meta["native_range"][1])
        if s.label is None:
            class_counts["unlabeled"] += 1
        else:
            names = info.class_names
            class_counts[names[s.label] if s.label < len(names) else str(s.label)] += 1
        means.append(float(s.image.mean()))
        shape = list(s.image.shape[-2:])
        if s.mask is None:
            n_no_mask += 1
            no_mask_cases[s.case_id] = None
            continue
        values, counts = np.unique(s.mask.numpy(), return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            label_samples[v] += 1
            label_pixels[v] += c
        total_mask_pixels += s.mask.numel()
        coverage.append(float((s.mask > 0).float().mean()))
    label_values = {}
    for v in sorted(set(label_samples) | set(info.mask_labels)):
        label_values[str(v)] = {
            "name": info.mask_labels.get(v, f"label {v}"),
            "samples": label_samples.get(v, 0),
            "pixel_fraction": round(label_pixels.get(v, 0) / total_mask_pixels, 5) if total_mask_pixels else 0.0,
        }
    skipped = collections.Counter(e.reason for e in ds.skipped)
    cov = np.array(coverage) if coverage else np.zeros(1)
    # a case counts as "without mask" only if none of its samples has one
    with_mask = {c for c, m in zip(ds.case_ids, ds.has_mask) if m}
    return DatasetSummary(
        name=info.name,
        root=info.root,
        volumetric=info.volumetric,
        n_samples=len(ds),
        n_entries=len(seen_entries),
        n_cases=len(set(ds.case_ids)),
        working_size=shape if ds.config.size is not None else None,
        class_counts=dict(class_counts),
        label_values=label_values,
        native_sizes=dict(sizes.most_common()),
        native_range=[float(lo), float(hi)],
        native_dtypes=dict(dtypes),
        normalized={"method": ds.config.normalize, "mean": round(float(np.mean(means)), 4)},  # type: ignore[dict-item]
        mask_coverage={"mean": round(float(cov.mean()), 4), "min": round(float(cov.min()), 4), "max": round(float(cov.max()), 4),
                       "samples_with_mask": len(coverage)},
        samples_without_mask=n_no_mask,
        cases_without_mask=[c for c in no_mask_cases if c not in with_mask],
        skipped=dict(skipped),
        skipped_messages=[str(e) for e in ds.skipped[:20]],
        notes=dict(ds.notes),
        ignored_files=ds.ignored[:20],
    )


def _pick(ds: MedDataset, n: int, seed: int) -> list[int]:
    """Up to ``n`` sample indices spread over classes (and over volumes, mid slices first).

    ``default_rng(seed)`` is the preview's only random stream (which samples are shown), separate from any run.
    """
    rng = np.random.default_rng(seed)
    labels, has_mask = ds.labels, ds.has_mask
    if ds.info.volumetric:
        by_volume: dict[str, list[int]] = collections.defaultdict(list)
        for i, entry_id in enumerate(ds.entry_ids):
            by_volume[entry_id].append(i)
        # one volume per case first (e.g. ED of every patient), then the other volumes of each case
        rank: collections.Counter[str] = collections.Counter()
        keyed = []
        for order, idx in enumerate(by_volume.values()):
            case = ds.case_ids[idx[0]]
            keyed.append((rank[case], order, idx))
            rank[case] += 1
        volumes = [idx for _, _, idx in sorted(keyed)]
        picks = []
        offsets = [0.5, 0.25, 0.75, 0.1, 0.9]
        for off in offsets:
            for idx in volumes:
                if len(picks) < n:
                    picks.append(idx[int(off * (len(idx) - 1))])
        return sorted(set(picks), key=picks.index)
    groups = collections.defaultdict(list)
    for i, lab in enumerate(labels):
        groups[int(lab)].append(i)
    order = {k: list(rng.permutation(v)) for k, v in groups.items()}
    for k in order:  # samples with a mask first: the overlay is the point of the preview
        order[k].sort(key=lambda i: not has_mask[i])
    picks: list[int] = []
    while len(picks) < min(n, len(ds)):
        for k in sorted(order):
            if order[k] and len(picks) < n:
                picks.append(int(order[k].pop(0)))
    return picks


def save_preview(ds: MedDataset, path: str | Path, n: int = 16, seed: int = 0, cols: int = 4) -> Path:
    """Save a montage of ``n`` samples with coloured mask overlays and a legend; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picks = _pick(ds, n, seed)
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.25 * rows + 0.5), squeeze=False)
    values = sorted(v for v in ds.info.mask_labels if v > 0)
    max_label = max(values + [1])
    cmap = ListedColormap([(0, 0, 0, 0)] + [LABEL_COLORS[(v - 1) % len(LABEL_COLORS)] for v in range(1, max_label + 1)])
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picks):
        s = ds[i]
        image = s.image.numpy()
        ax.imshow(image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1), cmap="gray", vmin=0, vmax=1)
        if s.mask is not None:
            m = s.mask.numpy()
            ax.imshow(np.ma.masked_equal(m, 0), cmap=cmap, vmin=0, vmax=max_label, alpha=0.22, interpolation="nearest")
            for v in np.unique(m):
                if v > 0:
                    ax.contour(m == v, levels=[0.5], colors=[LABEL_COLORS[(v - 1) % len(LABEL_COLORS)]], linewidths=0.8)
        title = s.sample_id
        if s.label is not None and ds.info.class_names:
            title += f"\n{ds.info.class_names[s.label]}"
        elif s.mask is None:
            title += "\n(no mask)"
        ax.set_title(title, fontsize=8)
    handles = [Patch(color=LABEL_COLORS[(v - 1) % len(LABEL_COLORS)], label=ds.info.mask_labels[v]) for v in values]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(f"{ds.info.root}  ({len(ds)} samples)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04 if handles else 0, 1, 0.97))
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path
