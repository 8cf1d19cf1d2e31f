"""The served run: one track of an experiment, run by the loop in a background thread with a human oracle.

``medloop serve`` runs one track of an experiment (a person labels one sequence of queries); the method's
``plan`` (``medloop.methods``) chooses it: for generative active learning the first seed and the
first strategy (the fully supervised baselines are not trained); for collaborative segmentation the first fold,
strategy, budget and number of cycles.

The track folder is the one ``medloop run`` would write for that track (``tracks/...``), next to
``datastore/`` (``serve.datastore``), ``serve.json`` (what is served, the run's id and its reads per image) and
the usual ``config.yaml`` / ``run.json``. With several reads per image, ``agreement.md`` and ``agreement.json``
(``report.agreement``) follow the readers' agreement after each retraining and when the server stops. The runner
follows the loop through its events (``loop.round.Event``): the phase, the model after each retraining, the
round's metrics, and the selection's scores, shown with each queued item. After each recorded round it asks the
method which pseudo-labels its quality control flags (``Method.review_items``) and opens them for review: each
one's pseudo-label is written as its proposal (``labels/original``), and a correction reaches the loop through
the oracle (``HumanOracle.reviewed``) before the next ranking.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medloop import methods
from medloop.engine.rounds import engine_session
from medloop.errors import ConfigError
from medloop.loop import Event, Proposal, ReviewItem, RunState, run_track
from medloop.loop.rundir import check_resume
from medloop.methods.base import Plan
from medloop.serve.datastore import Datastore, remove_partial_writes
from medloop.serve.consensus import CONSENSUS_RULE
from medloop.serve.human import Batch, HumanOracle, check_reads_per_image
from medloop.storage import write_json

__all__ = ["Plan", "Runner", "plan_track"]

log = logging.getLogger(__name__)


def plan_track(config, out: Path, progress: bool = False) -> Plan:
    """The track ``medloop serve`` runs for ``config`` (see the module docstring); loads the data."""
    if config.data_config.cache is False:
        raise ConfigError("The 'data.cache' parameter must be true or disk to serve a run: the annotation server and "
                          "the loop read the images from two threads; remove 'cache: false'")
    return methods.get(config.method).plan(config, out, progress)


class Runner:
    """One track of ``config`` in ``out`` with a ``HumanOracle``; ``start()`` runs the loop in a daemon thread.

    Refuses a folder that holds a ``medloop run`` experiment, a served run without ``resume``, a run with
    another config (``loop.rundir.check_resume``) or other reads per image. ``reads_per_image``: how many
    different annotators label each image (``None``: what the resumed run was started with, else the experiment's
    ``reads_per_image``). ``clock``:
    the leases' monotonic seconds (tests move it to expire leases).
    """

    def __init__(self, config, out: str | Path, resume: bool = False,
                 lease_seconds: float = 300.0, progress: bool = False, reads_per_image: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        import json

        from medloop.runinfo import write_run_record

        if reads_per_image is not None:
            check_reads_per_image(reads_per_image)
        self.config, self.out = config, Path(out)
        marker = self.out / "serve.json"
        if (self.out / "config.yaml").exists() and not marker.exists():
            raise ConfigError(f"{self.out} holds a `medloop run` experiment, not a served run; serve into another --out")
        check_resume(self.out, config, resume)
        self.plan = plan_track(config, self.out, progress)
        self.out.mkdir(parents=True, exist_ok=True)
        if marker.exists():
            saved = json.loads(marker.read_text())
            self.run_id, self.reads_per_image = saved["run_id"], saved.get("reads_per_image", 1)
            if reads_per_image not in (None, self.reads_per_image):
                raise ConfigError(f"{self.out} is a served run with {self.reads_per_image} read(s) per image; it cannot "
                                  f"resume with --reads-per-image {reads_per_image} (its queue and answers count "
                                  f"{self.reads_per_image}): leave the option out, or serve into another --out")
        else:
            self.run_id = uuid.uuid4().hex
            self.reads_per_image = config.reads_per_image if reads_per_image is None else reads_per_image
            config.to_yaml(self.out / "config.yaml")
            write_run_record(self.out, self.plan.seed, {"experiment": config.to_dict()}, "medloop serve")
            write_json(marker, {"run_id": self.run_id, "name": config.name, **self.plan.track,
                                "track_folder": str(self.plan.folder.relative_to(self.out)),
                                "reads_per_image": self.reads_per_image})
        remove_partial_writes(self.out)  # nothing writes here yet: the loop starts later, the server after
        self.datastore = Datastore.open(self.out / "datastore", self.plan.images, name=config.name,
                                        description=f"medloop serve: {self.plan.track}")
        self.oracle = HumanOracle(self.datastore, lease_seconds, prepare=self._prepare, clock=clock,
                                  reads_per_image=self.reads_per_image, labels=self.plan.labels)
        self.phase, self.round_idx, self.error = "starting", 0, None
        self.metrics: dict[int, dict] = {}  # written by the loop's thread, read by request threads: under _lock
        self._lock = threading.Lock()
        self.model_round: int | None = None
        self._snapshot: tuple[int, Any] | None = None
        self._scores: dict[str, float] = {}  # the last selection's score of each id it asks for
        self._infer_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state: RunState | None = None  # the loop's; read only from the loop's thread (its events)
        self.started = time.time()

    @property
    def model_name(self) -> str:
        return self.config.method

    def start(self) -> Runner:
        self._thread = threading.Thread(target=self._run, name="medloop-loop", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        plan = self.plan
        try:
            state = self._state = RunState(plan.folder, self.oracle, plan.timeout)
            with self._lock:
                for rec in state.records:
                    self.metrics[rec["round"]] = self.plan.headline(rec)
            if state.done:  # run_track returns at once: show the finished run's model
                model = plan.method.restore(state)
                if model is not None:
                    self._trained(model, state.records[-1]["round"])
            with engine_session(self.config.engine, self.config.engine_address):  # engine: ray, once for the run
                run_track(plan.method, plan.strategy, state, plan.seed, observers=[self._observe])
            self.oracle.offer_review({})  # no round is left to train on a correction
            self.write_agreement()
            self._phase("finished", self.round_idx)
        except Exception as exc:  # the server stays up and shows it; the run resumes after a fix
            log.exception("the active-learning loop stopped")
            self.error = f"{type(exc).__name__}: {exc}"
            self._phase("error", self.round_idx)

    # ---------------------------------------------------------------------------------- called by the loop

    def _observe(self, event: Event) -> None:
        """The loop's events (its thread): the phase, the model to infer with, the metrics, the selection."""
        if event.name == "phase":
            self._phase(event.phase, event.round_idx)
        elif event.name in ("restored", "trained"):
            self._trained(event.model, event.round_idx)
            if event.name == "restored":
                self._offer_reviews()
        elif event.name == "evaluated":
            self._evaluated(event.round_idx, event.record)
        elif event.name == "selected":
            self._scores = {i: s for i, s in zip(event.ids, event.scores) if math.isfinite(s)}
        elif event.name == "recorded":
            self._offer_reviews()

    def _phase(self, phase: str, round_idx: int) -> None:
        self.phase, self.round_idx = phase, round_idx

    def _trained(self, model: Any, round_idx: int) -> None:
        self._snapshot = (round_idx, copy.deepcopy(model))  # /infer reads a copy: training goes on in place
        self.model_round = round_idx

    def _evaluated(self, round_idx: int, record: dict) -> None:
        headline = self.plan.headline(record)
        with self._lock:
            self.metrics[round_idx] = headline
        self.write_agreement()

    def _prepare(self, ids: list[str]) -> Batch:
        """Before a batch is queued (loop thread): the selection's score of each id, the model's proposals."""
        scores = {i: self._scores[i] for i in ids if i in self._scores}
        self._scores = {}
        if self._snapshot is not None:
            self._phase("preparing proposals", self.round_idx)
            model_round, model = self._snapshot
            with self._infer_lock:  # /infer may be sampling the same copy
                proposals = self.plan.method.proposals(model, ids)
            self.datastore.record_proposals(proposals, {s: self._proposal_info(p, model_round, scores.get(s))
                                                        for s, p in proposals.items()})
        self._phase("waiting for labels", self.round_idx)
        return Batch(self.round_idx if self._snapshot is not None else None, scores)  # None: the initial set

    def _offer_reviews(self) -> None:
        """The latest recorded cycle's flagged pseudo-labels (the method's), open for review (loop thread)."""
        if self._state is None or self._snapshot is None:
            return
        model_round, model = self._snapshot
        with self._infer_lock:  # /infer may be sampling the same copy
            items = self.plan.method.review_items(self._state, model)
        self.offer_review(items, model_round)

    def offer_review(self, items: list[ReviewItem], model_round: int | None) -> None:
        """Open ``items`` for review: each one's proposal (its pseudo-label) into the datastore, then the oracle's
        offer (which replaces the earlier one), lowest predicted Dice first."""
        items = sorted(items, key=lambda it: it.predicted_dice)
        info = {it.sample_id: {"predicted_dice": round(float(it.predicted_dice), 4),
                               "threshold": float(it.threshold), "round": int(it.round_idx)} for it in items}
        unlabeled = [it for it in items if self.datastore.answer(it.sample_id) is None]
        if unlabeled:
            self.datastore.record_proposals({it.sample_id: it.proposal for it in unlabeled},
                                            {it.sample_id: {"model_round": model_round, "score": None,
                                                            "review": info[it.sample_id]} for it in unlabeled})
        self.oracle.offer_review(info)

    def _proposal_info(self, proposal: Proposal, model_round: int, score: float | None) -> dict:
        info: dict[str, Any] = {"model_round": model_round, "score": score}
        if proposal.probs is not None:
            info["probs"] = {name: round(float(p), 4) for name, p in zip(self.plan.class_names, proposal.probs)}
        return info

    # ---------------------------------------------------------------------------------- called by the server

    def infer(self, sample_id: str) -> tuple[int, Proposal]:
        """The latest model's proposal for an image of the datastore: (model round, proposal)."""
        from medloop.serve.datastore import RequestError

        self.datastore.check(sample_id)
        snapshot = self._snapshot
        if snapshot is None:
            raise RequestError("no model yet: the first round trains once the initial images are labeled; "
                               "try again later", 409)
        with self._infer_lock:  # one inference at a time beside the training thread
            return snapshot[0], self.plan.method.proposals(snapshot[1], [sample_id])[sample_id]

    def agreement(self) -> dict:
        """The readers' agreement so far (``report.agreement.summarize``); empty with one read per image."""
        from medloop.report.agreement import summarize

        if self.reads_per_image == 1:
            return {}
        return summarize(self.datastore.answers.values(), self.plan.class_names)

    def write_agreement(self) -> None:
        """Write ``agreement.md`` / ``agreement.json`` into the run folder (with several reads per image)."""
        from medloop.report.agreement import write_agreement_report

        if self.reads_per_image > 1:
            write_agreement_report(self.out, self.datastore.answers.values(), self.plan.class_names,
                                   self.reads_per_image, CONSENSUS_RULE)

    def status(self, client: str | None = None) -> dict:
        """Progress for the UI: phase, round, labeled (queried) / budget, corrections of pseudo-labels (beyond the
        budget), reads, the model's metrics per round, the queue and the pseudo-labels flagged for review."""
        reviewed = len(self.oracle.reviewed())
        with self._lock:
            metrics = [{"round": r, **m} for r, m in sorted(self.metrics.items())]
        return {"run_id": self.run_id, "name": self.config.name, **self.plan.track, "phase": self.phase,
                "round": self.round_idx, "model_round": self.model_round, "labeled": self.labeled_count(reviewed),
                "reviewed": reviewed, "budget": self.plan.budget, "reads_per_image": self.reads_per_image,
                "reads": self.datastore.read_count, "error": self.error, "metrics": metrics,
                "queue": self.oracle.queue(client), "review": self.oracle.reviews()}

    def labeled_count(self, reviewed: int | None = None) -> int:
        """Images with a final label from the queue (what the budget counts): corrections of pseudo-labels left out."""
        reviewed = len(self.oracle.reviewed()) if reviewed is None else reviewed
        return self.datastore.status()["completed"] - reviewed
