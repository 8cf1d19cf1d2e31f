"""The datastore of a served run, laid out like MONAI Label's local datastore so a user can take it away::

    datastore/
      images/<name>.png             the images an annotator may be asked about (the run's working size, 8 bit)
      labels/final/<name>.png       the expert's label maps (pixel value = mask label index)
      labels/original/<name>.png    the model's proposals (same values; for a pseudo-label flagged for review,
                                    the pseudo-label)
      uncertainty/<name>.png        the model's uncertainty maps (0..255 for 0..1; higher = less sure)
      labels/reads/<reader>/<name>.png  with several readers per image: each annotator's own label maps
      datastore.json                the index: MONAI Label's ``{name, description, images_dir, labels_dir,
                                    objects: {id: {image: {ext, info}, labels: {tag: {ext, info}}}}}``
      answers.jsonl                 every expert label, appended and fsynced before it is acknowledged (a
                                    correction of a flagged pseudo-label carries ``info.review``)
      reads.jsonl                   with several readers per image: every read, appended and fsynced before it
                                    is acknowledged (``answers.jsonl`` then holds the consensus of the reads)

An expert label (or a read) is durable before it is acknowledged: its PNG is written atomically, then its line
is appended to ``answers.jsonl`` (``reads.jsonl``) and fsynced. ``answers.jsonl`` is the record of the expert's work; the index follows it
within half a second (rewritten atomically at most twice a second, off the acknowledgement's path) and is
rebuilt from it on every open, so a kill before the index catches up loses nothing.

Ids are never joined into paths: every file name comes from the index (an id with characters outside
``[A-Za-z0-9._-]`` gets them replaced and a hash of the id appended; a reader's folder is named the same way
after the annotator's client id), and every path is checked to stay inside the datastore folder.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from medloop.data import Sample
from medloop.errors import DataError, MedloopError
from medloop.storage import append_jsonl, read_jsonl, write_bytes, write_json

__all__ = ["TAGS", "Datastore", "RequestError", "label_digest", "png_bytes", "read_png", "reader_folder",
           "remove_partial_writes"]

log = logging.getLogger(__name__)

TAGS = ("final", "original")  # the expert's labels, the model's proposals (MONAI Label's DefaultLabelTag)
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class RequestError(MedloopError):
    """A request the server refuses; ``status`` is the HTTP status (4xx) and the message says why and what to do."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def png_bytes(array: np.ndarray) -> bytes:
    """An ``[H, W]`` (gray) or ``[H, W, 3]`` (RGB) uint8 array as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def label_digest(mask: np.ndarray, label: int | None) -> str:
    """What identifies an answer (mask pixels and image class): equal digests = the same answer sent twice."""
    h = hashlib.sha256(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    h.update(f"{mask.shape}:{label}".encode())
    return h.hexdigest()


# ``storage.atomic_write``'s temporary files: ``.<name>.<8 random characters>.tmp``
_PARTIAL = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files that a kill left behind mid-write below ``folder`` (none of them was ever
    acknowledged: a file is renamed into place before anything refers to it); returns what was deleted.

    Call it only while no other process writes below ``folder`` (at start, before serving).
    """
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        if path.is_file() and not path.is_symlink() and _PARTIAL.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.warning("removed %d partial file(s) that a stop left mid-write in %s, e.g. %s", len(removed), folder,
                    removed[0].name)
    return removed


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A prepared ``[C, H, W]`` float image as ``[H, W]`` (C = 1) or ``[H, W, 3]`` uint8 for display."""
    x = np.asarray(image, dtype=np.float32)
    x = x[0] if x.shape[0] != 3 else np.moveaxis(x, 0, -1)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:  # not normalized to [0, 1] (normalize: none): stretch to the image's range
        x = (x - lo) / max(hi - lo, 1e-12)
    return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


def _file_name(sample_id: str, taken: set[str]) -> str:
    stem = _SAFE.sub("_", sample_id).lstrip(".") or "image"
    if stem != sample_id or stem.lower() in taken:
        stem = f"{stem}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"
    return stem


def reader_folder(client: str) -> str:
    """The folder of an annotator's reads below ``labels/reads/``: the client id when it is a safe, lower-case
    name, else the safe part and a hash of the id (distinct ids never share a folder, on any file system)."""
    safe = _SAFE.sub("_", client).lstrip(".") or "reader"
    return safe if safe == client.lower() == client else f"{safe}-{hashlib.sha1(client.encode()).hexdigest()[:8]}"


class Datastore:
    """Images, expert labels, model proposals and their index in one folder (see the module docstring).

    Thread-safe: every change of the index happens under one lock; files are written atomically.
    """

    def __init__(self, folder: str | Path, name: str = "medloop", description: str = ""):
        self.folder = Path(folder).resolve()
        self.name, self.description = name, description
        self._lock = threading.RLock()
        self._objects: dict[str, dict] = {}
        self._stems: dict[str, str] = {}
        self._answers: dict[str, dict] = {}
        self._reads: dict[str, list[dict]] = {}  # id -> its reads, in the order they came (several readers)
        self._flush: threading.Timer | None = None  # a pending index rewrite
        self._indexed = threading.Condition(self._lock)  # notified after every index rewrite

    @property
    def index_path(self) -> Path:
        return self.folder / "datastore.json"

    @property
    def answers_path(self) -> Path:
        return self.folder / "answers.jsonl"

    @property
    def reads_path(self) -> Path:
        return self.folder / "reads.jsonl"

    @classmethod
    def open(cls, folder: str | Path, samples: Iterable[Sample] = (), name: str = "medloop",
             description: str = "") -> Datastore:
        """Open (or create) the datastore in ``folder``, adding ``samples``' images it does not hold yet, and
        rebuild the expert labels of the index from ``answers.jsonl`` and the reads from ``reads.jsonl``."""
        ds = cls(folder, name, description)
        for sub in ("images", "labels/final", "labels/original", "labels/reads", "uncertainty"):
            (ds.folder / sub).mkdir(parents=True, exist_ok=True)
        remove_partial_writes(ds.folder)
        if ds.index_path.exists():
            try:
                saved = json.loads(ds.index_path.read_text())
                ds._objects = saved["objects"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DataError(f"the datastore index cannot be read ({exc}); restore it from a copy, or delete it "
                                "to rebuild it from the images and answers.jsonl", ds.index_path, "corrupt") from None
        ds._stems = {sid: obj["image"]["info"]["name"].rsplit(".", 1)[0] for sid, obj in ds._objects.items()}
        taken = {s.lower() for s in ds._stems.values()}
        now = int(time.time())
        for s in samples:
            if s.sample_id in ds._objects:
                continue
            stem = _file_name(s.sample_id, taken)
            taken.add(stem.lower())
            pixels = to_uint8(s.image.numpy())
            write_bytes(ds.folder / "images" / f"{stem}.png", png_bytes(pixels))
            ds._stems[s.sample_id] = stem
            ds._objects[s.sample_id] = {"image": {"ext": ".png", "info": {
                "name": f"{stem}.png", "ts": now, "case_id": s.case_id, "height": int(pixels.shape[0]),
                "width": int(pixels.shape[1])}}, "labels": {}}
        for rec in read_jsonl(ds.answers_path):
            if rec.get("image") in ds._objects:
                ds._answers[rec["image"]] = rec
        for rec in read_jsonl(ds.reads_path):
            if rec.get("image") in ds._objects:
                ds._reads.setdefault(rec["image"], []).append(rec)
        for sid, obj in ds._objects.items():  # answers.jsonl decides which expert labels exist
            rec = ds._answers.get(sid)
            if rec is None:
                obj["labels"].pop("final", None)
            else:
                obj["labels"]["final"] = {"ext": ".png", "info": rec["info"]}
        with ds._lock:
            ds._write_index()
        return ds

    # ------------------------------------------------------------------------------------------------ reading

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return list(self._objects)

    def __contains__(self, sample_id: object) -> bool:
        return isinstance(sample_id, str) and sample_id in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def check(self, sample_id: str | None) -> str:
        """``sample_id`` if the datastore holds it, else a 404 naming it (ids never reach a path unchecked)."""
        if not sample_id or sample_id not in self._objects:
            shown = (sample_id or "")[:80]
            raise RequestError(f"unknown image '{shown}': it is not in this run's datastore; list the images with "
                               "GET /datastore/?output=all", 404)
        return sample_id

    def shape(self, sample_id: str) -> tuple[int, int]:
        info = self._objects[self.check(sample_id)]["image"]["info"]
        return int(info["height"]), int(info["width"])

    def path(self, sample_id: str, tag: str | None = None) -> Path:
        """The image (``tag=None``), a label (``final``, ``original``) or the ``uncertainty`` map of an image; 404
        when it does not exist."""
        stem = self._stems[self.check(sample_id)]
        if tag is None:
            rel = f"images/{stem}.png"
        elif tag in TAGS:
            with self._lock:  # the loop's thread may be indexing proposals
                has = tag in self._objects[sample_id]["labels"]
            if not has:
                raise RequestError(f"image '{sample_id}' has no '{tag}' label yet", 404)
            rel = f"labels/{tag}/{stem}.png"
        elif tag == "uncertainty":
            if "uncertainty" not in self.proposal_info(sample_id):
                raise RequestError(f"image '{sample_id}' has no uncertainty map yet", 404)
            rel = f"uncertainty/{stem}.png"
        else:
            raise RequestError(f"unknown label tag '{tag[:40]}'; use one of {', '.join(TAGS)}", 400)
        path = (self.folder / rel).resolve()
        if not path.is_relative_to(self.folder) or not path.is_file():
            raise RequestError(f"the file of image '{sample_id}' ({rel}) is missing from the datastore", 404)
        return path

    def image(self, sample_id: str) -> np.ndarray:
        return read_png(self.path(sample_id))

    def label(self, sample_id: str, tag: str) -> np.ndarray:
        return read_png(self.path(sample_id, tag))

    def uncertainty(self, sample_id: str) -> np.ndarray:
        return read_png(self.path(sample_id, "uncertainty"))

    def info(self, sample_id: str) -> dict:
        """MONAI Label's image info: the image's info plus its ``path``, and the labels it has."""
        with self._lock:  # the loop's thread may be indexing proposals
            obj = self._objects[self.check(sample_id)]
            return {**copy.deepcopy(obj["image"]["info"]),
                    "path": str(self.folder / "images" / obj["image"]["info"]["name"]), "labels": copy.deepcopy(obj["labels"])}

    def answer(self, sample_id: str) -> dict | None:
        """The acknowledged expert answer of an image (its ``answers.jsonl`` record), or ``None``."""
        with self._lock:
            return self._answers.get(sample_id)

    @property
    def answers(self) -> dict[str, dict]:
        with self._lock:  # a request thread may be adding one
            return dict(self._answers)

    def reads(self, sample_id: str) -> list[dict]:
        """The acknowledged reads of an image (``reads.jsonl`` records), in the order they came."""
        with self._lock:
            return list(self._reads.get(self.check(sample_id), []))

    @property
    def read_count(self) -> int:
        with self._lock:
            return sum(len(r) for r in self._reads.values())

    def read_label(self, record: dict) -> np.ndarray:
        """The label map of a read (a record of ``reads``)."""
        path = (self.folder / record["file"]).resolve()
        if not path.is_relative_to(self.folder / "labels" / "reads") or not path.is_file():
            raise DataError(f"the label map of a read of image '{record['image']}' ({record['file']}) is missing; "
                            "restore it from a copy of the datastore", self.reads_path, "missing")
        return read_png(path)

    def json(self) -> dict:
        """The index as MONAI Label's ``GET /datastore/?output=all`` answers it."""
        with self._lock:
            return {"name": self.name, "description": self.description, "images_dir": "images",
                    "labels_dir": "labels", "objects": copy.deepcopy(self._objects)}

    def status(self) -> dict:
        """MONAI Label's datastore stats: images, images with a final label, label counts per tag."""
        with self._lock:
            tags: dict[str, int] = {}
            for obj in self._objects.values():
                for tag in obj["labels"]:
                    tags[tag] = tags.get(tag, 0) + 1
            return {"total": len(self._objects), "completed": len(self._answers), "label_tags": tags}

    def datalist(self) -> list[dict[str, str]]:
        """Image and final label paths of every labeled image (MONAI Label's ``output=train``)."""
        with self._lock:  # a request thread may be adding an answer
            labeled = list(self._answers)
        return [{"image": str(self.folder / "images" / f"{self._stems[s]}.png"),
                 "label": str(self.folder / "labels" / "final" / f"{self._stems[s]}.png")} for s in labeled]

    # ------------------------------------------------------------------------------------------------ writing

    def record_final(self, sample_id: str, mask: np.ndarray, label: int | None, info: dict) -> dict:
        """Store an expert answer durably (PNG, then the fsynced log line, then the index); returns its record.

        The caller decides whether the answer is accepted (queue, lease, an earlier answer) under its own lock.
        """
        stem = self._stems[self.check(sample_id)]
        record = {"image": sample_id, "tag": "final", "class": label, "digest": label_digest(mask, label),
                  "info": {"name": f"{stem}.png", "ts": int(time.time()), "class": label, **info}}
        with self._lock:
            write_bytes(self.folder / "labels" / "final" / f"{stem}.png", png_bytes(mask))
            append_jsonl(self.answers_path, record)
            self._answers[sample_id] = record
            self._objects[sample_id]["labels"]["final"] = {"ext": ".png", "info": record["info"]}
            if self._flush is None:
                self._flush = threading.Timer(0.5, self.flush)
                self._flush.daemon = True
                self._flush.start()
        return record

    def record_read(self, sample_id: str, mask: np.ndarray, label: int | None, client: str, info: dict) -> dict:
        """Store one annotator's read of an image durably (PNG, then the fsynced ``reads.jsonl`` line); returns
        its record. The caller decides whether the read is accepted (queue, lease, readers) under its own lock."""
        stem = self._stems[self.check(sample_id)]
        rel = f"labels/reads/{reader_folder(client)}/{stem}.png"
        record = {"image": sample_id, "client_id": client, "class": label, "digest": label_digest(mask, label),
                  "file": rel, "ts": int(time.time()), **info}
        with self._lock:
            write_bytes(self.folder / rel, png_bytes(mask))
            append_jsonl(self.reads_path, record)
            self._reads.setdefault(sample_id, []).append(record)
        return record

    def flush(self) -> None:
        """Rewrite the index now (it follows ``answers.jsonl`` within half a second on its own)."""
        with self._lock:
            if self._flush is not None:
                self._flush.cancel()
                self._flush = None
            self._write_index()

    def wait_indexed(self, timeout: float) -> bool:
        """Wait until no index rewrite is pending (the index holds every answer recorded so far), without
        rewriting it; ``False`` when ``timeout`` seconds pass first."""
        with self._indexed:
            return self._indexed.wait_for(lambda: self._flush is None, timeout)

    def record_proposals(self, proposals: dict[str, Any], info: dict[str, dict]) -> None:
        """Write the model's proposals (``labels/original`` masks, uncertainty maps) and index them once.

        Args:
            proposals: id -> ``Proposal`` (mask ``[H, W]``, probs ``[K]``, uncertainty ``[H, W]`` in [0, 1]).
            info: id -> extra info kept in the index (model round, class probabilities by name, score).
        """
        entries = {}
        for sid, p in proposals.items():
            stem = self._stems[self.check(sid)]
            entry = {"name": f"{stem}.png", "ts": int(time.time()), **info.get(sid, {})}
            if p.uncertainty is not None:
                u = np.round(np.clip(np.asarray(p.uncertainty, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
                write_bytes(self.folder / "uncertainty" / f"{stem}.png", png_bytes(u))
                entry["uncertainty"] = f"uncertainty/{stem}.png"
            if p.mask is not None:
                write_bytes(self.folder / "labels" / "original" / f"{stem}.png", png_bytes(np.asarray(p.mask)))
                entry["mask"] = True
            entries[sid] = entry
        with self._lock:
            for sid, entry in entries.items():
                labels = self._objects[sid]["labels"]
                if entry.pop("mask", False):
                    labels["original"] = {"ext": ".png", "info": entry}
                    self._objects[sid]["image"]["info"].pop("proposal", None)
                else:  # no mask proposed (e.g. no segmenter yet): keep the info, no label file
                    labels.pop("original", None)
                    self._objects[sid]["image"]["info"]["proposal"] = entry
            self._write_index()

    def proposal_info(self, sample_id: str) -> dict:
        """The info of the model's latest proposal for an image (``{}`` when none)."""
        with self._lock:
            obj = self._objects[self.check(sample_id)]
            if "original" in obj["labels"]:
                return copy.deepcopy(obj["labels"]["original"]["info"])
            return copy.deepcopy(obj["image"]["info"].get("proposal", {}))

    def _write_index(self) -> None:
        write_json(self.index_path, {"name": self.name, "description": self.description, "images_dir": "images",
                                     "labels_dir": "labels", "objects": self._objects}, indent=None)
        self._indexed.notify_all()
