"""The run state of one track (one strategy, one seed or fold): who is labeled, pseudo-labeled, what the oracle
answered, which synthetic samples joined, and the round records; saved and restored as one.

Folder layout::

    answers/               every oracle answer, persisted (fsynced) before the loop sees it (``AnswerLog``)
    rounds.jsonl           one line per completed round (torn-tail safe)
    models/round_NNN.pt    the model after round NNN (the last two are kept)
    pseudo/round_NNN.npz   pseudo-labels given after round NNN (collaborative segmentation)
    synthetic/round_NNN.pt synthetic samples that joined the training set in round NNN (generative AL)
    done.json              the track finished

An expert's corrections of pseudo-labels (``Oracle.reviewed``) join the labeled set before a round ranks the
pool; the round's record lists them (``reviewed``) beside its queries (``queried``).

A round is recorded only after its answers, pseudo-labels, synthetic samples and model are on disk, so a
resumed track replays the records (answers come from the log, never asked twice) and redoes the round that
was in progress at the kill with the same random streams.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.data import Sample
from medloop.loop.oracle import Answer, AnswerLog, Oracle, PersistentOracle, collect
from medloop.storage import append_jsonl, read_jsonl, save_npz, save_torch, write_json

__all__ = ["RunState"]


class RunState:
    """Labeled ids (acquisition order), expert answers, pseudo-labels, synthetic samples and round records.

    Args:
        folder: the track's folder.
        oracle: who answers queries; wrapped so every answer is persisted before it is used.
        timeout: seconds to wait for the oracle per query batch (``None``: forever).
    """

    def __init__(self, folder: str | Path, oracle: Oracle, timeout: float | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.oracle = PersistentOracle(oracle, AnswerLog(self.folder / "answers"))
        self.timeout = timeout
        self.labeled: list[str] = []
        self.answers: dict[str, Answer] = {}
        self.pseudo: dict[str, np.ndarray] = {}
        self.synthetic: list[Sample] = []
        self.records: list[dict] = read_jsonl(self.rounds_path)

    @property
    def rounds_path(self) -> Path:
        return self.folder / "rounds.jsonl"

    @property
    def done(self) -> bool:
        return (self.folder / "done.json").exists()

    @property
    def next_round(self) -> int:
        return len(self.records)

    def restore(self, initial: list[str]) -> "RunState":
        """Ask for the initial set, then replay the completed rounds (answers from the log, never asked again)."""
        self.ask(initial)
        for rec in self.records:
            self.ask(rec.get("reviewed", []))  # in the order they joined: reviews before the round's ranking
            self.ask(rec["queried"])
            path = self._path("synthetic", rec["round"], ".pt")
            if path.exists():
                self.synthetic += _load_synthetic(path, self.answers)
        with_pseudo = [r["round"] for r in self.records if self._path("pseudo", r["round"], ".npz").exists()]
        if with_pseudo:
            saved = np.load(self._path("pseudo", with_pseudo[-1], ".npz"))
            self.pseudo = {str(s): saved["labels"][j] for j, s in enumerate(saved["ids"])}
        return self

    def ask(self, sample_ids: list[str]) -> dict[str, Answer]:
        """Query the oracle (persisted before return); the answered ids join the labeled set, leaving the
        pseudo-labeled one."""
        if not sample_ids:
            return {}
        answers = collect(self.oracle, list(sample_ids), self.timeout)
        self.answers.update(answers)
        known = set(self.labeled)
        self.labeled += [s for s in sample_ids if s not in known]
        for s in sample_ids:
            self.pseudo.pop(s, None)  # an expert label replaces a pseudo-label
        return answers

    def take_reviews(self) -> list[str]:
        """The expert's corrections of pseudo-labels (``Oracle.reviewed``) not labeled yet: asked for like a
        query (persisted in the answer log), they join the labeled set in place of their pseudo-labels. Returns
        their ids (the round record lists them, so a resumed track replays them)."""
        labeled = set(self.labeled)
        ids = [s for s in dict.fromkeys(self.oracle.reviewed()) if s not in labeled]
        self.ask(ids)
        return ids

    def add_synthetic(self, round_idx: int, samples: list[Sample]) -> None:
        if samples:
            _save_synthetic(self._path("synthetic", round_idx, ".pt"), samples)
            self.synthetic += samples

    def set_pseudo(self, round_idx: int, pseudo: dict[str, np.ndarray] | None) -> None:
        if pseudo is None:
            return
        ids = sorted(pseudo)
        save_npz(self._path("pseudo", round_idx, ".npz"), ids=np.array(ids, dtype=str),
                 labels=np.stack([pseudo[s] for s in ids]) if ids else np.zeros((0, 1, 1), dtype=np.int64))
        self.pseudo = dict(pseudo)

    def save_model(self, round_idx: int, state: dict[str, Any], keep: int = 2) -> None:
        save_torch(self._path("models", round_idx, ".pt"), state)
        for old in range(round_idx - keep, -1, -1):
            path = self._path("models", old, ".pt")
            if not path.exists():
                break
            path.unlink()

    def load_model(self, round_idx: int) -> dict[str, Any]:
        return torch.load(self._path("models", round_idx, ".pt"), weights_only=True)

    def record(self, record: dict) -> None:
        append_jsonl(self.rounds_path, record)
        self.records.append(record)

    def finish(self) -> list[dict]:
        write_json(self.folder / "done.json", {"rounds": len(self.records),
                                               "stop": self.records[-1]["stop"] if self.records else None})
        return self.records

    def _path(self, kind: str, round_idx: int, suffix: str) -> Path:
        return self.folder / kind / f"round_{round_idx:03d}{suffix}"


def _save_synthetic(path: Path, samples: list[Sample]) -> None:
    save_torch(path, {"images": torch.stack([s.image for s in samples]),
                      "masks": torch.stack([s.mask for s in samples]),
                      "ids": [s.sample_id for s in samples], "sources": [s.meta["source_sample"] for s in samples],
                      "case_ids": [s.case_id for s in samples],
                      "scores": [float(s.meta.get("score", 0.0)) for s in samples],
                      "ops": [json.dumps(s.meta.get("ops", [])) for s in samples]})


def _load_synthetic(path: Path, answers: dict[str, Answer]) -> list[Sample]:
    d = torch.load(path, weights_only=True)
    return [Sample(d["images"][i], d["masks"][i], answers[d["sources"][i]].label, d["case_ids"][i], d["ids"][i],
                   "synthetic", meta={"source_sample": d["sources"][i], "score": d["scores"][i],
                                      "ops": json.loads(d["ops"][i])})
            for i in range(len(d["ids"]))]
