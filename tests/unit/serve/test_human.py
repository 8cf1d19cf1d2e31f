"""The human oracle: a persisted queue in the strategy's order, leases, durable and idempotent answers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from medloop.data import Sample
from medloop.loop import AnswerLog, PersistentOracle, collect
from medloop.serve.datastore import Datastore, RequestError
from medloop.serve.human import Batch, HumanOracle

IDS = [f"img-{i}" for i in range(6)]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def open_store(folder) -> Datastore:
    return Datastore.open(folder, [Sample(torch.rand(1, 4, 4), None, None, s, s, "t") for s in IDS])


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def oracle(tmp_path, clock):
    prepared = []

    def prepare(ids):
        prepared.append(list(ids))
        return Batch(3, {s: 10.0 - i for i, s in enumerate(ids)})

    o = HumanOracle(open_store(tmp_path / "ds"), lease_seconds=30, prepare=prepare, clock=clock)
    o.prepared = prepared
    return o


def mask(value: int = 1) -> np.ndarray:
    m = np.zeros((4, 4), np.uint8)
    m[1:3, 1:3] = value
    return m


def test_submit_queues_in_order_and_poll_returns_each_answer_once(oracle):
    oracle.submit(["img-2", "img-0", "img-4"])
    assert oracle.prepared == [["img-2", "img-0", "img-4"]]
    assert [q["id"] for q in oracle.queue()] == ["img-2", "img-0", "img-4"]
    assert [q["score"] for q in oracle.queue()] == [10.0, 9.0, 8.0] and oracle.queue()[0]["round"] == 3
    assert oracle.poll() == {}
    oracle.answer("img-0", mask(), 1, "ann")
    got = oracle.poll()
    assert list(got) == ["img-0"] and got["img-0"].label == 1 and got["img-0"].mask.dtype == np.int64
    assert got["img-0"].pixels == 4
    assert oracle.poll() == {}  # once
    assert [q["id"] for q in oracle.queue()] == ["img-2", "img-4"]


def test_leases_give_each_annotator_another_item_until_they_expire(oracle, clock):
    oracle.submit(["img-1", "img-2"])
    a = oracle.lease("a")
    b = oracle.lease("b")
    assert (a["id"], b["id"]) == ("img-1", "img-2") and a["yours"] and a["leased_by"] == "a"
    assert oracle.lease("c") is None  # everything is leased
    assert oracle.lease("a")["id"] == "img-1"  # asking again returns the item one holds
    with pytest.raises(RequestError, match="another annotator") as err:
        oracle.answer("img-1", mask(), 0, "b")
    assert err.value.status == 409
    clock.now += 31  # a's lease expires
    assert oracle.lease("c")["id"] == "img-1"
    with pytest.raises(RequestError):
        oracle.answer("img-1", mask(), 0, "a")
    record, created = oracle.answer("img-1", mask(), 0, "c")
    assert created and record["info"]["client_id"] == "c"


def test_skip_puts_the_item_last_for_that_annotator(oracle):
    oracle.submit(["img-1", "img-2", "img-3"])
    assert oracle.lease("a")["id"] == "img-1"
    oracle.release("a", "img-1")
    assert oracle.lease("a")["id"] == "img-2"  # moving on releases the previous lease
    assert oracle.lease("b")["id"] == "img-1"  # another annotator gets the skipped item first
    oracle.release("b", "img-1")
    oracle.answer("img-2", mask(), 0, "a")
    assert oracle.lease("a")["id"] == "img-3"
    oracle.answer("img-3", mask(), 0, "a")
    assert oracle.lease("a")["id"] == "img-1"  # only the skipped one is left


def test_answers_are_final_the_same_answer_twice_is_one_answer(oracle):
    oracle.submit(["img-1"])
    first, created = oracle.answer("img-1", mask(), 1, "a")
    again, created_again = oracle.answer("img-1", mask(), 1, "b")
    assert created and not created_again and again == first
    with pytest.raises(RequestError, match="already has a final label") as err:
        oracle.answer("img-1", mask(2), 1, "b")
    assert err.value.status == 409
    assert len(oracle.datastore.answers_path.read_text().splitlines()) == 1


def test_an_image_nobody_asked_about_is_refused(oracle):
    with pytest.raises(RequestError, match="not in the annotation queue") as err:
        oracle.answer("img-5", mask(), 0, "a")
    assert err.value.status == 409
    with pytest.raises(RequestError, match="unknown image"):
        oracle.answer("../img-5", mask(), 0, "a")


def test_queue_and_answers_survive_a_restart_and_are_not_asked_twice(tmp_path, clock):
    store = open_store(tmp_path / "ds")
    first = HumanOracle(store, prepare=lambda ids: Batch(0, {}), clock=clock)
    persistent = PersistentOracle(first, AnswerLog(tmp_path / "track" / "answers"))
    persistent.submit(["img-1", "img-2", "img-3"])
    first.answer("img-1", mask(), 1, "a")
    assert set(persistent.poll()) == {"img-1"}  # in the track's log
    first.answer("img-2", mask(), 0, "a")  # acknowledged, but the loop never polled it: then a kill
    # restart: the unanswered item is open at once, before the loop asks again
    second = HumanOracle(open_store(tmp_path / "ds"), prepare=lambda ids: Batch(0, {}), clock=clock)
    assert [q["id"] for q in second.queue()] == ["img-3"]
    second.answer("img-3", mask(), 0, "b")
    persistent = PersistentOracle(second, AnswerLog(tmp_path / "track" / "answers"))
    answers = collect(persistent, ["img-1", "img-2", "img-3"], timeout=1, interval=0.01)
    assert {s: a.label for s, a in answers.items()} == {"img-1": 1, "img-2": 0, "img-3": 0}
    lines = (tmp_path / "track" / "answers" / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 3  # each answer logged once
    assert len(store.answers_path.read_text().splitlines()) == 3


def test_a_restarted_queue_drops_what_the_resumed_loop_no_longer_asks(tmp_path, clock):
    first = HumanOracle(open_store(tmp_path / "ds"), clock=clock)
    first.submit(["img-1", "img-2"])
    second = HumanOracle(open_store(tmp_path / "ds"), clock=clock)
    second.submit(["img-2", "img-4"])
    assert [q["id"] for q in second.queue()] == ["img-2", "img-4"]


def test_concurrent_answers_never_mix_or_duplicate(oracle):
    oracle.submit(IDS)
    results: list = []

    def annotate(client: str, value: int):
        for s in IDS:
            try:
                results.append((s, client, oracle.answer(s, mask(value), value, client)[1]))
            except RequestError as exc:
                results.append((s, client, exc.status))

    threads = [threading.Thread(target=annotate, args=(f"c{v}", v)) for v in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = oracle.datastore
    lines = store.answers_path.read_text().splitlines()
    assert len(lines) == len(IDS) == len(set(store.answers))  # one answer per image
    for s in IDS:
        winner = [c for (sid, c, r) in results if sid == s and r is True]
        assert len(winner) == 1  # everyone else got 409
        value = int(winner[0][1:])
        assert store.answer(s)["class"] == value and np.array_equal(store.label(s, "final"), mask(value))


def test_an_item_answered_while_the_resumed_loop_prepares_its_batch_does_not_come_back(tmp_path, clock):
    first = HumanOracle(open_store(tmp_path / "ds"), clock=clock)
    first.submit(["img-1", "img-2", "img-3"])
    second = HumanOracle(open_store(tmp_path / "ds"), clock=clock)  # restarted: the queue is open at once

    def prepare(ids):  # the proposals take a while; an annotator answers from the persisted queue meanwhile
        second.answer("img-2", mask(), 0, "a")
        return Batch(0, {})

    second.prepare = prepare
    second.submit(["img-1", "img-2", "img-3"])
    assert [q["id"] for q in second.queue()] == ["img-1", "img-3"]
    assert second.lease("b")["id"] == "img-1" and second.lease("c")["id"] == "img-3" and second.lease("d") is None
    assert set(second.poll()) == {"img-2"}
