"""Oracles: who answers label queries. The loop submits ids, then collects answers, possibly waiting.

``GroundTruthOracle`` reveals what the dataset stores (simulation) and counts the cost. ``AnswerLog`` keeps
every answer on disk (appended and fsynced before it is handed to the loop), and ``PersistentOracle`` puts
the two together: ids already answered are never asked again, so a killed run resumes without losing or
repeating an expert's work. A human-backed oracle (e.g. an annotation server) implements ``submit`` and
``poll`` the same way; ``collect`` waits for it.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from medloop.errors import DataError, MedloopError
from medloop.storage import append_jsonl, atomic_write, read_jsonl

__all__ = ["Answer", "Oracle", "GroundTruthOracle", "AnswerLog", "PersistentOracle", "collect", "OracleTimeout"]


class OracleTimeout(MedloopError):
    """Raised when an oracle has not answered every query in the allowed time."""


@dataclasses.dataclass
class Answer:
    """An expert's answer: image label and/or mask; ``pixels`` = annotated (foreground) pixels of the mask."""

    sample_id: str
    label: int | None
    mask: np.ndarray | None = None

    @property
    def pixels(self) -> int:
        return int((self.mask > 0).sum()) if self.mask is not None else 0


class Oracle(ABC):
    """Answers label queries. ``submit`` may return before answers exist; ``poll`` returns what is ready."""

    @abstractmethod
    def submit(self, sample_ids: list[str]) -> None:
        """Ask for labels of ``sample_ids`` (non-blocking is allowed)."""

    @abstractmethod
    def poll(self) -> dict[str, Answer]:
        """Answers available now (each answer is returned once)."""

    def reviewed(self) -> list[str]:
        """Ids the oracle holds answers for that the loop did not ask about: an expert's corrections of
        pseudo-labels (the annotation server's review list). Asked for before each ranking
        (``RunState.take_reviews``), they are answered at once. Default: none."""
        return []


def collect(oracle: Oracle, sample_ids: list[str], timeout: float | None = None, interval: float = 1.0) -> dict[str, Answer]:
    """Submit ``sample_ids`` and wait until every one is answered (or ``timeout`` seconds pass)."""
    oracle.submit(list(sample_ids))
    wanted, got = set(sample_ids), {}
    start = time.monotonic()
    while True:
        got.update({k: v for k, v in oracle.poll().items() if k in wanted})
        if wanted <= set(got):
            return {s: got[s] for s in sample_ids}
        if timeout is not None and time.monotonic() - start > timeout:
            missing = sorted(wanted - set(got))
            raise OracleTimeout(f"the oracle answered {len(got)} of {len(wanted)} queries in {timeout:.0f} s; "
                                f"waiting for {missing[:5]}{' ...' if len(missing) > 5 else ''}. Resume the run to keep waiting")
        time.sleep(interval)


class GroundTruthOracle(Oracle):
    """Simulation: reveals the label and mask the dataset stores. ``asked`` lists every id it was asked for."""

    def __init__(self, lookup: dict[str, tuple[int | None, np.ndarray | None]], with_masks: bool = True):
        self._lookup = lookup
        self.with_masks = with_masks
        self.asked: list[str] = []
        self._ready: dict[str, Answer] = {}

    @classmethod
    def from_dataset(cls, dataset, with_masks: bool = True) -> "GroundTruthOracle":
        def entry(i: int):
            s = dataset[i]
            return s.label, (s.mask.numpy() if s.mask is not None else None)

        ids = dataset.sample_ids
        return cls(_LazyLookup(ids, entry), with_masks)

    def submit(self, sample_ids: list[str]) -> None:
        for sid in sample_ids:
            if sid not in self._lookup:
                raise KeyError(f"the oracle knows no sample '{sid}'")
            self.asked.append(sid)
            label, mask = self._lookup[sid]
            self._ready[sid] = Answer(sid, label, mask if self.with_masks else None)

    def poll(self) -> dict[str, Answer]:
        ready, self._ready = self._ready, {}
        return ready


class _LazyLookup(dict):
    """id -> (label, mask), read from the dataset only when asked."""

    def __init__(self, ids: list[str], entry):
        super().__init__()
        self._pos = {s: i for i, s in enumerate(ids)}
        self._entry = entry

    def __contains__(self, key: object) -> bool:
        return key in self._pos

    def __getitem__(self, key: str):
        return self._entry(self._pos[key])


class AnswerLog:
    """Answers on disk: ``answers.jsonl`` (one line per answer, fsynced) and ``masks/<n>.npy`` (written atomically
    before the line that names it). A line torn by a kill is skipped on reopen and cut off before the next
    answer is appended, so it never swallows an acknowledged answer."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "masks").mkdir(exist_ok=True)
        self.path = self.folder / "answers.jsonl"
        self._answers: dict[str, Answer] = {}
        for rec in read_jsonl(self.path):  # a line torn by a kill was never acknowledged: read_jsonl skips it
            mask = None
            if rec.get("mask"):
                try:
                    mask = np.load(self.folder / rec["mask"])
                except (OSError, ValueError) as exc:
                    raise DataError(f"{self.folder / rec['mask']}: the mask of answer '{rec['sample_id']}' cannot be "
                                    f"read ({exc}); restore the file from a copy") from None
            self._answers[rec["sample_id"]] = Answer(rec["sample_id"], rec["label"], mask)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._answers

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, sample_id: str) -> Answer:
        return self._answers[sample_id]

    def record(self, answer: Answer) -> None:
        """Write the answer durably (mask first, then the line, fsynced); only then is it acknowledged."""
        mask_file = None
        if answer.mask is not None:
            mask_file = f"masks/{len(self._answers):06d}.npy"
            mask = np.asarray(answer.mask)
            atomic_write(self.folder / mask_file, lambda fh: np.save(fh, mask))
        append_jsonl(self.path, {"sample_id": answer.sample_id, "label": answer.label, "mask": mask_file})
        self._answers[answer.sample_id] = answer


class PersistentOracle(Oracle):
    """An oracle behind an ``AnswerLog``: logged answers are served from disk, only new ids are asked."""

    def __init__(self, inner: Oracle, log: AnswerLog):
        self.inner, self.log = inner, log
        self._pending: set[str] = set()

    def submit(self, sample_ids: list[str]) -> None:
        new = [s for s in sample_ids if s not in self.log and s not in self._pending]
        self._pending |= set(sample_ids)
        if new:
            self.inner.submit(new)

    def poll(self) -> dict[str, Answer]:
        for sid, answer in self.inner.poll().items():
            self.log.record(answer)  # persist before acknowledging
        ready = {s: self.log.get(s) for s in self._pending if s in self.log}
        self._pending -= set(ready)
        return ready

    def reviewed(self) -> list[str]:
        return self.inner.reviewed()
