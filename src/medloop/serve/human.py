"""A human oracle: the loop's queries become a queue that annotators work through in the annotation server.

``submit(ids)`` (the loop's thread) asks the runner for the model's proposals, appends the batch to
``queue.jsonl`` and returns at once; annotators lease an item (one annotator per item until the lease expires),
and their answer is stored durably in the datastore before the server acknowledges it; ``poll()`` hands each
answer to the loop once. Everything an annotator can lose is on disk: after a kill, the persisted queue is open
again at once (leases are not kept: they only coordinate), acknowledged answers are served to the loop when it
asks again, and an answer sent twice is recognised and not stored twice.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medloop.errors import DataError
from medloop.loop.oracle import Answer, Oracle
from medloop.serve.datastore import Datastore, RequestError, label_digest
from medloop.storage import append_jsonl, read_jsonl

__all__ = ["Batch", "HumanOracle"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Batch:
    """What the runner says about a batch before it is queued: the round that asks and each id's score."""

    round_idx: int | None = None
    scores: dict[str, float] = dataclasses.field(default_factory=dict)


class HumanOracle(Oracle):
    """Answers come from annotators through the server (see the module docstring).

    Args:
        datastore: where images live and answers are stored.
        lease_seconds: how long an item stays with the annotator who opened it.
        prepare: called with the new ids of a batch before it is queued (the loop's thread: write the model's
            proposals); returns a ``Batch``.
        clock: monotonic seconds (tests move it to expire leases).
    """

    def __init__(self, datastore: Datastore, lease_seconds: float = 300.0,
                 prepare: Callable[[list[str]], Batch] | None = None, clock: Callable[[], float] = time.monotonic):
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0; got {lease_seconds}")
        self.datastore, self.lease_seconds, self.prepare, self._clock = datastore, lease_seconds, prepare, clock
        self._lock = threading.Lock()
        self._queue: dict[str, dict] = {}  # unanswered id -> {round, rank, score}, in the order asked
        self._wanted: set[str] = set()  # asked by the loop in this process, not yet polled
        self._leases: dict[str, tuple[str, float]] = {}  # id -> (client, expiry)
        self._skipped: dict[str, list[str]] = {}  # client -> ids it skipped, oldest first
        for line in read_jsonl(self.queue_path):
            for rank, sid in enumerate(line["ids"]):
                if sid in datastore and datastore.answer(sid) is None:
                    self._queue.pop(sid, None)
                    self._queue[sid] = {"round": line.get("round"), "rank": rank, "score": line["scores"].get(sid)}
        self._restored = bool(self._queue)  # a queue from before a restart, until the loop asks again

    @property
    def queue_path(self) -> Path:
        return self.datastore.folder / "queue.jsonl"

    # ---------------------------------------------------------------------------------------- the loop's side

    def submit(self, sample_ids: list[str]) -> None:
        ids = list(dict.fromkeys(sample_ids))
        unknown = [s for s in ids if s not in self.datastore]
        if unknown:
            raise DataError(f"the loop asked for {unknown[:3]}, which the served datastore does not hold; the run "
                            "folder does not match its config: serve it with the config it was started with",
                            self.datastore.folder)
        new = [s for s in ids if self.datastore.answer(s) is None]
        batch = self.prepare(new) if new and self.prepare is not None else Batch()
        with self._lock:
            if self._restored:
                asked = set(ids)
                stale = [s for s in self._queue if s not in asked]
                for s in stale:  # the resumed loop asks another batch: items it no longer wants leave the queue
                    del self._queue[s]
                if stale:
                    log.warning("%d queued item(s) from before the restart are no longer asked for: %s", len(stale),
                                stale[:5])
                self._restored = False
            new = [s for s in new if self.datastore.answer(s) is None]  # answered while the proposals were made
            if new:
                append_jsonl(self.queue_path, {"round": batch.round_idx, "ids": new, "ts": int(time.time()),
                                               "scores": {s: batch.scores[s] for s in new if s in batch.scores}})
            for rank, s in enumerate(new):
                self._queue.setdefault(s, {}).update(round=batch.round_idx, rank=rank, score=batch.scores.get(s))
            self._wanted |= set(ids)

    def poll(self) -> dict[str, Answer]:
        with self._lock:
            ready = [s for s in self._wanted if self.datastore.answer(s) is not None]
        out = {}
        for s in ready:  # acknowledged labels are final: reading them needs no lock
            rec = self.datastore.answer(s)
            out[s] = Answer(s, rec["class"], self.datastore.label(s, "final").astype(np.int64))
        with self._lock:
            self._wanted.difference_update(out)
        return out

    # ------------------------------------------------------------------------------------- the annotators' side

    def lease(self, client: str, sample_id: str | None = None) -> dict | None:
        """Give ``client`` an item: ``sample_id``, or the one it holds, or the first open one in the strategy's
        order (items it skipped last); ``None`` when nothing is open. One item per client at a time."""
        with self._lock:
            now = self._expire()
            held = [s for s, (c, _) in self._leases.items() if c == client]
            if sample_id is None:
                sample_id = held[0] if held else self._next_open(client)
                if sample_id is None:
                    return None
            else:
                self._check_open(self.datastore.check(sample_id), client, now)
            for s in held:
                if s != sample_id:
                    del self._leases[s]
            self._leases[sample_id] = (client, now + self.lease_seconds)
            return self._view(sample_id, client, now)

    def release(self, client: str, sample_id: str) -> None:
        """``client`` hands the item back (skip): it goes to the end of that client's order."""
        with self._lock:
            self.datastore.check(sample_id)
            holder = self._leases.get(sample_id)
            if holder is not None and holder[0] == client:
                del self._leases[sample_id]
            skipped = self._skipped.setdefault(client, [])
            if sample_id in skipped:
                skipped.remove(sample_id)
            skipped.append(sample_id)

    def answer(self, sample_id: str, mask: np.ndarray, label: int | None, client: str) -> tuple[dict, bool]:
        """Store ``client``'s answer durably, then return ``(record, True)``; the same answer sent again returns
        ``(the first record, False)``. A different answer for a labeled image, an image nobody asked about, or
        one leased to another annotator is refused (409)."""
        digest = label_digest(mask, label)
        with self._lock:
            now = self._expire()
            earlier = self.datastore.answer(self.datastore.check(sample_id))
            if earlier is not None:
                self._queue.pop(sample_id, None)
                self._leases.pop(sample_id, None)
                if earlier["digest"] == digest:
                    return earlier, False
                raise RequestError(f"image '{sample_id}' already has a final label (from "
                                   f"{earlier['info'].get('client_id') or 'an annotator'}); acknowledged labels are "
                                   "final and are not replaced", 409)
            self._check_open(sample_id, client, now)
            meta = self._queue[sample_id]
            record = self.datastore.record_final(sample_id, mask, label, {"client_id": client, "round": meta["round"]})
            del self._queue[sample_id]
            self._leases.pop(sample_id, None)
            return record, True

    def queue(self, client: str | None = None) -> list[dict]:
        """The open items in the strategy's order, with who holds each."""
        with self._lock:
            now = self._expire()
            return [self._view(s, client, now) for s in self._queue]

    def _check_open(self, sample_id: str, client: str, now: float) -> None:
        if sample_id not in self._queue:
            if self.datastore.answer(sample_id) is not None:
                raise RequestError(f"image '{sample_id}' is already labeled", 409)
            raise RequestError(f"image '{sample_id}' is not in the annotation queue (the model has not asked for it); "
                               "get the next image with POST /activelearning/<strategy>", 409)
        holder = self._leases.get(sample_id)
        if holder is not None and holder[0] != client:
            raise RequestError(f"image '{sample_id}' is being labeled by another annotator for {holder[1] - now:.0f} "
                               "more seconds; take another image", 409)

    def _next_open(self, client: str) -> str | None:
        skipped = self._skipped.get(client, [])
        free = [s for s in self._queue if s not in self._leases]
        first = [s for s in free if s not in skipped]
        if first:
            return first[0]
        later = [s for s in skipped if s in self._queue and s not in self._leases]
        return later[0] if later else None

    def _expire(self) -> float:
        now = self._clock()
        for s in [s for s, (_, until) in self._leases.items() if until <= now]:
            del self._leases[s]
        return now

    def _view(self, sample_id: str, client: str | None, now: float) -> dict:
        meta = self._queue[sample_id]
        holder = self._leases.get(sample_id)
        return {"id": sample_id, "round": meta.get("round"), "rank": meta.get("rank"), "score": meta.get("score"),
                "leased_by": holder[0] if holder else None, "yours": bool(holder) and holder[0] == client,
                "lease_seconds_left": round(holder[1] - now, 1) if holder else None}
