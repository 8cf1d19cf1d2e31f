"""The human oracle: a persisted queue in the strategy's order, leases, durable and idempotent answers."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from medloop.data import Sample
from medloop.errors import ConfigError
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


def answer_at_once(oracle: HumanOracle, ids: list[str], cls) -> list[tuple[str, str, bool | int]]:
    """Annotators c1, c2, c3 answer ``ids`` in order from three threads (mask value v, class ``cls(v)``);
    returns (id, client, created or the refusal's status) of every attempt."""
    results: list = []

    def annotate(client: str, value: int):
        for s in ids:
            try:
                results.append((s, client, oracle.answer(s, mask(value), cls(value), client)[1]))
            except RequestError as exc:
                results.append((s, client, exc.status))

    threads = [threading.Thread(target=annotate, args=(f"c{v}", v)) for v in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_answers_never_mix_or_duplicate(oracle):
    oracle.submit(IDS)
    results = answer_at_once(oracle, IDS, lambda v: v)
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


# ------------------------------------------------------------------------------------ several readers per image


@pytest.fixture
def two_reads(tmp_path, clock):
    return HumanOracle(open_store(tmp_path / "ds"), lease_seconds=30, prepare=lambda ids: Batch(2, {}), clock=clock,
                       reads_per_image=2, labels={"lung": 1, "heart": 2})


def test_each_image_goes_to_distinct_annotators_and_the_loop_gets_their_consensus(two_reads):
    oracle, store = two_reads, two_reads.datastore
    oracle.submit(["img-1", "img-2"])
    assert oracle.lease("a")["id"] == "img-1" and oracle.lease("b")["id"] == "img-1"  # two reads: two leases
    assert oracle.lease("c")["id"] == "img-2"  # both reads of img-1 are taken
    with pytest.raises(RequestError, match="2 other annotators") as err:
        oracle.lease("c", "img-1")
    assert err.value.status == 409
    big, small = mask(), np.zeros((4, 4), np.uint8)
    small[1, 1] = 1
    record, created = oracle.answer("img-1", big, 1, "a")
    assert created and record["client_id"] == "a" and oracle.reads_of("img-1") == 1
    assert oracle.poll() == {} and store.answer("img-1") is None  # one read is not an answer
    view = oracle.queue("a")[0]
    assert view["reads"] == 1 and view["read_by_you"] and not view["open"] and not view["yours"]
    assert oracle.lease("a")["id"] == "img-2"  # never the same image twice
    with pytest.raises(RequestError, match="already labeled image 'img-1'"):
        oracle.lease("a", "img-1")
    assert oracle.answer("img-1", big, 1, "a") == (record, False)  # a retry is one read
    with pytest.raises(RequestError, match="already labeled"):
        oracle.answer("img-1", small, 1, "a")
    oracle.answer("img-1", small, 0, "b")
    got = oracle.poll()
    assert list(got) == ["img-1"] and got["img-1"].label == 0  # a class tie goes to the lower class
    assert np.array_equal(got["img-1"].mask, small)  # the pixels both painted
    final = store.answer("img-1")
    assert [r["client_id"] for r in final["info"]["reads"]] == ["a", "b"]
    assert final["info"]["agreement"]["dice"] == {"lung": pytest.approx(2 / 5), "heart": None}
    assert final["info"]["agreement"]["class_agreement"] == 0.0
    assert np.array_equal(store.read_label(store.reads("img-1")[0]), big)
    assert (store.folder / "labels" / "reads" / "a" / "img-1.png").is_file()
    assert len(store.reads_path.read_text().splitlines()) == 2
    assert len(store.answers_path.read_text().splitlines()) == 1
    assert oracle.answer("img-1", small, 0, "b")[1] is False  # b's retry after the consensus: still one read
    with pytest.raises(RequestError, match="already has its 2 reads"):
        oracle.answer("img-1", small, 0, "c")
    assert [q["id"] for q in oracle.queue()] == ["img-2"]


def test_reads_and_a_consensus_cut_short_by_a_kill_survive_a_restart(tmp_path, clock):
    store = open_store(tmp_path / "ds")
    first = HumanOracle(store, prepare=lambda ids: Batch(0, {}), clock=clock, reads_per_image=2)
    first.submit(["img-1", "img-2"])
    first.answer("img-1", mask(), 1, "a")
    store.record_read("img-2", mask(), 1, "a", {"round": 0})  # both reads of img-2 are in; then a kill, before
    store.record_read("img-2", mask(2), 1, "b", {"round": 0})  # their consensus was stored
    second = HumanOracle(open_store(tmp_path / "ds"), clock=clock, reads_per_image=2)
    assert [q["id"] for q in second.queue()] == ["img-1"]  # img-2 has its answer: the consensus made on start
    final = second.datastore.answer("img-2")
    assert final["class"] == 1 and final["info"]["agreement"]["dice"] == {"1": 0.0, "2": 0.0}
    assert [r["client_id"] for r in second.datastore.reads("img-1")] == ["a"]
    assert second.lease("a") is None  # a read img-1 before the restart
    assert second.lease("b")["id"] == "img-1"
    second.submit(["img-1", "img-2"])
    second.answer("img-1", mask(), 1, "b")
    assert set(second.poll()) == {"img-1", "img-2"}


def test_concurrent_reads_never_come_twice_from_one_annotator_or_exceed_the_reads(tmp_path, clock):
    oracle = HumanOracle(open_store(tmp_path / "ds"), lease_seconds=30, clock=clock, reads_per_image=2)
    oracle.submit(IDS)
    results = answer_at_once(oracle, IDS * 2, lambda v: v % 2)
    store = oracle.datastore
    assert len(store.answers_path.read_text().splitlines()) == len(IDS)
    assert len(store.reads_path.read_text().splitlines()) == 2 * len(IDS)
    for s in IDS:
        readers = [r["client_id"] for r in store.reads(s)]
        assert len(readers) == len(set(readers)) == 2
        assert sorted(c for (sid, c, r) in results if sid == s and r is True) == sorted(readers)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_reads_per_image_must_be_an_integer_of_at_least_one(tmp_path, bad):
    with pytest.raises(ConfigError, match=r"'reads_per_image' setting \(medloop serve --reads-per-image\) must be an "
                                          r"integer >= 1.*use 1 for one annotator"):
        HumanOracle(open_store(tmp_path / "ds"), reads_per_image=bad)


@pytest.mark.parametrize("reads_per_image", [1, 2])
def test_a_correction_of_a_flagged_pseudo_label_is_stored_once_and_handed_to_the_loop_when_asked(tmp_path, clock,
                                                                                                 reads_per_image):
    store = open_store(tmp_path / "ds")
    o = HumanOracle(store, lease_seconds=30, clock=clock, reads_per_image=reads_per_image)
    o.submit(["img-1"])
    flagged = {s: {"predicted_dice": d, "threshold": 0.7, "round": 0} for s, d in [("img-3", 0.2), ("img-1", 0.4),
                                                                                  ("img-5", 0.6)]}
    o.offer_review(flagged)
    assert [r["id"] for r in o.reviews()] == ["img-3", "img-5"]  # img-1 is queued: labeled there
    with pytest.raises(RequestError, match="not in the annotation queue"):
        o.answer("img-4", mask(), None, "a")  # neither asked for nor flagged
    record, created = o.answer("img-3", mask(2), None, "a")
    assert created and record["info"]["review"] == flagged["img-3"] and record["info"]["client_id"] == "a"
    assert o.answer("img-3", mask(2), None, "b") == (record, False)  # the same correction again
    with pytest.raises(RequestError, match="already has a final label") as refused:
        o.answer("img-3", mask(1), None, "b")
    assert refused.value.status == 409
    assert [(r["id"], r["reviewed"]) for r in o.reviews()] == [("img-3", True), ("img-5", False)]
    assert o.reviewed() == ["img-3"] and o.queue()[0]["id"] == "img-1"
    reopened = HumanOracle(open_store(tmp_path / "ds"), lease_seconds=30, clock=clock, reads_per_image=reads_per_image)
    assert reopened.reviewed() == ["img-3"]  # durable: answers.jsonl
    persistent = PersistentOracle(reopened, AnswerLog(tmp_path / "track"))
    got = collect(persistent, persistent.reviewed(), timeout=1, interval=0.01)
    assert np.array_equal(got["img-3"].mask, mask(2))
    assert [q["id"] for q in reopened.queue()] == ["img-1"]  # asking for a correction leaves the restored queue
