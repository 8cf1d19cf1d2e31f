"""The served run: one track of an experiment, run by the loop in a background thread with a human oracle.

``medloop serve`` runs one track of either method (a person labels one sequence of queries):

- method 1 (``mahapatra2018``): the first seed and the first strategy of the config; the fully supervised
  baselines are not trained;
- method 2 (``ravanbakhsh2018``): the first fold, the first strategy, the first budget and the first number of
  cycles.

The track folder is the one ``medloop run`` would write for that track (``tracks/...``), next to
``datastore/`` (``serve.datastore``), ``serve.json`` (what is served, the run's id and its reads per image) and
the usual ``config.yaml`` / ``run.json``. With several reads per image, ``agreement.md`` and ``agreement.json``
(``report.agreement``) follow the readers' agreement after each retraining and when the server stops. The loop is unchanged: the runner observes it through a thin wrapper around the
method (phase, model after each retraining, round records) and around the strategy (the scores of the
selection, shown with each queued item).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medloop.data import MedDataset
from medloop.errors import ConfigError
from medloop.loop import CollaborativeConfig, ExperimentConfig, Method, Proposal, RunState, run_track
from medloop.loop.round import Candidates, QuerySize
from medloop.loop.rundir import check_resume
from medloop.query import QueryStrategy, build_strategy
from medloop.serve.datastore import Datastore, remove_partial_writes
from medloop.serve.consensus import CONSENSUS_RULE
from medloop.serve.human import Batch, HumanOracle, check_reads_per_image
from medloop.storage import write_json

__all__ = ["Plan", "Runner", "plan_track"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Plan:
    """The one track a server runs, and what the annotation UI needs to know about it."""

    method: Method
    strategy: QueryStrategy
    spec: dict
    seed: int
    folder: Path
    images: MedDataset  # every image the oracle may be asked about
    budget: int  # images labeled by the end (initial set included)
    class_names: list[str]  # image classes the annotator sets (empty: no image class, method 2)
    mask_labels: dict[int, str]  # label value -> name, background included
    track: dict  # what is served, for serve.json and /info/
    headline: Callable[[dict], dict]  # round record -> the metrics shown after each retraining
    hints: dict[str, str]  # the method's words for the annotator (see ``HINT_KEYS``)
    timeout: float | None = None

    def __post_init__(self):
        missing = [k for k in HINT_KEYS if not self.hints.get(k)]
        if missing:
            raise ValueError(f"the serve plan of method {self.track.get('method')} lacks the hints {missing}; the UI "
                             f"shows each of {list(HINT_KEYS)}")

    @property
    def labels(self) -> dict[str, int]:
        """The mask labels as name -> value, background left out (MONAI Label's ``labels``); a name used twice
        gets its value appended."""
        named: dict[str, int] = {}
        for value, name in sorted(self.mask_labels.items()):
            if value != 0:
                named[name if name not in named else f"{name} ({value})"] = value
        return named


# what an annotator is told, in the method's words: the task, with the model's proposal loaded, what the
# uncertainty map means, and why there is none for an image the model has seen
HINT_KEYS = ("task", "proposal", "uncertainty", "no_uncertainty")


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _mahapatra_plan(config: ExperimentConfig, out: Path, progress: bool) -> Plan:
    from medloop.loop.mahapatra import Mahapatra, prepare, sampler_factory

    ctx = prepare(config, progress=progress)
    ctx.workdir = out  # where a self-supervised checkpoint goes when medloop's cache is off
    seed, spec = config.seeds[0], config.strategy_specs[0]
    strategy = build_strategy(spec["name"], spec.get("params"))
    method = Mahapatra(ctx, seed, strategy, sampler_factory(ctx, out))
    info = ctx.dataset.info
    mask_labels = dict(info.mask_labels) or {0: "background", 1: "foreground"}

    def headline(rec: dict) -> dict:
        seg = rec.get("seg") or {}
        return {"val AUC/acc": _finite(rec["val"].get("auc_or_acc")), "test AUC": _finite(rec["test"].get("auc")),
                "test acc": _finite(rec["test"].get("accuracy")), "seg Dice": _finite(seg.get("dice_mean"))}

    structures = ", ".join(n for v, n in sorted(mask_labels.items()) if v != 0)
    hints = {"task": f"Choose the image class (Shift+1…9) and paint the {structures} mask, then submit (Enter).",
             "proposal": "The model's class probabilities stand beside the classes and its mask is loaded: correct "
                         "the mask, choose the class, then submit (Enter).",
             "uncertainty": "the segmenter's predictive entropy per pixel (MC dropout): 0 sure, 1 most unsure",
             "no_uncertainty": "this model proposes the image class only: its segmenter trains at the record_at "
                               "stages, and the uncertainty map comes with it"}
    return Plan(method, strategy, spec, seed, out / "tracks" / f"{spec['label']}-seed{seed}", method.pool,
                method.budget, [info.class_names[c] if c < len(info.class_names) else str(c)
                                for c in range(ctx.num_classes)], mask_labels,
                {"method": config.method, "strategy": spec["label"], "seed": seed}, headline, hints,
                config.oracle_timeout)


def _ravanbakhsh_plan(config: CollaborativeConfig, out: Path, progress: bool) -> Plan:
    from medloop.data import kfold_by_case
    from medloop.loop.ravanbakhsh import Ravanbakhsh, load_collab_data
    from medloop.seeding import stream

    data = load_collab_data(config, progress)
    train_idx, test_idx = kfold_by_case(data.dataset, k=config.folds, seed=config.seed)[0]
    cases = np.array(data.dataset.case_ids)
    base_case = str(stream(config.seed, "fold", 0, "base case").choice(sorted(set(cases[train_idx]))))  # as `run`
    spec, n, b = config.strategy_specs[0], config.cycles[0], config.budgets[0]
    strategy = build_strategy(spec["name"], spec.get("params"))
    method = Ravanbakhsh(data, train_idx, test_idx, base_case, b, n, config, config.seed, progress)
    label = f"{spec['label']}-n{n}"

    def headline(rec: dict) -> dict:
        dice = rec["test"].get("dice", {})
        return {"Dice": _finite(rec["test"].get("dice_mean")), **{k: _finite(v) for k, v in dice.items()}}

    structures = ", ".join(data.names.values())
    hints = {"task": f"Paint the {structures} in this slice, then submit (Enter). There is no image class.",
             "proposal": "The generator's segmentation is loaded: correct it where it is wrong, then submit (Enter).",
             "uncertainty": "the discriminator's implausibility per pixel: 0 plausible, 1 least plausible",
             "no_uncertainty": "the discriminator's map comes with the model's proposal for the images it asks about"}
    return Plan(method, strategy, spec, config.seed, out / "tracks" / "fold0" / f"{label}-b{int(round(b * 100)):03d}",
                data.dataset.subset(method.base + method.pool), len(method.base) + sum(method.per_cycle), [],
                {0: "background", **data.names},
                {"method": config.method, "strategy": spec["label"], "fold": 0, "base_case": base_case, "budget": b,
                 "cycles": n}, headline, hints)


def plan_track(config: ExperimentConfig | CollaborativeConfig, out: Path, progress: bool = False) -> Plan:
    """The track ``medloop serve`` runs for ``config`` (see the module docstring); loads the data."""
    if not config.data_config.cache:
        raise ConfigError("The 'data.cache' parameter must be true to serve a run: the annotation server and the loop "
                          "read the images from two threads; remove 'cache: false'")
    if isinstance(config, CollaborativeConfig):
        return _ravanbakhsh_plan(config, out, progress)
    return _mahapatra_plan(config, out, progress)


class _Observed(Method):
    """The served method, observed by the runner: every call is the method's own."""

    def __init__(self, inner: Method, runner: Runner):
        self.inner, self.runner, self.provides = inner, runner, inner.provides

    def initial_ids(self) -> list[str]:
        return self.inner.initial_ids()

    def restore(self, state: RunState) -> Any:
        model = self.inner.restore(state)
        self.runner._restored(state, model)
        return model

    def train(self, state: RunState, model: Any, round_idx: int) -> Any:
        self.runner._phase("training", round_idx)
        model = self.inner.train(state, model, round_idx)
        self.runner._trained(model, round_idx)
        return model

    def evaluate(self, state: RunState, model: Any, round_idx: int) -> dict:
        record = self.inner.evaluate(state, model, round_idx)
        self.runner._evaluated(round_idx, record)
        return record

    def stop(self, state: RunState, round_idx: int, record: dict) -> str | None:
        return self.inner.stop(state, round_idx, record)

    def query_size(self, state: RunState, round_idx: int) -> QuerySize:
        return self.inner.query_size(state, round_idx)

    def candidates(self, strategy: QueryStrategy, state: RunState, model: Any, round_idx: int,
                   rng: np.random.Generator) -> Candidates:
        self.runner._phase("ranking", round_idx)
        candidates = self.inner.candidates(strategy, state, model, round_idx, rng)
        self.runner._candidates = candidates
        return candidates

    def inputs(self, needs: frozenset[str], model: Any, candidates: Candidates, round_idx: int) -> dict[str, np.ndarray]:
        return self.inner.inputs(needs, model, candidates, round_idx)

    def pseudo_labels(self, state: RunState, model: Any) -> dict[str, np.ndarray] | None:
        self.runner._phase("pseudo-labeling", self.runner.round_idx)
        return self.inner.pseudo_labels(state, model)

    def after_query(self, state: RunState, round_idx: int, candidates: Candidates, scores: np.ndarray) -> None:
        self.inner.after_query(state, round_idx, candidates, scores)

    def proposals(self, model: Any, sample_ids: list[str]) -> dict[str, Proposal]:
        return self.inner.proposals(model, sample_ids)

    def save(self, state: RunState, model: Any, round_idx: int) -> None:
        self.inner.save(state, model, round_idx)


class _Tap:
    """The served strategy; keeps the scores of its last selection for the queue."""

    def __init__(self, strategy: QueryStrategy, runner: Runner):
        self._strategy, self._runner = strategy, runner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._strategy, name)

    def select(self, inputs: dict[str, np.ndarray], k: int, rng: np.random.Generator,
               per_class_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        chosen, scores = self._strategy.select(inputs, k, rng, per_class_k)
        self._runner._selection = (chosen, scores)
        return chosen, scores


class Runner:
    """One track of ``config`` in ``out`` with a ``HumanOracle``; ``start()`` runs the loop in a daemon thread.

    Refuses a folder that holds a ``medloop run`` experiment, a served run without ``resume``, a run with
    another config (``loop.rundir.check_resume``) or other reads per image. ``reads_per_image``: how many
    different annotators label each image (``None``: what the resumed run was started with, else 1). ``clock``:
    the leases' monotonic seconds (tests move it to expire leases).
    """

    def __init__(self, config: ExperimentConfig | CollaborativeConfig, out: str | Path, resume: bool = False,
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
            self.run_id, self.reads_per_image = uuid.uuid4().hex, 1 if reads_per_image is None else reads_per_image
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
        self._candidates: Candidates | None = None
        self._selection: tuple[np.ndarray, np.ndarray] | None = None
        self._infer_lock = threading.Lock()
        self._thread: threading.Thread | None = None
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
            state = RunState(plan.folder, self.oracle, plan.timeout)
            if state.done:  # run_track returns at once: show the finished run's metrics and model
                self._restored(state, plan.method.restore(state))
            run_track(_Observed(plan.method, self), _Tap(plan.strategy, self), state, plan.seed)
            self.write_agreement()
            self._phase("finished", self.round_idx)
        except Exception as exc:  # the server stays up and shows it; the run resumes after a fix
            log.exception("the active-learning loop stopped")
            self.error = f"{type(exc).__name__}: {exc}"
            self._phase("error", self.round_idx)

    # ---------------------------------------------------------------------------------- called by the loop

    def _phase(self, phase: str, round_idx: int) -> None:
        self.phase, self.round_idx = phase, round_idx

    def _restored(self, state: RunState, model: Any) -> None:
        with self._lock:
            for rec in state.records:
                self.metrics[rec["round"]] = self.plan.headline(rec)
        if model is not None:
            self._trained(model, state.records[-1]["round"])
        self._phase("waiting for labels", state.next_round)

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
        scores: dict[str, float] = {}
        if self._candidates is not None and self._selection is not None:
            chosen, all_scores = self._selection
            wanted = set(ids)
            for j in (int(j) for j in chosen):
                src = self._candidates.sources[j]
                if src in wanted and math.isfinite(float(all_scores[j])):
                    scores[src] = max(scores.get(src, -math.inf), float(all_scores[j]))
        self._candidates = self._selection = None
        if self._snapshot is not None:
            self._phase("preparing proposals", self.round_idx)
            model_round, model = self._snapshot
            with self._infer_lock:  # /infer may be sampling the same copy
                proposals = self.plan.method.proposals(model, ids)
            self.datastore.record_proposals(proposals, {s: self._proposal_info(p, model_round, scores.get(s))
                                                        for s, p in proposals.items()})
        self._phase("waiting for labels", self.round_idx)
        return Batch(self.round_idx if self._snapshot is not None else None, scores)  # None: the initial set

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
        """Progress for the UI: phase, round, labeled / budget, reads, the model's metrics per round, the queue."""
        done = self.datastore.status()["completed"]
        with self._lock:
            metrics = [{"round": r, **m} for r, m in sorted(self.metrics.items())]
        return {"run_id": self.run_id, "name": self.config.name, **self.plan.track, "phase": self.phase,
                "round": self.round_idx, "model_round": self.model_round, "labeled": done, "budget": self.plan.budget,
                "reads_per_image": self.reads_per_image, "reads": self.datastore.read_count, "error": self.error,
                "metrics": metrics, "queue": self.oracle.queue(client)}
