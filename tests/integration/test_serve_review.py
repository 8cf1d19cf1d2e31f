"""The review list of the annotation server: the pseudo-labels that collaborative segmentation's quality control
flags, opened with the pseudo-label as the proposal, corrected (stored before the acknowledgement), and trained
on in place of the pseudo-label from the next cycle; none for generative active learning."""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from medloop.loop import CollaborativeConfig, ExperimentConfig, RunState
from medloop.serve import Runner, create_app
from tests.serve_support import AUTH, CARDIAC, CHEST, TOKEN, png, square, wait_for

pytestmark = pytest.mark.integration


def put(http, sample_id: str, mask: np.ndarray, params: dict | None = None):
    return http.put("/datastore/label", params={"image": sample_id}, headers=AUTH,
                    files={"label": ("l.png", png(mask), "image/png")}, data={"params": json.dumps(params or {})})


def answer_queue(http, runner: Runner, model_round: int | None) -> list[str]:
    """Wait for the queue the model of ``model_round`` asks (``None``: the initial set) and label it all."""
    def ready():
        status = http.get("/api/status", headers=AUTH).json()
        assert status["phase"] != "error", status["error"]
        return status["queue"] if status["model_round"] == model_round and status["queue"] else None

    ids = [q["id"] for q in wait_for(ready, what=f"the queue of model round {model_round}")]
    images = runner.plan.images
    for sid in ids:
        mask = images[images.sample_ids.index(sid)].mask.numpy().astype(np.uint8)
        assert put(http, sid, mask).status_code == 200
    return ids


def test_flagged_pseudo_labels_are_reviewed_stored_before_the_ack_and_trained_on(tmp_path):
    runner = Runner(CollaborativeConfig.from_dict({**CARDIAC, "qc_threshold": 1.0}), tmp_path / "run")
    recorded_0, reviewed = threading.Event(), threading.Event()
    observe = runner._observe

    def hold_after_round_0(event):  # the loop waits here until the correction is in: it then joins round 1
        observe(event)
        if event.name == "recorded" and event.round_idx == 0:
            recorded_0.set()
            assert reviewed.wait(60), "the test did not send its correction"

    runner._observe = hold_after_round_0
    runner.start()
    with TestClient(create_app(runner, TOKEN)) as http:
        assert http.get("/api/review", headers=AUTH).json() == {"items": [], "reviewed": 0}
        initial = answer_queue(http, runner, None)
        asked_0 = answer_queue(http, runner, 0)
        assert recorded_0.wait(60)
        folder = runner.plan.folder
        qc = json.loads((folder / "qc" / "round_000.json").read_text())
        items = http.get("/api/review", headers=AUTH).json()["items"]
        assert [i["id"] for i in items] == sorted(qc["flagged"], key=qc["predicted_dice"].get)  # lowest first
        assert items and len(items) == len(qc["predicted_dice"])  # threshold 1.0 flags every pseudo-label
        assert all(i["threshold"] == 1.0 and i["round"] == 0 and not i["reviewed"] for i in items)
        assert http.get("/api/status", headers=AUTH).json()["review"] == items
        sid = items[0]["id"]
        item = http.get(f"/api/item?image={sid}", headers=AUTH).json()
        pseudo = np.load(folder / "pseudo" / "round_000.npz")
        expected = pseudo["labels"][list(pseudo["ids"]).index(sid)]
        proposal = np.frombuffer(base64.b64decode(item["proposal"]), np.uint8).reshape(32, 32)
        assert np.array_equal(proposal, expected)  # the pseudo-label itself is the proposal
        assert item["review"]["predicted_dice"] == items[0]["predicted_dice"] and item["uncertainty"]

        correction = square((32, 32), value=2, at=8, size=10)
        r = put(http, sid, correction, {"client_id": "expert"})
        assert r.status_code == 200 and r.json()["review"] is True and r.json()["duplicate"] is False
        # durable before the acknowledgement: the log line and the label map are on disk when the 200 arrives
        store = runner.datastore.folder
        lines = [json.loads(line) for line in (store / "answers.jsonl").read_text().splitlines()]
        assert lines[-1]["image"] == sid and lines[-1]["info"]["review"] == {
            "predicted_dice": items[0]["predicted_dice"], "threshold": 1.0, "round": 0}
        assert np.array_equal(runner.datastore.label(sid, "final"), correction)
        assert put(http, sid, correction, {"client_id": "expert"}).json()["duplicate"] is True
        other = put(http, sid, square((32, 32), at=2), {"client_id": "someone"})
        assert other.status_code == 409 and "already has a final label (from expert)" in other.json()["detail"]
        status = http.get("/api/status", headers=AUTH).json()
        assert status["reviewed"] == 1 and status["labeled"] == len(initial) + len(asked_0)  # beyond the budget
        assert [i["reviewed"] for i in status["review"] if i["id"] == sid] == [True]
        reviewed.set()

        asked_1 = answer_queue(http, runner, 1)
        assert sid not in asked_1  # labeled before round 1 ranked: no strategy asks for it
        wait_for(lambda: runner.phase in ("finished", "error"), what="the end of the run")
        assert runner.error is None
        assert http.get("/api/review", headers=AUTH).json()["items"] == []  # no round left to train on one
    rounds = [json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
    assert [r["reviewed"] for r in rounds] == [[], [sid], []]
    assert rounds[2]["n_true"] == len(initial) + len(asked_0) + 1 + len(asked_1)
    qc_1 = json.loads((folder / "qc" / "round_001.json").read_text())
    assert sid not in qc_1["predicted_dice"]  # an expert label now, no pseudo-label
    # what round 2 trained on: the state replayed from the run folder, the correction in place of the pseudo-label
    state = RunState(folder, runner.oracle).restore(runner.plan.method.initial_ids())
    assert state.labeled == initial + asked_0 + [sid] + asked_1 and sid not in state.pseudo
    images, labels, weights = runner.plan.method._training_set(state)
    at = state.labeled.index(sid)
    assert np.array_equal(labels[at].numpy(), correction) and weights[at] == 1.0


def test_no_review_list_without_quality_control(tmp_path):
    runner = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run").start()
    with TestClient(create_app(runner, TOKEN)) as http:
        initial = answer_queue_chest(http, runner)
        wait_for(lambda: runner.model_round == 0 and runner.oracle.queue(), what="round 0's queue")
        assert http.get("/api/review", headers=AUTH).json() == {"items": [], "reviewed": 0}
        queued = {q["id"] for q in runner.oracle.queue()}
        outside = next(s for s in runner.plan.images.sample_ids if s not in queued and s not in initial)
        r = put(http, outside, square((32, 32)), {"class": 0})
        assert r.status_code == 409 and "not in the annotation queue" in r.json()["detail"]


def answer_queue_chest(http, runner: Runner) -> list[str]:
    ids = [q["id"] for q in wait_for(lambda: runner.oracle.queue(), what="the initial queue")]
    for sid in ids:
        assert put(http, sid, square((32, 32)), {"class": 1}).status_code == 200
    return ids
