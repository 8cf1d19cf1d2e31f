"""The active-learning loop both methods run: train -> evaluate -> stop? -> candidates -> inputs -> select ->
ask -> pseudo-label -> record.

A ``Method`` says how: which model it trains (classifier + segmenter, or pix2pix), which inputs it can compute
for a strategy (MC uncertainty, discriminator scores, synthetic candidates), how many to query, when to stop and
whether it pseudo-labels the rest. The methods are plug-ins (``medloop.methods``: generative active learning,
Mahapatra et al. 2018; collaborative segmentation, Ravanbakhsh et al.); the loop knows none of them by name.

The loop reports what happens to its observers (``Event``): the server follows a served track this way, and tests
stop a round at a named point (``Interrupt``).

Every random draw of round ``r`` comes from named streams of ``(seed, r)`` and round ``r`` starts from the state
recorded after round ``r - 1``, so a resumed track reaches exactly the results of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medloop.data import MedDataset, Sample
from medloop.loop.oracle import Answer
from medloop.loop.state import RunState
from medloop.query import QueryStrategy
from medloop.seeding import stream

__all__ = ["Method", "Candidates", "QuerySize", "Proposal", "ReviewItem", "run_track", "Event", "Observer",
           "Interrupt"]


class Interrupt(Exception):
    """Raised by an observer (a test) to simulate a kill at an event of a round."""


@dataclasses.dataclass(frozen=True)
class Event:
    """What the loop reports to its observers, in this order each round:

    - ``restored`` (once, when a track resumes): ``model``, the one saved after round ``round_idx``;
    - ``phase``: ``phase`` is ``"training"``, ``"ranking"`` (candidates, inputs, selection) or
      ``"pseudo-labeling"``;
    - ``trained``: ``model``, just trained (the loop goes on training it in place next round);
    - ``evaluated``: ``record``, the round's metrics (no query yet);
    - ``selected``: ``ids`` to ask, in selection order, and ``scores``, each one's best candidate score;
    - ``answered``: ``ids`` answered (the answers are on disk);
    - ``recorded``: ``record``, the round as ``rounds.jsonl`` holds it.
    """

    name: str
    round_idx: int
    phase: str | None = None
    model: Any = None
    record: dict | None = None
    ids: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()


Observer = Callable[[Event], None]


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
    holds the candidates' trunk features ``[N, F]`` when a method computed them once (a frozen trunk); ``scores``
    the strategy's input columns when the candidates were scored where they were made (Ray workers).
    """

    dataset: MedDataset
    sources: list[str]
    join: bool = False
    labeled: dict[str, int] = dataclasses.field(default_factory=dict)  # pool id -> answered label, labeled so far
    features: np.ndarray | None = None
    scores: dict[str, np.ndarray] | None = None  # the strategy's inputs, when scored where the candidates were made

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


@dataclasses.dataclass
class ReviewItem:
    """A pseudo-label that a method's quality control flags for an expert to review.

    ``proposal`` is what the annotator corrects: its mask is the pseudo-label itself (the map the next training
    uses unless the expert corrects it), its uncertainty the model's, where it has one.
    """

    sample_id: str
    predicted_dice: float
    threshold: float
    round_idx: int  # the cycle that gave the pseudo-label
    proposal: Proposal


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

    def review_items(self, state: RunState, model: Any) -> list[ReviewItem]:
        """Optional: the pseudo-labels of the latest recorded cycle that the method's quality control flags,
        lowest predicted quality first (``[]``: none, or this method has no quality control). An expert's
        correction of one comes back through ``Oracle.reviewed``."""
        return []

    @abstractmethod
    def save(self, state: RunState, model: Any, round_idx: int) -> None: ...


def run_track(method: Method, strategy: QueryStrategy, state: RunState, seed: int,
              interrupt: Callable[[str, int], None] | None = None, observers: Sequence[Observer] = ()) -> list[dict]:
    """Run (or resume) one track; returns its round records. Each ``Event`` goes to every observer in turn;
    ``interrupt(event name, round_idx)`` is one more observer (a test's kill)."""
    if interrupt is not None:
        observers = (*observers, lambda event: interrupt(event.name, event.round_idx))

    def emit(name: str, round_idx: int, **data: Any) -> None:
        event = Event(name, round_idx, **data)
        for observer in observers:
            observer(event)

    if state.done:
        return state.records
    state.restore(method.initial_ids())
    model = method.restore(state)
    if model is not None:
        emit("restored", state.records[-1]["round"], model=model)
    round_idx = state.next_round
    while True:
        t0 = time.time()
        emit("phase", round_idx, phase="training")
        model = method.train(state, model, round_idx)
        emit("trained", round_idx, model=model)
        record = {"round": round_idx, **method.evaluate(state, model, round_idx)}
        emit("evaluated", round_idx, record=record)
        record["stop"] = method.stop(state, round_idx, record)
        record.update(reviewed=[], queried=[], query_scores=[], n_candidates=0)
        if record["stop"] is None:
            record.update(_query(method, strategy, state, model, seed, round_idx, emit))
        method.save(state, model, round_idx)
        state.record({**record, "seconds": round(time.time() - t0, 2)})
        emit("recorded", round_idx, record=state.records[-1])
        if record["stop"] is not None:
            return state.finish()
        round_idx += 1


def _query(method: Method, strategy: QueryStrategy, state: RunState, model: Any, seed: int, round_idx: int,
           emit: Callable[..., None]) -> dict:
    """Reviews -> candidates -> the inputs the strategy needs -> selection -> the oracle's answers -> pseudo-labels.

    Reviews (an expert's corrections of pseudo-labels, ``RunState.take_reviews``) are not charged to the query
    size: they are expert labels beyond the budget, and they leave the pool before it is ranked."""
    emit("phase", round_idx, phase="ranking")
    reviewed = state.take_reviews()  # corrected pseudo-labels are labeled now: no strategy asks for them
    rng = stream(seed, "round", round_idx, "query")
    candidates = method.candidates(strategy, state, model, round_idx, rng)
    inputs = method.inputs(strategy.needs, model, candidates, round_idx)
    size = method.query_size(state, round_idx)
    chosen, scores = strategy.select(inputs, size.k, rng, size.per_class)
    ids, id_scores, kept = candidates.queries(chosen, scores, size.cap)
    emit("selected", round_idx, ids=tuple(ids), scores=tuple(id_scores))
    answers = state.ask(ids)
    emit("answered", round_idx, ids=tuple(answers))
    state.add_synthetic(round_idx, candidates.joining(kept, scores, answers))
    method.after_query(state, round_idx, candidates, scores)
    emit("phase", round_idx, phase="pseudo-labeling")
    state.set_pseudo(round_idx, method.pseudo_labels(state, model))
    return {"reviewed": reviewed, "queried": ids, "query_scores": id_scores, "n_candidates": len(candidates)}
