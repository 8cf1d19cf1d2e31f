"""The one loop with a toy method: order of a round, only the declared inputs computed, resume, pseudo-labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.data import MedDataset, Sample
from medloop.data.record import DatasetInfo
from medloop.loop import Candidates, GroundTruthOracle, Interrupt, Method, QuerySize, RunState, run_track
from medloop.query import build_strategy

IDS = [f"s{i:02d}" for i in range(12)]


class Toy(Method):
    """A 'model' that is the number of labeled ids; uncertainty = the id's number (higher = query first)."""

    provides = frozenset({"mc"})

    def __init__(self, rounds: int = 2, pseudo: bool = False):
        self.rounds, self.pseudo = rounds, pseudo
        self.computed: list[frozenset] = []
        self.trained_on: list[int] = []
        samples = [Sample(torch.zeros(1, 4, 4), None, i % 2, sid, sid, "toy") for i, sid in enumerate(IDS)]
        self.pool = MedDataset.from_samples(samples, DatasetInfo("toy", "memory"))

    def initial_ids(self):
        return IDS[:2]

    def restore(self, state):
        return state.load_model(state.records[-1]["round"])["n"] if state.records else None

    def train(self, state, model, round_idx):
        self.trained_on.append(len(state.labeled) + len(state.pseudo))
        return len(state.labeled)

    def evaluate(self, state, model, round_idx):
        return {"n_labeled": len(state.labeled), "n_pseudo": len(state.pseudo)}

    def stop(self, state, round_idx, record):
        return "max_rounds" if round_idx >= self.rounds else None

    def query_size(self, state, round_idx):
        return QuerySize(3, 3)

    def candidates(self, strategy, state, model, round_idx, rng):
        rest = [i for i, s in enumerate(IDS) if s not in state.labeled]
        return Candidates(self.pool.subset(rest), [IDS[i] for i in rest])

    def inputs(self, needs, model, candidates, round_idx):
        self.computed.append(needs)
        cols = {"index": np.arange(len(candidates))}
        if "mc" in needs:
            cols["entropy"] = np.array([float(s[1:]) for s in candidates.sources])
        return cols

    def pseudo_labels(self, state, model):
        if not self.pseudo:
            return None
        return {s: np.zeros((4, 4), dtype=np.int64) for s in IDS if s not in state.labeled}

    def save(self, state, model, round_idx):
        state.save_model(round_idx, {"n": model})


def oracle():
    return GroundTruthOracle({s: (i % 2, None) for i, s in enumerate(IDS)}, with_masks=False)


def test_a_round_queries_what_the_strategy_ranks_first_and_records_it(tmp_path):
    method = Toy()
    recs = run_track(method, build_strategy("entropy"), RunState(tmp_path, oracle()), seed=0)
    assert [r["round"] for r in recs] == [0, 1, 2] and recs[-1]["stop"] == "max_rounds"
    assert recs[0]["queried"] == ["s11", "s10", "s09"] and recs[1]["queried"] == ["s08", "s07", "s06"]
    assert [r["n_labeled"] for r in recs] == [2, 5, 8]  # measured before the round's query
    assert method.computed == [frozenset({"mc"})] * 2
    assert (tmp_path / "done.json").exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["round_001.pt", "round_002.pt"]


def test_the_loop_computes_only_the_inputs_the_strategy_declares(tmp_path):
    method = Toy()
    run_track(method, build_strategy("random"), RunState(tmp_path, oracle()), seed=0)
    assert method.computed == [frozenset()] * 2  # random needs nothing: no MC scoring was run


def test_resume_after_a_kill_redoes_the_round_and_asks_nobody_twice(tmp_path):
    ref = run_track(Toy(), build_strategy("random"), RunState(tmp_path / "ref", oracle()), seed=3)

    def kill(point, round_idx):
        if point == "answered" and round_idx == 1:
            raise Interrupt("kill")

    first = oracle()
    with pytest.raises(Interrupt):
        run_track(Toy(), build_strategy("random"), RunState(tmp_path / "run", first), seed=3, interrupt=kill)
    second = oracle()
    resumed = run_track(Toy(), build_strategy("random"), RunState(tmp_path / "run", second), seed=3)
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in rs] for rs in (ref, resumed)]
    assert strip[0] == strip[1]
    assert sorted(first.asked + second.asked) == sorted(set(first.asked + second.asked))  # never asked twice
    assert second.asked == []  # round 1's answers were on disk before the kill; round 2 queries nothing


def test_pseudo_labels_cover_the_rest_and_give_way_to_expert_labels(tmp_path):
    method = Toy(rounds=2, pseudo=True)
    state = RunState(tmp_path, oracle())
    recs = run_track(method, build_strategy("entropy"), state, seed=0)
    assert [r["n_pseudo"] for r in recs] == [0, 7, 4]
    assert method.trained_on == [2, 12, 12]  # expert + pseudo-labeled cover the pool after round 0
    reopened = RunState(tmp_path, oracle()).restore(IDS[:2])
    assert set(reopened.pseudo) == set(IDS) - set(reopened.labeled) and len(reopened.labeled) == 8


def test_observers_hear_each_round_in_order_and_a_resume_restores_the_saved_model(tmp_path):
    heard = []

    def kill_after_round_1(event):
        heard.append(event)
        if event.name == "recorded" and event.round_idx == 1:
            raise Interrupt("kill")

    with pytest.raises(Interrupt):
        run_track(Toy(), build_strategy("entropy"), RunState(tmp_path, oracle()), seed=0, observers=[kill_after_round_1])
    names = [e.phase if e.name == "phase" else e.name for e in heard]
    one_round = ["training", "trained", "evaluated", "ranking", "selected", "answered", "pseudo-labeling", "recorded"]
    assert names == one_round * 2 and [e.round_idx for e in heard] == [0] * 8 + [1] * 8
    selected = [e for e in heard if e.name == "selected"]
    assert [list(e.ids) for e in selected] == [["s11", "s10", "s09"], ["s08", "s07", "s06"]]
    assert selected[0].scores == (11.0, 10.0, 9.0)  # each id's score, as the record keeps it
    assert [e.model for e in heard if e.name == "trained"] == [2, 5]
    heard.clear()
    recs = run_track(Toy(), build_strategy("entropy"), RunState(tmp_path, oracle()), seed=0, observers=[heard.append])
    assert heard[0].name == "restored" and (heard[0].round_idx, heard[0].model) == (1, 5)
    assert [e.round_idx for e in heard if e.name == "recorded"] == [2] and recs[-1]["stop"] == "max_rounds"


class Reviewing(GroundTruthOracle):
    """Ground truth, plus the ids an expert has corrected without being asked (``reviewed``)."""

    def __init__(self, corrected: list[str] = ()):
        super().__init__({s: (i % 2, None) for i, s in enumerate(IDS)}, with_masks=False)
        self.corrected = list(corrected)

    def reviewed(self):
        return list(self.corrected)


def test_corrected_pseudo_labels_join_the_labeled_set_before_the_next_ranking_and_replay_on_resume(tmp_path):
    first = Reviewing()

    def correct_after_round_0(event):  # s03 holds a pseudo-label after round 0; an expert corrects it
        if event.name == "recorded" and event.round_idx == 0:
            first.corrected.append("s03")

    recs = run_track(Toy(rounds=2, pseudo=True), build_strategy("random"), RunState(tmp_path / "ref", first), seed=1,
                     observers=[correct_after_round_0])
    assert [r["reviewed"] for r in recs] == [[], ["s03"], []]
    assert "s03" not in recs[1]["queried"] and len(recs[1]["queried"]) == 3  # not charged to the query size
    assert [r["n_labeled"] for r in recs] == [2, 5, 9] and recs[2]["n_pseudo"] == 3
    state = RunState(tmp_path / "ref", Reviewing()).restore(IDS[:2])
    order = IDS[:2] + recs[0]["queried"] + ["s03"] + recs[1]["queried"]
    assert state.labeled == order and "s03" not in state.pseudo  # replayed in the order they joined

    def kill(event):
        correct_after_round_0(event)
        if event.name == "answered" and event.round_idx == 1:
            raise Interrupt("kill")

    first = Reviewing()
    with pytest.raises(Interrupt):
        run_track(Toy(rounds=2, pseudo=True), build_strategy("random"), RunState(tmp_path / "run", first), seed=1,
                  observers=[kill])
    second = Reviewing(["s03"])
    resumed = run_track(Toy(rounds=2, pseudo=True), build_strategy("random"), RunState(tmp_path / "run", second),
                        seed=1)
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in rs] for rs in (recs, resumed)]
    assert strip[0] == strip[1] and second.asked == []  # the correction came from the answer log
