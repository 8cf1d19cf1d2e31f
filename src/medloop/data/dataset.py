"""Open a data source: scan with its layout, validate every entry, normalize, resize, and serve `Sample`s."""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medloop.config import DataConfig
from medloop.data.layouts.base import BUILTINS, LAYOUTS, Layout
from medloop.data.record import DatasetInfo, Entry, RawItem, Sample
from medloop.errors import ConfigError, DataError
from medloop.progress import track

__all__ = ["MedDataset", "load_dataset", "resolve_layout", "scan_entries", "read_entry", "collate_samples", "prepare_item",
           "PERCENTILES"]

log = logging.getLogger("medloop.data")

PERCENTILES = (0.5, 99.5)


@dataclasses.dataclass(frozen=True)
class _Ref:
    entry_pos: int
    slice_index: int | None
    case_id: str
    sample_id: str
    label: int | None
    has_mask: bool


def resolve_layout(config: DataConfig) -> Layout:
    """Build the layout reader for ``config.source`` (detecting it from the folder when not given)."""
    source = config.source
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        if config.layout not in (None, name):
            raise ConfigError(f"layout '{config.layout}' does not apply to built-in source '{source}'; drop --layout")
        return BUILTINS.get(name)(source, seed=config.seed, **config.options)
    root = Path(source).expanduser()
    if not root.exists():
        raise DataError("folder not found; check the path (or use builtin:chest-xray / builtin:cardiac-mr)", root, "missing")
    if not root.is_dir():
        raise DataError("is not a folder; point medloop at the dataset's root folder", root, "format")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DataError("the folder is empty; put the dataset there (see `medloop data list` for layouts)", root, "empty")
    if config.layout is not None:
        return LAYOUTS.get(config.layout)(root, seed=config.seed, **config.options)
    for cls in sorted((LAYOUTS.get(n) for n in LAYOUTS), key=lambda c: c.priority):
        if cls.detect(root):
            return cls(root, seed=config.seed, **config.options)
    raise DataError(
        "could not detect the data layout: no images/, CXR_png/, patientXXX/, imagesTr/, JSRT or DICOM files found. "
        f"Arrange it as one of the layouts ({', '.join(LAYOUTS.names())}; see `medloop data list`) or pass --layout",
        root,
        "empty",
    )


def _check_mask(mask: np.ndarray, where: str, declared: set[int] | None, mask_labels: dict[int, str]) -> np.ndarray:
    if mask.dtype.kind == "f":
        if not np.all(np.isfinite(mask)) or not np.all(mask == np.round(mask)):
            raise DataError("mask holds non-integer values; label maps must be integer class indices", where, "mask-values")
    mask = mask.astype(np.int64)
    values = set(np.unique(mask).tolist())
    if declared is None:
        bad = {v for v in values if v < 0}
    else:
        bad = values - declared
    if bad:
        shown = ", ".join(str(v) for v in sorted(bad)[:8])
        allowed = ", ".join(f"{k}={v}" for k, v in sorted(mask_labels.items())) if declared else "non-negative integers"
        raise DataError(
            f"mask values {{{shown}}} are outside the declared label set ({allowed}); fix the mask or declare the "
            "labels with the 'mask_labels' option",
            where,
            "mask-values",
        )
    return mask


def _normalize(volume: np.ndarray, mode: str) -> np.ndarray:
    """Scale a whole image/volume ``[Z, H, W, C]`` to [0, 1] (one scale per image or volume)."""
    if mode == "none":
        return volume
    if mode == "percentile":
        lo, hi = np.percentile(volume, PERCENTILES)
        if hi <= lo:  # a few outliers on a flat image: fall back to the full range
            lo, hi = float(volume.min()), float(volume.max())
    else:
        lo, hi = float(volume.min()), float(volume.max())
    scaled = (volume - lo) / (hi - lo)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def _to_channels(volume: np.ndarray, channels: int, where: str) -> np.ndarray:
    have = volume.shape[-1]
    if have == channels:
        return volume
    if have == 3 and channels == 1:
        return volume @ np.array([0.299, 0.587, 0.114], dtype=volume.dtype)[:, None]
    if have == 1:
        return np.repeat(volume, channels, axis=-1)
    raise DataError(f"image has {have} channels but the working config asks for {channels}; set channels: {have}", where, "format")


def _fmt_shape(shape: Sequence[int], volumetric: bool) -> str:
    """``[Z, H, W]`` as users know it: volumes H x W x Z as stored, 2D images width x height."""
    dims = (*shape[1:], shape[0]) if volumetric else (shape[2], shape[1])
    return "x".join(str(d) for d in dims)


def _center_crop(images: torch.Tensor, masks: torch.Tensor | None, fraction: float
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The central ``fraction`` of each side of ``images [Z, C, H, W]`` (and ``masks [Z, H, W]``)."""
    h, w = images.shape[-2:]
    ch, cw = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    top, left = (h - ch) // 2, (w - cw) // 2
    images = images[..., top:top + ch, left:left + cw]
    return images, masks[..., top:top + ch, left:left + cw] if masks is not None else None


def prepare_item(raw: RawItem, entry: Entry, layout: Layout, config: DataConfig) -> list[Sample]:
    """Validate, normalize and resize one read entry into 2D samples (one per slice for volumes)."""
    where = entry.where
    volumetric = raw.volumetric
    image = np.asarray(raw.image)
    if image.dtype.kind not in "uif" and image.dtype != bool:
        raise DataError(f"unsupported pixel type {image.dtype}; save the image as integer or float", where, "format")
    image = image.astype(np.float32, copy=False)
    if not np.all(np.isfinite(image)):
        n_bad = int((~np.isfinite(image)).sum())
        raise DataError(f"image contains {n_bad} NaN or infinite values; fix or remove the file", where, "nan")
    vmin, vmax = float(image.min()), float(image.max())
    if vmin == vmax:
        raise DataError(f"constant image (every pixel = {vmin:g}); nothing to learn from it, remove or fix the file", where, "constant")
    volume = image if volumetric else image[None]  # [Z, H, W, C]
    mask = None
    if raw.mask is not None:
        mask_where = raw.mask_path or where
        mask_arr = np.asarray(raw.mask)
        mask_vol = mask_arr if volumetric else mask_arr[None]
        if mask_vol.shape != volume.shape[:3]:
            noun = "label volume shape" if volumetric else "size"
            raise DataError(
                f"{noun} {_fmt_shape(mask_vol.shape, volumetric)} does not match image "
                f"{_fmt_shape(volume.shape[:3], volumetric)} ({Path(where).name}); resample the mask to the image grid "
                "or remove it",
                mask_where,
                "mask-size",
            )
        info = layout.info()
        mask_vol = _check_mask(mask_vol, mask_where, layout.mask_values(), info.mask_labels)
        mapping = layout.label_map()
        if mapping:
            lut = np.zeros(max(max(mapping), int(mask_vol.max())) + 1, dtype=np.int64)
            for src, dst in mapping.items():
                lut[src] = dst
            mask_vol = lut[mask_vol]
        mask = mask_vol
    volume = _normalize(volume, config.normalize)
    volume = _to_channels(volume, config.channels, where)
    images = torch.from_numpy(np.ascontiguousarray(volume.transpose(0, 3, 1, 2), dtype=np.float32))  # [Z, C, H, W]
    masks = torch.from_numpy(mask) if mask is not None else None  # [Z, H, W]
    native_hw = tuple(images.shape[-2:])
    if config.crop < 1.0:
        images, masks = _center_crop(images, masks, config.crop)
    hw = tuple(images.shape[-2:])  # after the crop
    if config.size is not None and hw != (config.size, config.size):
        target = (config.size, config.size)
        shrinking = config.size < min(hw)
        images = F.interpolate(images, size=target, mode="bilinear", align_corners=False, antialias=shrinking)
        if masks is not None:
            masks = F.interpolate(masks[:, None].float(), size=target, mode="nearest-exact")[:, 0].long()
        if config.normalize != "none":
            images = images.clamp_(0.0, 1.0)  # bilinear/anti-aliased resampling can overshoot slightly
    meta = {
        **entry.meta,
        **raw.meta,
        "native_size": list(native_hw) if not volumetric else [*native_hw, int(volume.shape[0])],
        "native_range": [vmin, vmax],
        "native_dtype": str(raw.image.dtype),
    }
    if raw.mask_thresholded:
        meta["mask_thresholded"] = True
    samples = []
    n_slices = images.shape[0]
    for z in range(n_slices):
        samples.append(
            Sample(
                image=images[z].contiguous(),
                mask=None if masks is None else masks[z].contiguous(),
                label=entry.label,
                case_id=entry.case_id,
                sample_id=f"{entry.entry_id}:z{z:02d}" if volumetric else entry.entry_id,
                source=where,
                slice_index=z if volumetric else None,
                meta=meta,
            )
        )
    return samples


class MedDataset(torch.utils.data.Dataset):
    """Prepared 2D samples of one source, indexable without reading pixels for ids/labels/cases.

    Use ``load_dataset`` to build one. ``ds[i]`` is a ``Sample``; ``ds.subset(idx)`` a view.

    Attributes:
        info: what the dataset holds.
        config: the resolved DataConfig.
        skipped: DataErrors of entries skipped under ``on_error: skip``.
        notes: counts of documented fixes applied (e.g. thresholded masks).
        ignored: files under the source that the layout did not recognise as its data (a stray text file
            beside DICOMs, a mask without an image), named so that nothing is passed over unseen.
    """

    def __init__(
        self,
        info: DatasetInfo,
        config: DataConfig,
        refs: list[_Ref],
        loader: Callable[[int], list[Sample]],
        cache: dict[tuple[int, int | None], Sample] | None,
        skipped: list[DataError],
        notes: dict[str, int],
        entries: list[Entry],
        ignored: Sequence[str] = (),
    ):
        self.info = info
        self.config = config
        self._refs = refs
        self._loader = loader
        self._cache = cache
        self.skipped = skipped
        self.notes = notes
        self.entries = entries
        self.ignored = list(ignored)
        self._last: tuple[int, list[Sample]] | None = None

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], info: DatasetInfo, config: DataConfig | None = None) -> "MedDataset":
        """An in-memory dataset of prepared samples (synthetic variants, a training set mixed from sources)."""
        refs, entries = [], []
        for i, s in enumerate(samples):
            refs.append(_Ref(i, None, s.case_id, s.sample_id, s.label, s.mask is not None))
            entries.append(Entry(s.sample_id, s.case_id, label=s.label, index=i))
        cache = {(i, None): s for i, s in enumerate(samples)}
        return cls(info, config or DataConfig(source=info.root), refs, lambda pos: [samples[pos]], cache, [], {}, entries)

    @classmethod
    def derived(cls, info: DatasetInfo, groups: Sequence[tuple[str, str]], members: Sequence[tuple[int, str]],
                render: Callable[[int], list[Sample]], keep: int = 8) -> "MedDataset":
        """A dataset whose samples are made on access, a group at a time (synthetic variants of pool images,
        rendered again where they were first rendered elsewhere): ``groups[g] = (group id, case id)``,
        ``members[i] = (g, sample id)``, ``render(g)`` the group's samples in order (each member's ``sample_id`` must
        be among them). The last ``keep`` groups made stay in memory."""
        import functools

        made = functools.lru_cache(maxsize=keep)(render)
        entries = [Entry(gid, case, index=g) for g, (gid, case) in enumerate(groups)]
        position: dict[int, dict[str, int]] = {}
        refs = []
        for g, sid in members:
            index = position.setdefault(g, {})
            refs.append(_Ref(g, len(index), groups[g][1], sid, None, True))
            index[sid] = len(index)
        return cls(info, DataConfig(source=info.root), refs,
                   lambda g: _check_members(made(g), position[g], groups[g][0]), None, [], {}, entries)

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, index: int) -> Sample:
        ref = self._refs[index]
        key = (ref.entry_pos, ref.slice_index)
        if self._cache is not None:
            return self._cache[key]
        last = self._last  # one read of the shared slot: another thread may replace it meanwhile
        if last is None or last[0] != ref.entry_pos:
            last = self._last = (ref.entry_pos, self._loader(ref.entry_pos))
        return last[1][ref.slice_index or 0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def entry_of(self, index: int) -> Entry:
        """The entry sample ``index`` is read from (``read_entry`` reads it again, elsewhere)."""
        return self.entries[self._refs[index].entry_pos]

    @property
    def case_ids(self) -> list[str]:
        return [r.case_id for r in self._refs]

    @property
    def entry_ids(self) -> list[str]:
        """The file or volume each sample comes from (slices of one volume share it)."""
        return [self.entries[r.entry_pos].entry_id for r in self._refs]

    @property
    def sample_ids(self) -> list[str]:
        return [r.sample_id for r in self._refs]

    @property
    def labels(self) -> np.ndarray:
        """Image-level labels, -1 where unknown."""
        return np.array([-1 if r.label is None else r.label for r in self._refs], dtype=np.int64)

    @property
    def has_mask(self) -> np.ndarray:
        return np.array([r.has_mask for r in self._refs], dtype=bool)

    @property
    def num_classes(self) -> int:
        """Image-level classes: ``max(len(class_names), largest known label + 1)``; 0 when unlabeled.

        Counted over every entry of the source, so a subset (the labeled set, one split) has the same
        number of classes as the pool it comes from.
        """
        known = [e.label for e in self.entries if e.label is not None]
        return max(len(self.info.class_names), max(known, default=-1) + 1)

    @property
    def num_mask_classes(self) -> int:
        """Segmentation classes: ``max(largest declared mask label + 1, 2)`` (``info.mask_labels``; background and
        foreground at least, also when no labels are declared)."""
        return max(max(self.info.mask_labels, default=1) + 1, 2)

    def subset(self, indices: Iterable[int]) -> "MedDataset":
        """A view on some samples (shares the cache)."""
        refs = [self._refs[int(i)] for i in indices]
        view = MedDataset(self.info, self.config, refs, self._loader, self._cache, self.skipped, self.notes, self.entries,
                          self.ignored)
        return view

    def __repr__(self) -> str:
        return f"MedDataset({self.info.name}, {len(self)} samples, {len(set(self.case_ids))} cases, root={self.info.root})"


def _check_members(samples: list[Sample], members: dict[str, int], group: str) -> list[Sample]:
    """A derived group's samples in its members' order; a member the render did not make is an error."""
    made = {s.sample_id: s for s in samples}
    missing = [sid for sid in members if sid not in made]
    if missing:
        raise DataError(f"rendering group '{group}' again did not make {missing[:3]}: the render is not "
                        "deterministic, or its inputs changed", group, "changed")
    return [made[sid] for sid in members]


def collate_samples(samples: Sequence[Sample]) -> dict[str, Any]:
    """Batch samples: images ``[N, C, H, W]``, masks ``[N, H, W]`` (-1 where a sample has none),
    ``has_mask [N]``, labels ``[N]`` (-1 unknown), ids as lists."""
    shapes = {tuple(s.image.shape) for s in samples}
    if len(shapes) > 1:
        raise DataError(f"samples have different sizes {sorted(shapes)}; set a working size (size: 256 / --size 256)")
    images = torch.stack([s.image for s in samples])
    h, w = images.shape[-2:]
    masks = torch.stack([s.mask if s.mask is not None else torch.full((h, w), -1, dtype=torch.int64) for s in samples])
    return {
        "image": images,
        "mask": masks,
        "has_mask": torch.tensor([s.mask is not None for s in samples]),
        "label": torch.tensor([-1 if s.label is None else s.label for s in samples], dtype=torch.int64),
        "case_id": [s.case_id for s in samples],
        "sample_id": [s.sample_id for s in samples],
    }


def scan_entries(layout: Layout, config: DataConfig, handle: Callable[[DataError], None]) -> list[Entry]:
    """The entries of ``layout``'s scan, without reading pixels; scan errors and duplicate ids go to ``handle``
    (which raises or records them). Raises when nothing is found at all."""
    entries: list[Entry] = []
    seen: dict[str, Entry] = {}
    skipped = 0
    for item in layout.scan():
        if isinstance(item, DataError):
            skipped += 1
            handle(item)
            continue
        if item.entry_id in seen:
            skipped += 1
            handle(
                DataError(
                    f"duplicate case id '{item.entry_id}' (also {seen[item.entry_id].where}); rename one of the files "
                    "or remove it",
                    item.where,
                    "duplicate",
                )
            )
            continue
        seen[item.entry_id] = item
        entries.append(item)
    if not entries and not skipped:
        raise DataError(f"no images found for layout '{layout.name}'; expected:\n{layout.tree}", config.source, "empty")
    return entries


def read_entry(layout: Layout, entry: Entry, config: DataConfig) -> list[Sample]:
    """Read, validate and prepare one entry (one sample, or one per slice); any failure is a DataError naming it."""
    try:
        raw = layout.load(entry, config.size)
    except DataError:
        raise
    except Exception as exc:  # never a bare traceback on user data
        raise DataError(f"cannot read ({type(exc).__name__}: {exc})", entry.where, "corrupt") from exc
    return prepare_item(raw, entry, layout, config)


def load_dataset(config: DataConfig | str | None = None, *, progress: bool = True, **fields: Any) -> MedDataset:
    """Open a data source and prepare its samples.

    Args:
        config: a DataConfig, or a source string (``builtin:chest-xray``, a folder path).
        progress: show a progress bar while reading.
        **fields: DataConfig fields overriding ``config`` (``size=128, on_error="skip"``).

    Every entry is read once here, so bad files are reported up front (or skipped with a warning under
    ``on_error: skip``). Raises DataError / ConfigError with the file and the fix.
    """
    if config is None or isinstance(config, str):
        base = {"source": config} if isinstance(config, str) else {}
        config = DataConfig.from_dict({**base, **fields})
    elif fields:
        config = DataConfig.from_dict({**config.to_dict(), **fields})
    layout = resolve_layout(config)
    info = layout.info()
    skipped: list[DataError] = []
    notes: collections.Counter[str] = collections.Counter()

    def handle(err: DataError) -> None:
        if config.on_error == "raise":
            raise err
        skipped.append(err)
        log.warning("skipped %s", err)

    entries = scan_entries(layout, config, handle)
    n_scan_skipped = len(skipped)
    ignored = [str(p) for p in getattr(layout, "ignored", [])]
    store = None
    if config.cache == "disk":
        from medloop.data.diskcache import DiskStore, store_key

        store = DiskStore.for_key(store_key(config, f"{type(layout).__name__}:{info.name}", entries))
        if store.open():  # read before: no source file is read again
            return _from_store(store, info, config, skipped, ignored, entries)
        store.start()

    def read(entry: Entry) -> list[Sample]:
        return read_entry(layout, entry, config)

    refs: list[_Ref] = []
    cache: dict[tuple[int, int | None], Sample] | None = {} if config.cache is True else None
    kept: list[Entry] = []
    kept_at: list[int] = []  # disk: the positions of the kept entries among those scanned
    try:
        for at, entry in enumerate(track(entries, f"reading {config.source}", enabled=progress)):
            try:
                samples = read(entry)
            except DataError as err:
                handle(err)
                continue
            pos = len(kept)
            kept.append(entry)
            kept_at.append(at)
            if samples and samples[0].meta.get("mask_thresholded"):
                notes["masks thresholded (anti-aliased 0/255)"] += 1
            for s in samples:
                refs.append(_Ref(pos, s.slice_index, s.case_id, s.sample_id, s.label, s.mask is not None))
                if cache is not None:
                    cache[(pos, s.slice_index)] = s
            if store is not None:
                for s in samples:
                    store.append(s, pos)
    except BaseException:
        if store is not None:
            store.abandon()
        raise
    if not refs:
        if store is not None:
            store.abandon()
        reasons = collections.Counter(e.reason for e in skipped)
        raise DataError(f"every entry was skipped ({dict(reasons)}); nothing usable is left", config.source, "empty")
    if skipped:
        reasons = collections.Counter(e.reason for e in skipped)
        log.warning("skipped %d of %d entries: %s", len(skipped), len(kept) + len(skipped), dict(reasons))
    for key, value in getattr(layout, "notes", {}).items():
        notes[key] += value

    def loader(pos: int) -> list[Sample]:
        return read(kept[pos])

    if store is not None:
        read_skips = [[e.detail, e.path, e.reason] for e in skipped[n_scan_skipped:]]
        store.finish(kept_at, {"read_skipped": read_skips, "notes": dict(notes)})
        del refs, kept  # the store's index holds them
        return _from_store(store, info, config, skipped[:n_scan_skipped], ignored, entries, announce=False)
    return MedDataset(info, config, refs, loader, cache, skipped, dict(notes), kept, ignored)


def _from_store(store: Any, info: DatasetInfo, config: DataConfig, skipped: list[DataError], ignored: list[str],
                scanned: list[Entry], announce: bool = True) -> MedDataset:
    """The dataset of a finished disk store: samples read from it on access. ``skipped``: this load's scan
    skips, to which the read skips of the load that wrote the store are added; ``scanned``: this load's scan,
    the same as the writer's (the store's key covers it)."""
    index = store.index
    read_skips = [DataError(detail, path, reason) for detail, path, reason in index["read_skipped"]]
    if read_skips and config.on_error == "raise":
        raise read_skips[0]  # found when the store was written under on_error: skip
    for err in read_skips if announce else ():
        log.warning("skipped %s (when the disk cache was written)", err)
    if announce and (skipped or read_skips):
        reasons = collections.Counter(e.reason for e in skipped + read_skips)
        log.warning("skipped %d of %d entries: %s", len(skipped) + len(read_skips), len(scanned) + len(skipped),
                    dict(reasons))
    none = -1
    refs = [_Ref(int(pos), None if z == none else int(z), case, sid, None if label == none else int(label),
                 bool(mask >= 0))
            for pos, z, case, sid, label, mask in zip(index["entry_pos"], index["slice_index"], index["case_id"],
                                                     index["sample_id"], index["label"], index["mask_offset"])]
    entries = [scanned[at] for at in index["kept"]]
    # an entry's samples are consecutive rows (appended as it was read)
    starts = np.searchsorted(index["entry_pos"], np.arange(len(entries) + 1))

    def loader(pos: int) -> list[Sample]:
        return [store.read(row) for row in range(starts[pos], starts[pos + 1])]

    return MedDataset(info, config, refs, loader, None, skipped + read_skips, dict(index["notes"]), entries, ignored)
