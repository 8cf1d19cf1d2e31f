"""The served run's datastore: MONAI Label's layout, safe file names, answers durable and rebuilt on open."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medloop.data import Sample
from medloop.errors import DataError
from medloop.serve.datastore import Datastore, RequestError, read_png, to_uint8


def sample(sid: str, value: float = 0.5, shape=(8, 10)) -> Sample:
    image = torch.full((1, *shape), value)
    image[0, 0, 0] = 1.0
    return Sample(image, None, None, f"case-{sid}", sid, "test")


IDS = ["cxr-0001", "patient001_frame01:z03", "../../etc/passwd", "A", "a", ".hidden"]


@pytest.fixture
def store(tmp_path):
    return Datastore.open(tmp_path / "ds", [sample(s) for s in IDS], name="t", description="d")


def test_layout_and_index_follow_monai_label(store):
    index = json.loads(store.index_path.read_text())
    assert set(index) == {"name", "description", "images_dir", "labels_dir", "objects"}
    assert index["images_dir"] == "images" and index["labels_dir"] == "labels"
    obj = index["objects"]["cxr-0001"]
    assert obj["image"]["ext"] == ".png" and obj["labels"] == {}
    assert obj["image"]["info"]["name"] == "cxr-0001.png" and (obj["image"]["info"]["height"], obj["image"]["info"]["width"]) == (8, 10)
    assert (store.folder / "images" / "cxr-0001.png").is_file()
    for sub in ("labels/final", "labels/original", "uncertainty"):
        assert (store.folder / sub).is_dir()
    assert store.status() == {"total": len(IDS), "completed": 0, "label_tags": {}}


def test_file_names_are_safe_and_unique_whatever_the_ids(store):
    names = [store.path(s).name for s in IDS]
    assert len({n.lower() for n in names}) == len(IDS)  # A and a differ on case-insensitive file systems too
    for name in names:
        assert "/" not in name and ":" not in name and not name.startswith(".")
    for s in IDS:  # every file is inside the datastore
        assert store.path(s).resolve().is_relative_to(store.folder)
    assert read_png(store.path("../../etc/passwd")).shape == (8, 10)


@pytest.mark.parametrize("bad", ["../../etc/passwd2", "images/cxr-0001.png", "", "cxr-0001.png", "/etc/passwd"])
def test_unknown_ids_are_404(store, bad):
    with pytest.raises(RequestError, match="unknown image") as err:
        store.path(bad)
    assert err.value.status == 404


def test_a_label_that_does_not_exist_yet_is_404_and_an_unknown_tag_400(store):
    with pytest.raises(RequestError) as err:
        store.path("A", "final")
    assert err.value.status == 404
    with pytest.raises(RequestError) as err:
        store.path("A", "../../x")
    assert err.value.status == 400


def test_final_label_is_durable_and_indexed(store):
    mask = np.zeros((8, 10), np.uint8)
    mask[2:4, 3:6] = 2
    rec = store.record_final("patient001_frame01:z03", mask, None, {"client_id": "ann"})
    assert np.array_equal(store.label("patient001_frame01:z03", "final"), mask)
    assert [json.loads(l)["image"] for l in store.answers_path.read_text().splitlines()] == ["patient001_frame01:z03"]
    obj = store.json()["objects"]["patient001_frame01:z03"]
    assert obj["labels"]["final"]["info"]["client_id"] == "ann" and rec["digest"]
    assert store.status()["completed"] == 1 and store.datalist()[0]["label"].endswith(".png")


def test_the_index_follows_the_log_within_a_second(store):
    store.record_final("A", np.ones((8, 10), np.uint8), 1, {})
    assert store.wait_indexed(timeout=1.0)  # the background writer, not the test, rewrote the index
    assert "final" in json.loads(store.index_path.read_text())["objects"]["A"]["labels"]
    store.record_final("a", np.ones((8, 10), np.uint8), 1, {})  # and again after the first rewrite
    assert store.wait_indexed(timeout=1.0)
    assert "final" in json.loads(store.index_path.read_text())["objects"]["a"]["labels"]


def test_open_rebuilds_expert_labels_from_the_log(tmp_path, store):
    mask = np.ones((8, 10), np.uint8)
    store.record_final("A", mask, 1, {})
    store.flush()
    # a kill before the index caught up with the log: the index lacks the label, the log has it
    index = json.loads(store.index_path.read_text())
    index["objects"]["A"]["labels"] = {}
    index["objects"]["a"]["labels"]["final"] = {"ext": ".png", "info": {"name": "x"}}  # never acknowledged
    store.index_path.write_text(json.dumps(index))
    with open(store.answers_path, "ab") as fh:
        fh.write(b'{"image": "a", "tag": "fi')  # a torn last line: never acknowledged
    again = Datastore.open(store.folder, [sample(s) for s in IDS])
    assert set(again.answers) == {"A"} and again.answer("A")["class"] == 1
    objects = again.json()["objects"]
    assert "final" in objects["A"]["labels"] and "final" not in objects["a"]["labels"]
    assert np.array_equal(again.label("A", "final"), mask)


def test_a_damaged_index_is_a_data_error_naming_it(store):
    from medloop.errors import DataError

    store.index_path.write_text("{not json")
    with pytest.raises(DataError, match="datastore.json"):
        Datastore.open(store.folder)


def test_proposals_with_and_without_a_mask(store):
    from medloop.loop import Proposal

    u = np.linspace(0, 1, 80).reshape(8, 10)
    store.record_proposals({"A": Proposal(np.ones((8, 10), np.int64), np.array([0.2, 0.8]), u),
                            "a": Proposal(None, np.array([0.6, 0.4]), None)},
                           {"A": {"model_round": 0, "probs": {"x": 0.2}}, "a": {"model_round": 0}})
    assert np.array_equal(store.label("A", "original"), np.ones((8, 10)))
    assert abs(store.uncertainty("A").astype(float) / 255 - u).max() < 0.01
    assert store.proposal_info("A")["probs"] == {"x": 0.2} and store.proposal_info("a")["model_round"] == 0
    with pytest.raises(RequestError):
        store.path("a", "original")


def test_to_uint8_keeps_normalized_images_and_stretches_others():
    assert to_uint8(np.full((1, 2, 2), 0.5, np.float32)).tolist() == [[128, 128], [128, 128]]
    assert to_uint8(np.array([[[-1.0, 3.0]]])).tolist() == [[0, 255]]
    assert to_uint8(np.zeros((3, 2, 2))).shape == (2, 2, 3)


def test_partial_writes_left_by_a_kill_are_removed_on_open(store):
    import os
    import tempfile

    final = store.folder / "labels" / "final"
    # what a kill in the middle of storage.atomic_write leaves: its temporary file, named as it names them
    fd, _ = tempfile.mkstemp(dir=final, prefix=".A.png.", suffix=".tmp")
    os.write(fd, b"half a png")
    os.close(fd)
    fd, _ = tempfile.mkstemp(dir=store.folder, prefix=".datastore.json.", suffix=".tmp")
    os.close(fd)
    kept = [store.folder / ".notes.tmp", store.folder / "images" / "mine.tmp"]  # not atomic_write's: kept
    for path in kept:
        path.write_text("the user's")
    again = Datastore.open(store.folder, [sample(s) for s in IDS])
    assert not list(final.iterdir()) and not list(store.folder.glob(".datastore.json.*"))
    assert all(p.exists() for p in kept) and again.status()["completed"] == 0


def test_readers_wait_for_the_lock_a_writer_holds(store):
    import threading

    store.record_final("A", np.ones((8, 10), np.uint8), 1, {})
    results: dict[str, object] = {}
    readers = {"datalist": store.datalist, "answers": lambda: store.answers, "status": store.status,
               "answer": lambda: store.answer("A")}
    with store._lock:  # a request thread in the middle of adding an answer
        threads = [threading.Thread(target=lambda k=k, f=f: results.__setitem__(k, f())) for k, f in readers.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(0.2)
        assert not results  # every reader waits: none iterates the answers while they change
    for t in threads:
        t.join(5)
    assert set(results) == set(readers) and len(results["datalist"]) == 1


def test_reads_are_durable_in_safe_reader_folders_and_rebuilt_on_open(tmp_path, store):
    clients = ["ann1", "../../evil", "Ann1", "..", "radiologist B"]
    for i, client in enumerate(clients):
        store.record_read("../../etc/passwd", np.full((8, 10), i % 2, np.uint8), None, client, {"round": 0})
    folders = {r["file"].split("/")[2] for r in store.reads("../../etc/passwd")}
    assert len(folders) == len(clients) and "ann1" in folders  # distinct, whatever the case or characters
    reads_dir = (store.folder / "labels" / "reads").resolve()
    for rec in store.reads("../../etc/passwd"):
        path = (store.folder / rec["file"]).resolve()
        assert path.parent.parent == reads_dir and path.is_file()
        assert np.array_equal(store.read_label(rec), np.full((8, 10), clients.index(rec["client_id"]) % 2))
    assert store.answer("../../etc/passwd") is None and store.read_count == len(clients)  # a read is not an answer
    again = Datastore.open(tmp_path / "ds")
    assert [r["client_id"] for r in again.reads("../../etc/passwd")] == clients and again.reads("A") == []
    forged = {**again.reads("../../etc/passwd")[0], "file": "labels/reads/../../images/cxr-0001.png"}
    assert (again.folder / forged["file"]).is_file()  # a file that exists, outside the reads: refused all the same
    with pytest.raises(DataError, match="restore it from a copy"):
        again.read_label(forged)
