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

import array
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.cache import cache_dir
from medloop.config import DataConfig
from medloop.data.record import Entry, Sample
from medloop.errors import ConfigError, DataError
from medloop.storage import save_npz, write_json

__all__ = ["DiskStore", "store_key"]

NONE = -1  # a missing number (label, slice index, mask)


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
        digest.update(json.dumps([e.entry_id, e.case_id, e.label, e.index, e.meta, _stat(e.image),
                                  [_stat(m) for m in e.masks], [_stat(Path(m)) for m in _meta_files(e)]],
                                 sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def _meta_files(entry: Entry) -> list[str]:
    """Files a reader opens besides the entry's image and masks (a Decathlon case's other modalities)."""
    return [str(m) for m in entry.meta.get("modalities", [])]


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


FILES = ("images.f32", "masks.i16", "meta.json")  # flat files: appended to while the dataset is read
NUMBERS = ("entry_pos", "label", "slice_index", "image_offset", "mask_offset", "meta_offset", "meta_length",
           "image_c", "image_h", "image_w", "mask_h", "mask_w")  # per sample; -1: none
STRINGS = ("sample_id", "case_id", "source")


class DiskStore:
    """The files of one store: ``append`` while a dataset is read, ``finish`` to publish, ``read`` after.

    In memory per sample: its three strings and twelve int64 numbers (``columns.npz``); the pixels and the meta
    are read from the flat files when the sample is used.
    """

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
        """Whether a finished store is here (its index is then loaded)."""
        try:
            index = json.loads((self.folder / "index.json").read_text())
            with np.load(self.folder / "columns.npz", allow_pickle=False) as numbers:
                index.update({k: numbers[k] for k in NUMBERS})
        except Exception:  # missing, torn or foreign: no store here (it is written again)
            return False
        if not all((self.folder / name).is_file() and (self.folder / name).stat().st_size >= size
                   for name, size in index["bytes"].items()):
            return False
        index["source"] = [sys.intern(v) for v in index["source"]]  # one string, not one per sample
        self.index = index
        return True

    def read(self, row: int) -> Sample:
        """Sample ``row`` (in the order it was appended), read from the flat files."""
        ix = self.index
        image = self._pread("images.f32", np.float32, (ix["image_c"][row], ix["image_h"][row], ix["image_w"][row]),
                            ix["image_offset"][row])
        mask = None
        if ix["mask_offset"][row] != NONE:
            mask = torch.from_numpy(self._pread("masks.i16", np.int16, (ix["mask_h"][row], ix["mask_w"][row]),
                                                ix["mask_offset"][row]).astype(np.int64))
        meta = json.loads(self._pread("meta.json", np.uint8, (ix["meta_length"][row],), ix["meta_offset"][row]).tobytes())
        label, z = int(ix["label"][row]), int(ix["slice_index"][row])
        return Sample(torch.from_numpy(image), mask, None if label == NONE else label, ix["case_id"][row],
                      ix["sample_id"][row], ix["source"][row], None if z == NONE else z, meta)

    def _pread(self, name: str, dtype: Any, shape: tuple, offset: Any) -> np.ndarray:
        out = np.empty(tuple(int(v) for v in shape), dtype)
        view = memoryview(out).cast("B")
        fd = os.open(self.folder / name, os.O_RDONLY)
        try:
            got = os.preadv(fd, [view], int(offset))
        finally:
            os.close(fd)
        if got != view.nbytes:
            raise DataError(f"the disk cache is shorter than its index ({got} of {view.nbytes} bytes at {offset}); "
                            "delete the folder to read the source again", self.folder / name, "corrupt")
        return out

    # --- writing ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        # written in a folder of this process's own, renamed into place when finished: a kill leaves no store,
        # and two processes that load the same pool at once never write into one folder
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        _sweep_parts(self.folder)
        self._part = Path(tempfile.mkdtemp(prefix=f"{self.folder.name}.part-{os.getpid()}-", dir=self.folder.parent))
        self._files = {name: open(self._part / name, "wb") for name in FILES}
        self._offsets = dict.fromkeys(FILES, 0)
        self._numbers = {k: array.array("q") for k in NUMBERS}
        self._strings: dict[str, list[str]] = {k: [] for k in STRINGS}

    def append(self, sample: Sample, entry_pos: int) -> int:
        """Write ``sample`` (of kept entry ``entry_pos``); returns its row."""
        image = np.ascontiguousarray(sample.image.numpy(), dtype=np.float32)
        mask_hw, mask_offset = (NONE, NONE), NONE
        if sample.mask is not None:
            mask = sample.mask.numpy()
            if mask.min(initial=0) < np.iinfo(np.int16).min or mask.max(initial=0) > np.iinfo(np.int16).max:
                raise DataError("mask labels do not fit the disk cache's 16 bits; use cache: true or false",
                                sample.sample_id, "mask-values")
            mask_hw, mask_offset = mask.shape, self._write("masks.i16", np.ascontiguousarray(mask, np.int16).tobytes())
        meta = json.dumps(sample.meta, default=_plain).encode()
        numbers = (entry_pos, NONE if sample.label is None else sample.label,
                   NONE if sample.slice_index is None else sample.slice_index,
                   self._write("images.f32", image.tobytes()), mask_offset, self._write("meta.json", meta), len(meta),
                   *image.shape, *mask_hw)
        for key, value in zip(NUMBERS, numbers):
            self._numbers[key].append(int(value))
        for key, value in zip(STRINGS, (sample.sample_id, sample.case_id, sample.source)):
            self._strings[key].append(value)
        return len(self._strings["sample_id"]) - 1

    def _write(self, name: str, data: bytes) -> int:
        offset = self._offsets[name]
        self._files[name].write(data)
        self._offsets[name] += len(data)
        return offset

    def finish(self, kept: Sequence[int], extra: dict[str, Any]) -> None:
        """Flush the flat files and publish the store (renamed into place): ``kept``, the positions of the entries
        that were read among those scanned (the same scan finds this store again), and ``extra`` (skips, notes)."""
        for fh in self._files.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        numbers = {k: np.frombuffer(v, dtype=np.int64) if len(v) else np.zeros(0, np.int64)
                   for k, v in self._numbers.items()}
        save_npz(self._part / "columns.npz", compressed=False, **numbers)
        index = {**self._strings, "bytes": dict(self._offsets), "kept": list(kept), **extra}
        write_json(self._part / "index.json", index)
        del self._numbers, self._strings
        try:
            os.rename(self._part, self.folder)
        except OSError:  # the folder exists: another process published the same store first, or a broken one is there
            if self.open():  # the same samples: this copy is not needed
                shutil.rmtree(self._part, ignore_errors=True)
                return
            shutil.rmtree(self.folder, ignore_errors=True)
            os.rename(self._part, self.folder)
        _fsync_dir(self.folder.parent)  # the rename itself survives a power cut
        if not self.open():
            raise DataError("the disk cache just written cannot be read back; check the disk", self.folder, "corrupt")

    def abandon(self) -> None:
        for fh in getattr(self, "_files", {}).values():
            fh.close()
        shutil.rmtree(getattr(self, "_part", None) or "", ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep_parts(folder: Path, min_age_s: float = 3600.0) -> None:
    """Remove the unfinished writes of ``folder``'s store left by killed processes: a part whose writer is not
    running here and that nothing has touched for ``min_age_s`` (a writer in another container may share a pid
    number; an hour of silence says it is gone too)."""
    now = time.time()
    for part in folder.parent.glob(f"{folder.name}.part-*"):
        try:
            pid = int(part.name.split(".part-", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)
            continue  # its writer runs
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue  # a process of someone else's: running
        try:
            if now - part.stat().st_mtime >= min_age_s:
                shutil.rmtree(part, ignore_errors=True)
        except OSError:
            pass
