"""The annotation server with the loop running: both methods labeled to the end through the REST API, two
annotators at once, and kill -9 of the server process at several points, resumed with --resume; two readers per
image through a kill, trained on their consensus."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from medloop.loop import CollaborativeConfig, ExperimentConfig
from medloop.serve import Runner, create_app
from tests.serve_support import AUTH, CARDIAC, CHEST, TOKEN, LiveServer, png, square, wait_for

pytestmark = pytest.mark.integration


def label_for(runner: Runner, sample_id: str) -> tuple[np.ndarray, int | None]:
    """The stored mask and class of a pool image: what a careful annotator would paint."""
    ds = runner.plan.images
    s = ds[ds.sample_ids.index(sample_id)]
    return s.mask.numpy().astype(np.uint8), s.label


def annotate(http, label, who: str, strategy: str, log: list, stop_after: int | None = None) -> None:
    """Label whatever the queue offers (``label(id)``: mask and class, ``None`` for none) until the run finishes
    (or ``stop_after`` answers)."""
    done, deadline = 0, time.monotonic() + 600
    while stop_after is None or done < stop_after:
        assert time.monotonic() < deadline, f"{who}: the run did not finish within 600 s"
        nxt = http.post(f"/activelearning/{strategy}", headers=AUTH, json={"client_id": who}).json()
        if not nxt:
            if http.get("/api/status", headers=AUTH).json()["phase"] in ("finished", "error"):
                return
            time.sleep(0.05)
            continue
        mask, cls = label(nxt["id"])
        params = {"client_id": who, **({"class": cls} if cls is not None else {})}
        r = http.put("/datastore/label", params={"image": nxt["id"]}, headers=AUTH,
                     files={"label": ("l.png", png(mask), "image/png")}, data={"params": json.dumps(params)})
        log.append((nxt["id"], who, r.status_code, r.json()))
        done += r.status_code == 200


def check_track(runner: Runner) -> None:
    """The track's answer log (what the loop trained on) holds every acknowledged answer, once, unchanged."""
    lines = [json.loads(l) for l in (runner.plan.folder / "answers" / "answers.jsonl").read_text().splitlines()]
    ids = [l["sample_id"] for l in lines]
    assert len(ids) == len(set(ids))
    store = runner.datastore
    assert set(ids) == set(store.answers)
    for line in lines:
        logged = np.load(runner.plan.folder / "answers" / line["mask"])
        assert np.array_equal(logged, store.label(line["sample_id"], "final"))
        assert line["label"] == store.answer(line["sample_id"])["class"]


def test_method1_labeled_to_the_end_through_the_api(tmp_path):
    runner = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run").start()
    log: list = []
    with TestClient(create_app(runner, TOKEN)) as http:
        annotate(http, lambda sid: label_for(runner, sid), "ann", "uncertainty", log)
        status = http.get("/api/status", headers=AUTH).json()
        assert status["phase"] == "finished", status["error"]
        assert [m["round"] for m in status["metrics"]] == [0, 1, 2] and status["labeled"] == 12
        assert all(r[2] == 200 for r in log) and len(log) == 12
        # items asked after a retraining came with the model's proposal, its uncertainty and a score
        asked_later = [r[0] for r in log[4:]]
        for sid in asked_later:
            info = runner.datastore.proposal_info(sid)
            assert info["model_round"] in (0, 1) and set(info["probs"]) == {"normal", "nodule"}
            assert info["score"] is not None
        with_mask = [s for s in asked_later if "original" in runner.datastore.info(s)["labels"]]
        assert with_mask  # the segmenter trained at round 0 (the 10% stage)
        item = http.get(f"/api/item?image={with_mask[0]}", headers=AUTH).json()
        proposal = np.frombuffer(base64.b64decode(item["proposal"]), np.uint8)
        uncertainty = np.frombuffer(base64.b64decode(item["uncertainty"]), np.uint8)
        assert set(np.unique(proposal)) <= {0, 1} and proposal.size == uncertainty.size == 32 * 32
        assert abs(sum(item["probs"].values()) - 1) < 1e-3
        r = http.post(f"/infer/mahapatra2018?image={with_mask[0]}", headers=AUTH)
        assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/form-data")
        assert b'name="params"' in r.content and b"\x89PNG" in r.content
        params = http.post(f"/infer/mahapatra2018?image={with_mask[0]}&output=json", headers=AUTH).json()
        assert params["model_round"] == 2 and set(params["class_probabilities"]) == {"normal", "nodule"}
    check_track(runner)
    rounds = [json.loads(l) for l in (runner.plan.folder / "rounds.jsonl").read_text().splitlines()]
    assert [len(r["queried"]) for r in rounds] == [4, 4, 0] and rounds[-1]["stop"] == "max_rounds"
    assert {runner.datastore.answer(s)["info"]["round"] for s in runner.plan.method.initial_ids()} == {None}
    again = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run", resume=True).start()  # a finished run
    wait_for(lambda: again.phase == "finished", what="the finished run")
    assert again.infer(with_mask[0])[0] == 2 and sorted(again.metrics) == [0, 1, 2] and not again.oracle.queue()


def test_method2_with_two_annotators_at_once(tmp_path):
    runner = Runner(CollaborativeConfig.from_dict(CARDIAC), tmp_path / "run").start()
    server = LiveServer(create_app(runner, TOKEN))
    log: list = []
    try:
        clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(2)]
        sid = wait_for(lambda: runner.oracle.queue() and runner.oracle.queue()[0]["id"], what="the initial queue")
        mask, _ = label_for(runner, sid)
        r = clients[0].put("/datastore/label", params={"image": sid}, headers=AUTH,
                           files={"label": ("l.png", png(mask), "image/png")}, data={"params": '{"class": 1}'})
        assert r.status_code == 422 and "no image classes" in r.json()["detail"]
        threads = [threading.Thread(target=annotate, args=(c, lambda sid: (label_for(runner, sid)[0], None),
                                                           f"ann{i}", "discriminator", log))
                   for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        status = clients[0].get("/api/status", headers=AUTH).json()
    finally:
        server.stop()
    assert status["phase"] == "finished", status["error"]
    ok = [r for r in log if r[2] == 200]
    assert {r[1] for r in ok} == {"ann0", "ann1"}  # both worked
    assert len(ok) == len({r[0] for r in ok}) == status["labeled"] == runner.plan.budget  # no label twice
    assert all(r[2] in (200, 409) for r in log)
    check_track(runner)
    later = [r[0] for r in ok if runner.datastore.proposal_info(r[0])]
    assert later  # queued after a retraining: G's mask and the discriminator's map
    for sid in later:
        u = runner.datastore.uncertainty(sid)
        assert u.shape == (32, 32) and "original" in runner.datastore.info(sid)["labels"]


# ------------------------------------------------------------------------------------------ kill -9, resume


class Served:
    """``medloop serve`` as a separate process."""

    def __init__(self, config: Path, out: Path, *extra: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "medloop.cli", "serve", str(config), "--out", str(out),
                                      "--port", "0", "--token", TOKEN, "--lease", "10", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if "?token=" in line:
                self.url = line.strip().split("/?token=")[0]
                break
        else:
            raise AssertionError(f"the server did not start: {''.join(lines)} {self.proc.stderr.read()}")
        self.http = httpx.Client(base_url=self.url, headers=AUTH, timeout=30)

    def status(self) -> dict:
        return self.http.get("/api/status").json()

    def put(self, sample_id: str, mask: np.ndarray, cls: int | None, who: str = "ann") -> httpx.Response:
        return self.http.put("/datastore/label", params={"image": sample_id},
                             files={"label": ("l.png", png(mask), "image/png")},
                             data={"params": json.dumps({"class": cls, "client_id": who})})

    def kill(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


def test_kill_9_at_any_point_loses_and_duplicates_nothing(tmp_path):
    config = tmp_path / "chest.yaml"
    config.write_text(yaml.safe_dump(CHEST))
    out = tmp_path / "run"
    acked: dict[str, np.ndarray] = {}

    def answer(served: Served, sid: str) -> None:
        mask = square((32, 32), value=1, at=2 + len(acked) % 20)
        r = served.put(sid, mask, len(acked) % 2)
        assert r.status_code == 200, r.text
        acked[sid] = mask

    served = Served(config, out)
    initial = [q["id"] for q in wait_for(lambda: served.status()["queue"], what="the initial queue")]
    for sid in initial[:2]:
        answer(served, sid)
    served.kill()  # 1: in the middle of a batch

    again = subprocess.run([sys.executable, "-m", "medloop.cli", "serve", str(config), "--out", str(out), "--port", "0"],
                           capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 2 and "--resume" in again.stderr

    partial = out / "datastore" / "labels" / "final" / f".{initial[2]}.png.k9x2ab_q.tmp"
    partial.write_bytes(b"\x89PNG half of an upload")  # what a kill in the middle of writing a label leaves
    served = Served(config, out, "--resume")
    assert not partial.exists()  # removed on start: never acknowledged, never referred to
    assert [q["id"] for q in served.status()["queue"]] == initial[2:]  # open at once, in order
    repeat = served.put(initial[0], acked[initial[0]], 0)  # a client retrying an answer acknowledged before the kill
    assert repeat.status_code == 200 and repeat.json()["duplicate"] is True
    for sid in initial[2:]:
        answer(served, sid)
    busy = ("training", "ranking", "preparing proposals")
    wait_for(lambda: served.status()["phase"] in busy, interval=0.01, what="round 0's training")
    served.kill()  # 2: while the model retrains (or ranks the pool with the new model)

    served = Served(config, out, "--resume")
    batch = wait_for(lambda: (s := served.status())["model_round"] == 0 and s["phase"] == "waiting for labels"
                     and s["queue"], what="round 0's queue")
    asked = [q["id"] for q in batch]
    assert not set(asked) & set(acked)
    answer(served, asked[0])
    served.kill()  # 3: in the middle of a batch the model asked for

    served = Served(config, out, "--resume")
    assert [q["id"] for q in served.status()["queue"]] == asked[1:]  # the persisted queue, before any retraining
    wait_for(lambda: (s := served.status())["model_round"] == 0 and s["phase"] == "waiting for labels",
             what="the resumed round 0")
    assert [q["id"] for q in served.status()["queue"]] == asked[1:]  # the resumed round asks exactly the same
    deadline = time.monotonic() + 600
    while (status := served.status())["phase"] != "finished":
        assert status["phase"] != "error", status["error"]
        assert time.monotonic() < deadline, "the resumed run did not finish within 600 s"
        queue = [q["id"] for q in status["queue"]]
        if queue:
            answer(served, queue[0])
        else:
            time.sleep(0.05)
    served.kill()

    store_lines = [json.loads(l) for l in (out / "datastore" / "answers.jsonl").read_text().splitlines()]
    assert sorted(l["image"] for l in store_lines) == sorted(acked)  # every acknowledged label, once
    track = out / "tracks" / "uncertainty-seed0"
    track_lines = [json.loads(l) for l in (track / "answers" / "answers.jsonl").read_text().splitlines()]
    assert sorted(l["sample_id"] for l in track_lines) == sorted(acked)
    for line in track_lines:
        assert np.array_equal(np.load(track / "answers" / line["mask"]), acked[line["sample_id"]])
    index = json.loads((out / "datastore" / "datastore.json").read_text())["objects"]
    assert {s for s, o in index.items() if "final" in o["labels"]} == set(acked)
    rounds = [json.loads(l) for l in (track / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert sorted(s for r in rounds for s in r["queried"]) == sorted(set(acked) - set(initial))


def test_two_readers_per_image_through_a_kill_and_resume(tmp_path):
    config = tmp_path / "chest.yaml"
    config.write_text(yaml.safe_dump(CHEST))
    out = tmp_path / "run"
    # the two annotators paint overlapping squares and choose classes that differ on every third image
    read = {"ann1": lambda sid: (square((32, 32), at=4, size=10), 1),
            "ann2": lambda sid: (square((32, 32), at=6, size=10), int(sum(map(ord, sid)) % 3 != 0))}

    def answer(served: Served, who: str, sid: str) -> httpx.Response:
        mask, cls = read[who](sid)
        return served.put(sid, mask, cls, who)

    served = Served(config, out, "--reads-per-image", "2")
    initial = [q["id"] for q in wait_for(lambda: served.status()["queue"], what="the initial queue")]
    assert [answer(served, w, s).json()["reads"] for w, s in [("ann1", initial[0]), ("ann1", initial[1]),
                                                              ("ann2", initial[0])]] == [1, 1, 2]
    served.kill()  # initial[0] has its consensus, initial[1] one of its two reads

    again = subprocess.run([sys.executable, "-m", "medloop.cli", "serve", str(config), "--out", str(out), "--port", "0",
                            "--resume", "--reads-per-image", "3"], capture_output=True, text=True, timeout=120,
                           check=False)
    assert again.returncode == 2 and "2 read(s) per image" in again.stderr
    served = Served(config, out, "--resume")  # the run's reads per image come with it
    status = served.status()
    assert status["reads_per_image"] == 2 and status["labeled"] == 1 and status["reads"] == 3
    assert {q["id"]: q["reads"] for q in status["queue"]} == {initial[1]: 1, initial[2]: 0, initial[3]: 0}
    assert answer(served, "ann1", initial[1]).json()["duplicate"] is True  # acknowledged before the kill
    nxt = served.http.post("/activelearning/uncertainty", json={"client_id": "ann1"}).json()
    assert nxt["id"] == initial[2]  # never initial[1] again for ann1

    log: list = []
    clients = {who: httpx.Client(base_url=served.url, timeout=30) for who in read}
    threads = [threading.Thread(target=annotate, args=(clients[who], read[who], who, "uncertainty", log), daemon=True)
               for who in read]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(r[2] == 200 for r in log), [r for r in log if r[2] != 200][:3]
    status = served.status()
    agreement = served.http.get("/api/agreement").json()
    served.kill()
    assert status["phase"] == "finished", status["error"]
    store = out / "datastore"
    finals = {l["image"]: l for l in map(json.loads, (store / "answers.jsonl").read_text().splitlines())}
    reads = [json.loads(l) for l in (store / "reads.jsonl").read_text().splitlines()]
    assert len(finals) == status["labeled"] == 12 and len(reads) == 2 * len(finals) == status["reads"]
    for sid, final in finals.items():
        readers = [r["client_id"] for r in reads if r["image"] == sid]
        assert sorted(readers) == ["ann1", "ann2"]  # two different annotators, each once
        assert final["class"] == min(read["ann1"](sid)[1], read["ann2"](sid)[1])
    track = out / "tracks" / "uncertainty-seed0"
    track_lines = [json.loads(l) for l in (track / "answers" / "answers.jsonl").read_text().splitlines()]
    assert sorted(l["sample_id"] for l in track_lines) == sorted(finals)
    both = square((32, 32), at=6, size=8)  # where the two squares overlap: the consensus
    for line in track_lines:  # the loop trained on the consensus
        assert np.array_equal(np.load(track / "answers" / line["mask"]), both)
    lung = 2 * 64 / (100 + 100)
    assert [(a["annotator"], a["pairs"]) for a in agreement["annotators"]] == [("ann1", 12), ("ann2", 12)]
    assert agreement["annotators"][0]["dice"]["lung"] == pytest.approx(lung)
    differ = {sid for sid in finals if sum(map(ord, sid)) % 3 == 0}
    assert 0 < len(differ) < len(finals)
    assert {im["image"] for im in agreement["most_disagreement"][:len(differ)]} == differ
    report = (out / "agreement.md").read_text()
    assert "| ann1 | 12 |" in report and "Images with the most disagreement" in report
