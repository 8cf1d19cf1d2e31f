"""A human oracle: the loop's queries become a queue that annotators work through in the annotation server.

``submit(ids)`` (the loop's thread) asks the runner for the model's proposals, appends the batch to
``queue.jsonl`` and returns at once; annotators lease an item (one annotator per item until the lease expires),
and their answer is stored durably in the datastore before the server acknowledges it; ``poll()`` hands each
answer to the loop once.

With ``reads_per_image`` R > 1 each image goes to R different annotators (up to R leases at once, never twice to
the same one); each read is stored durably before it is acknowledged, and the R-th read makes the consensus
(``serve.consensus``) with its agreement (``report.agreement``): that is the image's answer, the one the loop
trains on. A kill between the last read and the consensus loses nothing: the consensus is made on the next start. Everything an annotator can lose is on disk: after a kill, the persisted queue is open
again at once (leases are not kept: they only coordinate), acknowledged answers are served to the loop when it
asks again, and an answer sent twice is recognised and not stored twice.

Reviews: the runner offers the pseudo-labels the method's quality control flags (``offer_review``); an
annotator's correction of one (an image outside the queue) is stored durably as its final label, marked
``info.review``, before it is acknowledged, from one annotator whatever the reads per image, with no lease (the
first correction stored is final). ``reviewed()`` hands the corrected ids to the loop, which asks for them before
its next ranking (``loop.state.RunState.take_reviews``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medloop.errors import ConfigError, DataError
from medloop.loop.oracle import Answer, Oracle
from medloop.serve.consensus import consensus
from medloop.serve.datastore import Datastore, RequestError, label_digest
from medloop.storage import append_jsonl, read_jsonl

__all__ = ["Batch", "HumanOracle", "check_reads_per_image"]

log = logging.getLogger(__name__)


def check_reads_per_image(value: object) -> int:
    """``value`` if it is a valid number of reads per image (an integer >= 1), else a ConfigError saying so."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"The 'reads_per_image' setting (medloop serve --reads-per-image) must be an integer >= 1, "
                          f"the number of different annotators who label each image; got {value!r}: use 1 for one "
                          "annotator per image, 2 or more for several readers and their consensus")
    return value


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
        reads_per_image: how many different annotators label each image (their consensus is the answer).
        labels: structure name -> label value, for the agreement of several reads (``None``: the values the
            reads hold, named by their number).
    """

    def __init__(self, datastore: Datastore, lease_seconds: float = 300.0,
                 prepare: Callable[[list[str]], Batch] | None = None, clock: Callable[[], float] = time.monotonic,
                 reads_per_image: int = 1, labels: dict[str, int] | None = None):
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0; got {lease_seconds}")
        self.datastore, self.lease_seconds, self.prepare, self._clock = datastore, lease_seconds, prepare, clock
        self.reads_per_image = check_reads_per_image(reads_per_image)
        self.labels = labels
        self._lock = threading.Lock()
        self._queue: dict[str, dict] = {}  # unanswered id -> {round, rank, score}, in the order asked
        self._wanted: set[str] = set()  # asked by the loop in this process, not yet polled
        self._leases: dict[str, dict[str, float]] = {}  # id -> {client: expiry}
        self._skipped: dict[str, list[str]] = {}  # client -> ids it skipped, oldest first
        self._review: dict[str, dict] = {}  # flagged pseudo-label id -> {predicted_dice, threshold, round}, in order
        for line in read_jsonl(self.queue_path):
            for rank, sid in enumerate(line["ids"]):
                if sid in datastore and datastore.answer(sid) is None:
                    self._queue.pop(sid, None)
                    self._queue[sid] = {"round": line.get("round"), "rank": rank, "score": line["scores"].get(sid)}
        for sid in list(self._queue):  # all reads in, but a kill came before their consensus was stored
            reads = datastore.reads(sid)
            if self.reads_per_image > 1 and len(reads) >= self.reads_per_image:
                self._settle(sid, reads)
                del self._queue[sid]
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
            if self._restored and new:  # (a batch of reviewed ids only is answered: nothing to queue)
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

    def reviewed(self) -> list[str]:
        """Ids whose final label is an annotator's correction of a flagged pseudo-label, in the order stored."""
        return [s for s, rec in self.datastore.answers.items() if rec["info"].get("review")]

    def offer_review(self, items: dict[str, dict]) -> None:
        """The pseudo-labels open for review now: id -> ``{predicted_dice, threshold, round}``, in the order
        shown (replaces the earlier offer; ``{}``: none)."""
        with self._lock:
            self._review = dict(items)

    # ------------------------------------------------------------------------------------- the annotators' side

    def lease(self, client: str, sample_id: str | None = None) -> dict | None:
        """Give ``client`` an item: ``sample_id``, or the one it holds, or the first open one in the strategy's
        order (items it skipped last); ``None`` when nothing is open. One item per client at a time."""
        with self._lock:
            now = self._expire()
            held = [s for s, holders in self._leases.items() if client in holders]
            if sample_id is None:
                sample_id = held[0] if held else self._next_open(client)
                if sample_id is None:
                    return None
            else:
                self._check_open(self.datastore.check(sample_id), client, now)
            for s in held:
                if s != sample_id:
                    self._drop_lease(s, client)
            self._leases.setdefault(sample_id, {})[client] = now + self.lease_seconds
            return self._view(sample_id, client, now)

    def release(self, client: str, sample_id: str) -> None:
        """``client`` hands the item back (skip): it goes to the end of that client's order."""
        with self._lock:
            self.datastore.check(sample_id)
            self._drop_lease(sample_id, client)
            skipped = self._skipped.setdefault(client, [])
            if sample_id in skipped:
                skipped.remove(sample_id)
            skipped.append(sample_id)

    def answer(self, sample_id: str, mask: np.ndarray, label: int | None, client: str) -> tuple[dict, bool]:
        """Store ``client``'s answer (its read, with several readers per image) durably, then return
        ``(record, True)``; the same answer sent again returns ``(the first record, False)``. A different answer
        for a labeled image (or one this client has read), an image nobody asked about, or one leased to other
        annotators is refused (409)."""
        digest = label_digest(mask, label)
        with self._lock:
            now = self._expire()
            if self.datastore.check(sample_id) not in self._queue and (
                    sample_id in self._review or _is_review(self.datastore.answer(sample_id))):
                return self._review_answer(sample_id, mask, label, client, digest)
            earlier = self._earlier(sample_id, client)
            if earlier is not None:
                if earlier["digest"] == digest:
                    return earlier, False
                raise RequestError(self._refusal(sample_id, client), 409)
            if self.datastore.answer(sample_id) is not None:
                raise RequestError(self._refusal(sample_id, client), 409)
            self._check_open(sample_id, client, now)
            info = {"client_id": client, "round": self._queue[sample_id]["round"]}
            if self.reads_per_image == 1:
                record = self.datastore.record_final(sample_id, mask, label, info)
            else:
                record = self.datastore.record_read(sample_id, mask, label, client, {"round": info["round"]})
                reads = self.datastore.reads(sample_id)
                if len(reads) < self.reads_per_image:
                    self._drop_lease(sample_id, client)
                    return record, True
                self._settle(sample_id, reads)
            self._queue.pop(sample_id, None)
            self._leases.pop(sample_id, None)
            return record, True

    def reviews(self) -> list[dict]:
        """The flagged pseudo-labels on offer, in order, without those the loop has queued since (they are in the
        queue) or that were labeled there; ``reviewed``: a correction is stored."""
        with self._lock:
            out = []
            for sid, meta in self._review.items():
                answer = self.datastore.answer(sid)
                if sid not in self._queue and (answer is None or _is_review(answer)):
                    out.append({"id": sid, **meta, "reviewed": answer is not None})
            return out

    def reads_of(self, sample_id: str) -> int:
        """How many reads of an image are in: all of them once it has its answer, else those acknowledged."""
        if self.datastore.answer(sample_id) is not None:
            return self.reads_per_image
        return len(self.datastore.reads(sample_id)) if self.reads_per_image > 1 else 0

    def queue(self, client: str | None = None) -> list[dict]:
        """The open items in the strategy's order, with who holds each and (several readers) its reads."""
        with self._lock:
            now = self._expire()
            return [self._view(s, client, now) for s in self._queue]

    # ------------------------------------------------------------------------------------------------ inside

    def _review_answer(self, sample_id: str, mask: np.ndarray, label: int | None, client: str,
                       digest: str) -> tuple[dict, bool]:
        """Store a correction of a flagged pseudo-label (see the module docstring); the same one sent again
        returns ``(the first record, False)``, another one for an image with a final label is refused (409)."""
        earlier = self.datastore.answer(sample_id)
        if earlier is not None:
            if earlier["digest"] == digest:
                return earlier, False
            who = earlier["info"].get("client_id") or "annotators"
            raise RequestError(f"image '{sample_id}' already has a final label (from {who}); acknowledged labels are "
                               "final and are not replaced", 409)
        return self.datastore.record_final(sample_id, mask, label,
                                           {"client_id": client, "review": dict(self._review[sample_id])}), True

    def _earlier(self, sample_id: str, client: str) -> dict | None:
        """What ``client`` sending ``sample_id``'s label again would repeat: the image's answer (one reader per
        image: whoever sent it), or this client's read."""
        if self.reads_per_image == 1:
            return self.datastore.answer(sample_id)
        return next((r for r in self.datastore.reads(sample_id) if r["client_id"] == client), None)

    def _refusal(self, sample_id: str, client: str) -> str:
        final = self.datastore.answer(sample_id)
        if self.reads_per_image == 1:
            who = final["info"].get("client_id") or "an annotator"
            return f"image '{sample_id}' already has a final label (from {who}); acknowledged labels are final and " \
                   "are not replaced"
        if final is None or any(r["client_id"] == client for r in final["info"]["reads"]):
            return (f"you ('{client}') have already labeled image '{sample_id}'; a read is final and each of the "
                    f"{self.reads_per_image} reads of an image comes from another annotator")
        return (f"image '{sample_id}' already has its {self.reads_per_image} reads (from "
                f"{', '.join(r['client_id'] for r in final['info']['reads'])}); take another image")

    def _settle(self, sample_id: str, reads: list[dict]) -> dict:
        """Store the consensus of an image's reads, with their agreement, as its answer."""
        from medloop.report.agreement import image_agreement

        reads = reads[:self.reads_per_image]
        masks = [self.datastore.read_label(r) for r in reads]
        classes = [r["class"] for r in reads]
        mask, label = consensus(masks, classes)
        labels = self.labels or {str(v): v for v in np.unique(np.stack(masks)).tolist() if v != 0}
        agreement = image_agreement([r["client_id"] for r in reads], masks, classes, labels)
        return self.datastore.record_final(sample_id, mask, label, {
            "round": reads[-1].get("round"), "consensus": "majority", "agreement": agreement,
            "reads": [{"client_id": r["client_id"], "class": r["class"], "file": r["file"]} for r in reads]})

    def _check_open(self, sample_id: str, client: str, now: float) -> None:
        if sample_id not in self._queue:
            if self.datastore.answer(sample_id) is not None:
                raise RequestError(f"image '{sample_id}' is already labeled", 409)
            raise RequestError(f"image '{sample_id}' is not in the annotation queue (the model has not asked for it); "
                               "get the next image with POST /activelearning/<strategy>", 409)
        if self._read_by(sample_id, client):
            raise RequestError(f"you ('{client}') have already labeled image '{sample_id}'; its other reads must come "
                               "from other annotators: take another image", 409)
        holders = self._leases.get(sample_id, {})
        others = {c: until for c, until in holders.items() if c != client}
        if client not in holders and self._reads_left(sample_id) - len(others) <= 0:
            who = "another annotator" if len(others) == 1 else f"{len(others)} other annotators"
            until = max(others.values(), default=now)
            raise RequestError(f"image '{sample_id}' is being labeled by {who} for {until - now:.0f} more seconds; "
                               "take another image", 409)

    def _read_by(self, sample_id: str, client: str) -> bool:
        return self.reads_per_image > 1 and any(r["client_id"] == client for r in self.datastore.reads(sample_id))

    def _reads_left(self, sample_id: str) -> int:
        done = len(self.datastore.reads(sample_id)) if self.reads_per_image > 1 else 0
        return self.reads_per_image - done

    def _is_open(self, sample_id: str, client: str) -> bool:
        """Whether ``client`` could take ``sample_id`` now (it has not read it and a read is left unleased)."""
        holders = self._leases.get(sample_id, {})
        if client in holders:
            return True
        return not self._read_by(sample_id, client) and self._reads_left(sample_id) > len(holders)

    def _next_open(self, client: str) -> str | None:
        skipped = self._skipped.get(client, [])
        free = [s for s in self._queue if self._is_open(s, client)]
        first = [s for s in free if s not in skipped]
        if first:
            return first[0]
        later = [s for s in skipped if s in self._queue and self._is_open(s, client)]
        return later[0] if later else None

    def _drop_lease(self, sample_id: str, client: str) -> None:
        holders = self._leases.get(sample_id, {})
        holders.pop(client, None)
        if not holders:
            self._leases.pop(sample_id, None)

    def _expire(self) -> float:
        now = self._clock()
        for s, holders in list(self._leases.items()):
            for c in [c for c, until in holders.items() if until <= now]:
                self._drop_lease(s, c)
        return now

    def _view(self, sample_id: str, client: str | None, now: float) -> dict:
        meta = self._queue[sample_id]
        holders = self._leases.get(sample_id, {})
        others = [c for c in holders if c != client]
        mine = client is not None and client in holders
        view = {"id": sample_id, "round": meta.get("round"), "rank": meta.get("rank"), "score": meta.get("score"),
                "leased_by": client if mine else (others[0] if others else None), "yours": mine,
                "lease_seconds_left": round(holders[client if mine else others[0]] - now, 1) if holders else None,
                "open": client is not None and self._is_open(sample_id, client)}
        if self.reads_per_image > 1:
            view.update(reads=self.reads_per_image - self._reads_left(sample_id), reads_per_image=self.reads_per_image,
                        read_by_you=client is not None and self._read_by(sample_id, client), readers=sorted(holders))
        return view


def _is_review(answer: dict | None) -> bool:
    return answer is not None and bool(answer["info"].get("review"))
