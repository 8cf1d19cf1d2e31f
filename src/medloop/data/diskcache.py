"""A pool's prepared samples on disk (``DataConfig.cache: disk``): read once, then read back one sample at a time.

The first ``load_dataset`` of a source reads, validates and prepares every entry, as always, and appends each
sample's image (float32 ``[C, H, W]``) and mask (int16 ``[H, W]``) to two flat files; their ids, labels, shapes
and meta go to ``index.json``. A store is written in a folder of the writing process's own, renamed into place
when finished: a store a kill cut short is never used, and two processes loading one pool never mix. A later load
with the same key finds the index and reads no source file at all; a sample is then read from its offset in the
flat files when it is used (``os.pread``: no mapping, so the process's memory does not grow with the samples it
has touched; the operating system's page cache keeps the hot ones fast).

The key: the data settings that change what a sample holds, medloop's version, and for every entry its id and
the size and modification time of each of its files, so an edited, added or removed file makes a new store.
Location: ``<medloop cache>/pools/<key digest>/`` (``MEDLOOP_CACHE_DIR``; ``off`` refuses ``cache: disk``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.cache import cache_dir
from medloop.config import DataConfig
from medloop.data.record import Entry, Sample
from medloop.errors import ConfigError, DataError
from medloop.storage import write_json

__all__ = ["DiskStore", "store_key"]

NO_MASK = -1  # the mask file holds nothing for a sample without a mask


def _stat(path: Path | None) -> list[Any]:
    if path is None:
        return []
    try:
        st = os.stat(path)
    except OSError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns]


def store_key(config: DataConfig, layout_name: str, entries: Sequence[Entry]) -> str:
    """The digest naming a store: what changes a prepared sample (settings, reader version, the entries' files)."""
    from medloop import __version__

    settings = {k: v for k, v in config.to_dict().items() if k not in ("cache", "on_error")}
    digest = hashlib.sha256(json.dumps({"settings": settings, "layout": layout_name, "medloop": __version__},
                                       sort_keys=True, default=str).encode())
    for e in entries:
        digest.update(json.dumps([e.entry_id, e.case_id, e.label, e.index, _stat(e.image),
                                  [_stat(m) for m in e.masks]], default=str).encode())
    return digest.hexdigest()[:24]


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


class DiskStore:
    """The flat files of one store: ``append`` while a dataset is read, ``finish`` to publish, ``read`` after."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.index: dict[str, Any] | None = None

    @classmethod
    def for_key(cls, key: str) -> "DiskStore":
        root = cache_dir()
        if root is None:
            raise ConfigError("The 'cache' parameter 'disk' needs a cache folder, but MEDLOOP_CACHE_DIR is 'off'; set "
                              "MEDLOOP_CACHE_DIR to a folder, or use cache: true (memory) or false (read on access)")
        return cls(root / "pools" / key)

    # --- reading ------------------------------------------------------------------------------------------------

    def open(self) -> bool:
        """Whether a finished store is here (its index is then loaded, numbers as arrays)."""
        path = self.folder / "index.json"
        if not path.is_file():
            return False
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        if not all((self.folder / name).is_file() and (self.folder / name).stat().st_size >= size
                   for name, size in index["bytes"].items()):
            return False
        self.index = _columns(index)
        return True

    def __len__(self) -> int:
        return len(self.index["sample_id"])

    def read(self, row: int) -> Sample:
        """Sample ``row`` (in the order it was appended), read from the flat files."""
        ix = self.index
        image = np.empty(tuple(ix["image_shape"][row]), np.float32)
        self._pread("images.f32", image, int(ix["image_offset"][row]))
        mask = None
        if ix["mask_offset"][row] != NO_MASK:
            mask16 = np.empty(tuple(ix["mask_shape"][row]), np.int16)
            self._pread("masks.i16", mask16, int(ix["mask_offset"][row]))
            mask = torch.from_numpy(mask16.astype(np.int64))
        return Sample(torch.from_numpy(image), mask, ix["label"][row], ix["case_id"][row], ix["sample_id"][row],
                      ix["source"][row], ix["slice_index"][row], json.loads(ix["meta"][row]))

    def _pread(self, name: str, out: np.ndarray, offset: int) -> None:
        fd = os.open(self.folder / name, os.O_RDONLY)
        try:
            view = memoryview(out).cast("B")
            got = os.preadv(fd, [view], offset)
        finally:
            os.close(fd)
        if got != view.nbytes:
            raise DataError(f"the disk cache is shorter than its index ({got} of {view.nbytes} bytes at {offset}); "
                            "delete the folder to read the source again", self.folder / name, "corrupt")

    # --- writing ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        # written in a folder of this process's own, renamed into place when finished: a kill leaves no store,
        # and two processes that load the same pool at once never write into one folder
        self._part = self.folder.with_name(f"{self.folder.name}.part-{os.getpid()}")
        shutil.rmtree(self._part, ignore_errors=True)
        self._part.mkdir(parents=True)
        self._files = {name: open(self._part / name, "wb") for name in ("images.f32", "masks.i16")}
        self._offsets = {"images.f32": 0, "masks.i16": 0}
        self._cols: dict[str, list[Any]] = {}

    def append(self, sample: Sample, entry_pos: int) -> int:
        """Write ``sample`` (of kept entry ``entry_pos``); returns its row."""
        image = np.ascontiguousarray(sample.image.numpy(), dtype=np.float32)
        mask_shape, mask_offset = [-1, -1], NO_MASK
        if sample.mask is not None:
            mask = sample.mask.numpy()
            if mask.min(initial=0) < np.iinfo(np.int16).min or mask.max(initial=0) > np.iinfo(np.int16).max:
                raise DataError("mask labels do not fit the disk cache's 16 bits; use cache: true or false",
                                sample.sample_id, "mask-values")
            mask_shape, mask_offset = list(mask.shape), self._write("masks.i16", np.ascontiguousarray(mask, np.int16))
        row = {"entry_pos": entry_pos, "label": sample.label, "case_id": sample.case_id,
               "sample_id": sample.sample_id, "source": sample.source, "slice_index": sample.slice_index,
               "meta": json.dumps(sample.meta, default=_plain), "image_shape": list(image.shape),
               "image_offset": self._write("images.f32", image), "mask_shape": mask_shape, "mask_offset": mask_offset}
        for key, value in row.items():
            self._cols.setdefault(key, []).append(value)
        return len(self._cols["sample_id"]) - 1

    def _write(self, name: str, array: np.ndarray) -> int:
        offset = self._offsets[name]
        self._files[name].write(array.tobytes())
        self._offsets[name] += array.nbytes
        return offset

    def finish(self, entries: Sequence[Entry], extra: dict[str, Any]) -> None:
        """Flush the flat files and publish the index (atomically): the kept entries and ``extra`` (skips,
        notes, ignored files) with the samples."""
        for fh in self._files.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        index = {**self._cols, "bytes": dict(self._offsets), "entries": [_entry_record(e) for e in entries], **extra}
        write_json(self._part / "index.json", index)
        self.index = _columns(index)
        try:
            os.rename(self._part, self.folder)
        except OSError:
            index = self.index
            if self.open():  # another process published the same store first: its files hold the same samples
                shutil.rmtree(self._part, ignore_errors=True)
                return
            shutil.rmtree(self.folder, ignore_errors=True)  # a broken store (its index lost): replaced
            os.rename(self._part, self.folder)
            self.index = index

    def abandon(self) -> None:
        for fh in getattr(self, "_files", {}).values():
            fh.close()
        shutil.rmtree(getattr(self, "_part", None) or "", ignore_errors=True)


def _columns(index: dict[str, Any]) -> dict[str, Any]:
    """The index with its numeric columns as arrays (a few bytes per sample, not a dict per sample)."""
    out = dict(index)
    for key in ("entry_pos", "image_offset", "mask_offset"):
        out[key] = np.asarray(index.get(key, []), dtype=np.int64)
    for key in ("image_shape", "mask_shape"):
        out[key] = np.asarray(index.get(key, []), dtype=np.int32)
    return out


def _entry_record(entry: Entry) -> dict[str, Any]:
    rec = dataclasses.asdict(entry)
    rec["image"] = None if entry.image is None else str(entry.image)
    rec["masks"] = [str(m) for m in entry.masks]
    return json.loads(json.dumps(rec, default=_plain))


def entry_from_record(rec: dict[str, Any]) -> Entry:
    return Entry(rec["entry_id"], rec["case_id"], None if rec["image"] is None else Path(rec["image"]),
                 tuple(Path(m) for m in rec["masks"]), rec["label"], rec["index"], rec["meta"])
