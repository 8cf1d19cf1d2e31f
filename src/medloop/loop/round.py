"""The active-learning loop both methods run: train -> evaluate -> stop? -> candidates -> inputs -> select ->
ask -> pseudo-label -> record.

A ``Method`` says how: which model it trains (classifier + segmenter, or pix2pix), which inputs it can compute
for a strategy (MC uncertainty, discriminator scores, synthetic candidates), how many to query, when to stop and
whether it pseudo-labels the rest. Generative active learning (Mahapatra et al. 2018, ``loop.mahapatra``) and
collaborative segmentation (Ravanbakhsh et al., ``loop.ravanbakhsh``) are two methods of this one loop.

Every random draw of round ``r`` comes from named streams of ``(seed, r)`` and round ``r`` starts from the state
recorded after round ``r - 1``, so a resumed track reaches exactly the results of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from medloop.data import MedDataset, Sample
from medloop.loop.oracle import Answer
from medloop.loop.state import RunState
from medloop.query import QueryStrategy
from medloop.seeding import stream

__all__ = ["Method", "Candidates", "QuerySize", "Proposal", "run_track", "Interrupt"]


class Interrupt(Exception):
    """Raised by a test hook to simulate a kill at a named point of a round."""


@dataclasses.dataclass
class QuerySize:
    """How many to select (``k``; ``per_class`` per predicted class for class-balanced strategies) and how many
    distinct images may be asked for (``cap``, what is left of the budget)."""

    k: int
    cap: int
    per_class: int | None = None


@dataclasses.dataclass
class Candidates:
    """What a strategy ranks: images of the pool, or synthetic variants of pool images.

    ``sources[i]`` is the pool id the oracle is asked about for candidate ``i``; with ``join`` the selected
    candidates themselves join the training set with their source's answer (synthetic variants). ``features``
    holds the candidates' trunk features ``[N, F]`` when a method computed them once (a frozen trunk).
    """

    dataset: MedDataset
    sources: list[str]
    join: bool = False
    labeled: dict[str, int] = dataclasses.field(default_factory=dict)  # pool id -> answered label, labeled so far
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def queries(self, chosen: np.ndarray, scores: np.ndarray, cap: int) -> tuple[list[str], list[float], list[int]]:
        """(ids to ask, each one's best score, the candidates kept): distinct sources in selection order, at most
        ``cap`` of them; a candidate is kept when its source is asked."""
        asked: dict[str, float] = {}
        kept = []
        for j in (int(j) for j in chosen):
            src = self.sources[j]
            if src not in asked:
                if len(asked) >= cap:
                    continue
                asked[src] = float(scores[j])
            asked[src] = max(asked[src], float(scores[j]))
            kept.append(j)
        return list(asked), list(asked.values()), kept

    def joining(self, kept: list[int], scores: np.ndarray, answers: dict[str, Answer]) -> list[Sample]:
        """The kept candidates that join the training set, labeled with their source's answer."""
        if not self.join:
            return []
        out = []
        for j in kept:
            s = self.dataset[j]
            out.append(dataclasses.replace(s, label=answers[self.sources[j]].label,
                                           meta={**s.meta, "score": float(scores[j])}))
        return out


@dataclasses.dataclass
class Proposal:
    """What the model shows an annotator for one image; each part may be ``None``.

    Shape:
        mask: ``[H, W]`` label map; probs: ``[K]`` image-class probabilities; uncertainty: ``[H, W]`` in [0, 1]
        (higher = less sure).
    """

    mask: np.ndarray | None = None
    probs: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


class Method(ABC):
    """One configuration of the loop for one track (see the module docstring)."""

    provides: frozenset[str] = frozenset()

    @abstractmethod
    def initial_ids(self) -> list[str]:
        """The ids labeled before round 0 (asked from the oracle, and charged, like every query)."""

    @abstractmethod
    def restore(self, state: RunState) -> Any:
        """The model saved after the last recorded round (``None`` before round 0)."""

    @abstractmethod
    def train(self, state: RunState, model: Any, round_idx: int) -> Any:
        """Train (or continue training) on the labeled, synthetic and pseudo-labeled samples."""

    @abstractmethod
    def evaluate(self, state: RunState, model: Any, round_idx: int) -> dict:
        """The round record's metrics and counts."""

    @abstractmethod
    def stop(self, state: RunState, round_idx: int, record: dict) -> str | None:
        """Why the loop stops after this round, or ``None``."""

    @abstractmethod
    def query_size(self, state: RunState, round_idx: int) -> QuerySize: ...

    @abstractmethod
    def candidates(self, strategy: QueryStrategy, state: RunState, model: Any, round_idx: int,
                   rng: np.random.Generator) -> Candidates: ...

    @abstractmethod
    def inputs(self, needs: frozenset[str], model: Any, candidates: Candidates, round_idx: int) -> dict[str, np.ndarray]:
        """Only the inputs the strategy needs, per candidate, plus ``index``."""

    def pseudo_labels(self, state: RunState, model: Any) -> dict[str, np.ndarray] | None:
        """Label maps the model gives the rest of the pool (``None``: this method does not pseudo-label)."""
        return None

    def after_query(self, state: RunState, round_idx: int, candidates: Candidates, scores: np.ndarray) -> None:
        """Optional: write what a report shows about the query (e.g. a gallery of candidates)."""

    def proposals(self, model: Any, sample_ids: list[str]) -> dict[str, Proposal]:
        """Optional: the model's proposal for each pool image an annotator is asked about (``{}``: none)."""
        return {}

    @abstractmethod
    def save(self, state: RunState, model: Any, round_idx: int) -> None: ...


def run_track(method: Method, strategy: QueryStrategy, state: RunState, seed: int,
              interrupt: Callable[[str, int], None] | None = None) -> list[dict]:
    """Run (or resume) one track; returns its round records. ``interrupt(point, round_idx)`` is a test hook."""
    if state.done:
        return state.records
    hook = interrupt or (lambda point, round_idx: None)
    state.restore(method.initial_ids())
    model = method.restore(state)
    round_idx = state.next_round
    while True:
        t0 = time.time()
        model = method.train(state, model, round_idx)
        record = {"round": round_idx, **method.evaluate(state, model, round_idx)}
        hook("trained", round_idx)
        record["stop"] = method.stop(state, round_idx, record)
        record.update(queried=[], query_scores=[], n_candidates=0)
        if record["stop"] is None:
            record.update(_query(method, strategy, state, model, seed, round_idx, hook))
        method.save(state, model, round_idx)
        state.record({**record, "seconds": round(time.time() - t0, 2)})
        hook("recorded", round_idx)
        if record["stop"] is not None:
            return state.finish()
        round_idx += 1


def _query(method: Method, strategy: QueryStrategy, state: RunState, model: Any, seed: int, round_idx: int,
           hook: Callable[[str, int], None]) -> dict:
    """Candidates -> the inputs the strategy needs -> selection -> the oracle's answers -> pseudo-labels."""
    rng = stream(seed, "round", round_idx, "query")
    candidates = method.candidates(strategy, state, model, round_idx, rng)
    inputs = method.inputs(strategy.needs, model, candidates, round_idx)
    size = method.query_size(state, round_idx)
    chosen, scores = strategy.select(inputs, size.k, rng, size.per_class)
    ids, id_scores, kept = candidates.queries(chosen, scores, size.cap)
    hook("selected", round_idx)
    answers = state.ask(ids)
    hook("answered", round_idx)
    state.add_synthetic(round_idx, candidates.joining(kept, scores, answers))
    method.after_query(state, round_idx, candidates, scores)
    state.set_pseudo(round_idx, method.pseudo_labels(state, model))
    return {"queried": ids, "query_scores": id_scores, "n_candidates": len(candidates)}
