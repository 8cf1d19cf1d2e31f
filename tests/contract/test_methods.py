"""The contract every registered method passes (``medloop.methods``), as the strategies' and models' suites do
for theirs: its config round-trips, one round of its own tiny example runs through the loop and reports its
events, its ``inputs()`` hold a column for each input it provides (every strategy it accepts can select from
them), and its state round-trips: the model restored from disk scores as the trained one, and a killed track
resumes to the same record without asking anyone twice.

A new method passes this suite by registering a ``MethodSpec`` with a tiny ``example``; nothing here names one.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from medloop import methods
from medloop.errors import ConfigError
from medloop.loop import GroundTruthOracle, Interrupt, RunState, run_track
from medloop.query import STRATEGIES, build_strategy
from medloop.seeding import stream
from medloop.uncertainty.measures import MEASURES

# what a strategy reads of each input (``medloop.query.strategies``); ``synthetic`` changes the candidates instead
COLUMNS = {"mc": tuple(MEASURES), "discriminator": ("discriminator",), "foreground": ("foreground",),
           "embeddings": ("embeddings", "labeled_embeddings", "labeled_labels"), "synthetic": ()}
PER_LABELED = {"labeled_embeddings", "labeled_labels"}  # one row per labeled image, not per candidate


@dataclasses.dataclass
class Track:
    spec: methods.MethodSpec
    out: Path
    plan: methods.Plan
    oracle: GroundTruthOracle
    events: list


def _oracle(plan: methods.Plan) -> GroundTruthOracle:
    return GroundTruthOracle.from_dataset(plan.images, with_masks=True)


@pytest.fixture(scope="module", params=methods.METHODS.names())
def track(request, tmp_path_factory) -> Track:
    """Round 0 of the method's example track, stopped (as a kill would) once the round is recorded."""
    spec = methods.get(request.param)
    out = tmp_path_factory.mktemp(spec.name)
    plan = spec.plan(spec.config.from_dict(spec.example), out, False)
    events = []

    def stop_after_round_0(event):
        events.append(event)
        if event.name == "recorded":
            raise Interrupt("round 0 is recorded")

    oracle = _oracle(plan)
    with pytest.raises(Interrupt):
        run_track(plan.method, plan.strategy, RunState(plan.folder, oracle), plan.seed, observers=[stop_after_round_0])
    return Track(spec, out, plan, oracle, events)


def _restored(track: Track):
    state = RunState(track.plan.folder, _oracle(track.plan))
    state.restore(track.plan.method.initial_ids())
    return state, track.plan.method.restore(state)


def _inputs(track: Track, model, state: RunState, needs: frozenset[str]):
    method, round_idx = track.plan.method, state.next_round
    candidates = method.candidates(build_strategy("random"), state, model, round_idx, stream(0, "contract"))
    return candidates, method.inputs(needs, model, candidates, round_idx)


@pytest.mark.parametrize("name", methods.METHODS.names())
def test_the_config_round_trips_and_names_its_method(name):
    spec = methods.get(name)
    config = spec.config.from_dict(spec.example)
    assert config.method == spec.name
    assert spec.config.from_dict(config.to_dict()) == config
    assert spec.provides and spec.provides <= set(COLUMNS)


def test_an_unknown_method_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown method 'mahapatra2019' \\(did you mean 'mahapatra2018'\\?\\)"):
        methods.get("mahapatra2019")


def test_one_round_reports_its_events_in_order(track):
    names = [e.name if e.name != "phase" else f"phase:{e.phase}" for e in track.events]
    assert names == ["phase:training", "trained", "evaluated", "phase:ranking", "selected", "answered",
                     "phase:pseudo-labeling", "recorded"]
    record = track.events[-1].record
    selected = next(e for e in track.events if e.name == "selected")
    assert record["round"] == 0 and record["stop"] is None and record["queried"]
    assert list(selected.ids) == record["queried"] and list(selected.scores) == record["query_scores"]
    assert RunState(track.plan.folder, _oracle(track.plan)).records == [record]


def test_the_method_provides_what_its_config_declares(track):
    assert track.plan.method.provides == track.spec.provides


def test_inputs_hold_a_column_for_each_provided_input(track):
    state, model = _restored(track)
    needs = track.spec.provides - {"synthetic"}
    candidates, inputs = _inputs(track, model, state, needs)
    assert len(candidates) > 0
    np.testing.assert_array_equal(inputs["index"], np.arange(len(candidates)))
    for need in needs:
        for column in COLUMNS[need]:
            assert column in inputs, f"{track.spec.name} provides '{need}' but its inputs lack '{column}'"
            if column not in PER_LABELED:
                assert len(inputs[column]) == len(candidates), column
    for name in STRATEGIES.names():  # every strategy the method accepts selects from these inputs
        strategy = build_strategy(name)
        if strategy.needs <= needs and not (strategy.per_class and "pred" not in inputs):
            chosen, scores = strategy.select(inputs, 2, stream(0, "contract", name), per_class_k=1)
            assert len(chosen) == 2 and len(scores) == len(candidates), name


def test_the_restored_model_scores_as_the_trained_one(track):
    state, restored = _restored(track)
    trained = next(e.model for e in track.events if e.name == "trained")
    needs = track.spec.provides - {"synthetic"}
    _, before = _inputs(track, trained, state, needs)
    _, after = _inputs(track, restored, state, needs)
    assert set(before) == set(after)
    for column in before:
        np.testing.assert_allclose(after[column], before[column], rtol=1e-5, atol=1e-6, err_msg=column)


def test_a_killed_track_resumes_without_asking_twice(track, tmp_path):
    # resumed in a copy (a fresh plan on a copy of the run folder): the shared track stays at round 0 for the
    # other tests, whatever order they run in
    out = tmp_path / "resumed"
    shutil.copytree(track.out, out)
    plan = track.spec.plan(track.spec.config.from_dict(track.spec.example), out, False)
    oracle = _oracle(plan)
    records = run_track(plan.method, plan.strategy, RunState(plan.folder, oracle), plan.seed)
    assert records[0] == track.events[-1].record and records[-1]["stop"] is not None
    assert not set(oracle.asked) & set(track.oracle.asked)  # round 0's answers came from disk
    assert len(track.oracle.asked) == len(set(track.oracle.asked))
