"""Oracles: ground truth reveals and counts, answers are persisted before use and never asked twice."""

from __future__ import annotations

import numpy as np
import pytest

from medloop.loop import Answer, AnswerLog, GroundTruthOracle, Oracle, OracleTimeout, PersistentOracle, collect


def truth() -> GroundTruthOracle:
    mask = np.zeros((4, 4), dtype=np.int64)
    mask[1:3, 1:3] = 1
    return GroundTruthOracle({"a": (0, mask), "b": (1, None), "c": (1, mask * 2)})


def test_ground_truth_oracle_reveals_and_counts():
    o = truth()
    got = collect(o, ["a", "b"])
    assert got["a"].label == 0 and got["a"].pixels == 4 and got["b"].mask is None and got["b"].pixels == 0
    assert o.asked == ["a", "b"]
    with pytest.raises(KeyError, match="zzz"):
        o.submit(["zzz"])


def test_answers_survive_a_restart_and_are_not_asked_again(tmp_path):
    inner = truth()
    first = PersistentOracle(inner, AnswerLog(tmp_path / "answers"))
    collect(first, ["a", "c"])
    second = PersistentOracle(inner, AnswerLog(tmp_path / "answers"))  # a new process after a kill
    got = collect(second, ["a", "b", "c"])
    assert inner.asked == ["a", "c", "b"]  # a and c came from disk
    assert got["c"].label == 1 and np.array_equal(got["c"].mask, truth()._lookup["c"][1])


def test_a_line_cut_by_a_kill_is_ignored(tmp_path):
    log = AnswerLog(tmp_path)
    log.record(Answer("a", 0, None))
    with open(log.path, "a") as fh:
        fh.write('{"sample_id": "b", "lab')  # the process died mid-write: never acknowledged
    reread = AnswerLog(tmp_path)
    assert "a" in reread and "b" not in reread


def test_an_answer_after_a_torn_line_survives_the_next_reopen(tmp_path):
    log = AnswerLog(tmp_path)
    log.record(Answer("a", 0, np.ones((2, 2), dtype=np.int64)))
    log.record(Answer("b", 1, None))
    with open(log.path, "a") as fh:
        fh.write('{"sample_id": "x", "lab')  # killed mid-line
    reopened = AnswerLog(tmp_path)
    reopened.record(Answer("c", 1, np.zeros((2, 2), dtype=np.int64)))  # acknowledged
    final = AnswerLog(tmp_path)
    assert [s for s in ("a", "b", "c", "x") if s in final] == ["a", "b", "c"]
    assert final.get("c").label == 1 and final.get("c").mask.sum() == 0 and final.get("a").mask.sum() == 4


class SlowOracle(Oracle):
    """Answers one query per poll, like an expert working through a queue."""

    def __init__(self):
        self.queue: list[str] = []

    def submit(self, sample_ids):
        self.queue += sample_ids

    def poll(self):
        if not self.queue:
            return {}
        sid = self.queue.pop(0)
        return {sid: Answer(sid, 1)}


def test_collect_waits_for_a_slow_oracle_and_times_out_on_a_silent_one():
    got = collect(SlowOracle(), ["x", "y", "z"], interval=0.001)
    assert list(got) == ["x", "y", "z"]

    class Silent(SlowOracle):
        def poll(self):
            return {}

    with pytest.raises(OracleTimeout, match="answered 0 of 2"):
        collect(Silent(), ["x", "y"], timeout=0.05, interval=0.01)
