"""Annotation-server load: concurrent annotators, kill -9 of the server, restarts with --resume.

Runs ``medloop serve`` (method 1 on a phantom chest X-ray pool) as a separate process and --annotators threads
that each label what the queue offers (POST /activelearning, GET /api/item, PUT /datastore/label, as the UI does),
with no think time, until each has --per-annotator acknowledged labels or the run finishes. The server is killed
with SIGKILL --kills times: early in a batch (the resumed round then retrains while the annotators go on with the
persisted queue), while the model retrains, and early in a later batch while a label is on its way; each time it
is restarted on the same port with --resume, and an annotator whose request died with the server sends the same
label again (stored before the kill: acknowledged as a duplicate; not stored: stored now).

At the end every acknowledged label (by the hash of its mask and class) is looked up in the datastore's answer log
and in the track's answer log, which the loop trained on: ``lost`` counts acknowledged labels missing or changed,
``duplicated`` counts images stored twice in either log.

    python benchmarks/annotation_load.py [--annotators 2] [--per-annotator 200] [--kills 3] [--out DIR]

Final line (JSON): submissions_per_s (acknowledged / wall time, retraining and restarts included), p50_ms, p95_ms,
max_ms (PUT /datastore/label), p95_ms_while_training and n_while_training (submissions that started while the
loop trained or ranked), acknowledged, lost, duplicated, kills, per_annotator, rounds, wall_s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from medloop.serve.datastore import label_digest

TOKEN = "load-benchmark-token"
BUSY = ("training", "ranking", "preparing proposals", "pseudo-labeling")


def experiment(n_per_class: int, per_annotator: int, annotators: int) -> dict:
    """A pool large enough for every annotator's labels: 20 initial images, then rounds of 100 queries."""
    rounds = -(-(per_annotator * annotators - 20) // 100)
    return {
        "name": "annotation-load",
        "data": {"source": "builtin:chest-xray", "size": 32, "options": {"n_normal": n_per_class, "n_nodule": n_per_class}},
        "seeds": [0],
        "classifier": {"model": "resnet18", "model_params": {"width": 8}, "epochs": 2, "batch_size": 16, "patience": 0},
        "segmenter": {"epochs": 2, "batch_size": 16, "model_params": {"channels": [4, 8, 8, 8]}},
        "strategies": [{"name": "class_balanced", "label": "uncertainty"}],
        "initial_per_class": 10, "query_per_class": 50, "augment_copies": 2, "n_mc_samples": 5,
        "record_at": [0.04], "budget": 0.98, "max_rounds": rounds, "round_patience": 0,
        "fsl_folds": 0, "random_subset_draws": 1,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``medloop serve`` on a fixed port, killed with SIGKILL and restarted with --resume."""

    def __init__(self, config: Path, out: Path, port: int):
        self.config, self.out, self.port = config, out, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.kills = 0
        self.up = threading.Event()

    def start(self, resume: bool) -> None:
        cmd = [sys.executable, "-m", "medloop.cli", "serve", str(self.config), "--out", str(self.out), "--port",
               str(self.port), "--token", TOKEN, "--lease", "20"] + (["--resume"] if resume else [])
        with open(self.out.parent / "server.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/health/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {self.out.parent / 'server.log'}")
            time.sleep(0.1)
        self.up.set()

    def kill(self) -> None:
        self.up.clear()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Annotator(threading.Thread):
    """Labels the queue as fast as the server allows; retries a label whose request died with the server."""

    def __init__(self, name: str, server: Server, target: int, shared: dict):
        super().__init__(name=name, daemon=True)
        self.server, self.target, self.shared = server, target, shared
        self.acked: dict[str, str] = {}  # image -> digest
        self.latencies: list[tuple[float, bool]] = []  # (seconds, started while the loop was busy)
        self.retries = 0
        self.duplicates = 0
        self.in_put = False  # a label is on its way: a kill now may land before or after it is stored
        self.error: str | None = None

    def label(self, sample_id: str, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
        seed = int(hashlib.sha1(sample_id.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng(seed)
        mask = np.zeros(shape, np.uint8)
        y, x = rng.integers(2, shape[0] - 10, 2)
        mask[y:y + 8, x:x + 8] = 1
        return mask, int(seed % 2)

    def request(self, http: httpx.Client, method: str, path: str, **kwargs) -> tuple[httpx.Response, float]:
        """The response and the seconds its (last) attempt took."""
        while True:
            self.server.up.wait()
            t0 = time.perf_counter()
            try:
                return http.request(method, path, **kwargs), time.perf_counter() - t0
            except httpx.TransportError:
                self.retries += 1
                time.sleep(0.2)  # the server was killed: wait for it to come back, then send the same again

    def run(self) -> None:
        import io

        from PIL import Image

        http = httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        while len(self.acked) < self.target and not self.shared["finished"]:
            nxt = self.request(http, "POST", "/activelearning/uncertainty", json={"client_id": self.name})[0].json()
            if not nxt:
                time.sleep(0.05)
                continue
            item = self.request(http, "GET", "/api/item", params={"image": nxt["id"]})[0].json()
            mask, cls = self.label(nxt["id"], (item["height"], item["width"]))
            buffer = io.BytesIO()
            Image.fromarray(mask).save(buffer, format="PNG")
            busy = self.shared["phase"] in BUSY
            self.in_put = True
            r, elapsed = self.request(http, "PUT", "/datastore/label", params={"image": nxt["id"]},
                                      files={"label": ("label.png", buffer.getvalue(), "image/png")},
                                      data={"params": json.dumps({"class": cls, "client_id": self.name})})
            self.in_put = False
            if r.status_code == 200:
                self.latencies.append((elapsed, busy))
                if r.json()["duplicate"]:  # a label sent again after a kill, stored before it
                    self.duplicates += 1
                    continue
                self.acked[nxt["id"]] = label_digest(mask, cls)
                with self.shared["lock"]:
                    self.shared["acked"] += 1
            elif r.status_code != 409:  # 409: another annotator took it meanwhile
                self.error = f"{self.name}: {r.status_code} {r.text}"
                return
        http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=2)
    parser.add_argument("--per-annotator", type=int, default=200)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: a temporary one).")
    args = parser.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="medloop-load-"))
    work.mkdir(parents=True, exist_ok=True)
    total = args.per_annotator * args.annotators
    n_per_class = int(np.ceil((total + 40) / 0.6 / 2))  # the pool is 65% of the images
    config = work / "experiment.yaml"
    config.write_text(yaml.safe_dump(experiment(n_per_class, args.per_annotator, args.annotators)))
    out = work / "run"
    server = Server(config, out, free_port())
    print(f"work folder {work}; starting the server (the phantom pool renders once, then is cached)", file=sys.stderr)
    server.start(resume=False)
    shared = {"phase": "starting", "finished": False, "acked": 0, "lock": threading.Lock()}
    # kill early in round 0's batch, while round 1 retrains, and early in round 2's batch while a label is on its
    # way (more kills: in between)
    plan = [("acked", 35), ("busy", 120), ("put", 235)]
    plan += [("acked", 60 + 100 * k) for k in range(max(0, args.kills - len(plan)))]
    plan = sorted(plan[: args.kills], key=lambda p: p[1])
    annotators = [Annotator(f"annotator-{i}", server, args.per_annotator + 10, shared) for i in range(args.annotators)]
    started = time.time()
    for a in annotators:
        a.start()
    monitor = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    rounds = 0
    while any(a.is_alive() for a in annotators):
        if server.up.is_set():
            try:
                status = monitor.get("/api/status").json()
                shared["phase"], rounds = status["phase"], status["round"]
                shared["finished"] = status["phase"] in ("finished", "error")
                if status["phase"] == "error":
                    raise SystemExit(f"the loop stopped: {status['error']}")
            except httpx.TransportError:
                pass
        if plan:
            kind, at = plan[0]
            if shared["acked"] >= at and (kind == "acked" or (kind == "busy" and shared["phase"] in BUSY)
                                          or (kind == "put" and any(a.in_put for a in annotators))):
                plan.pop(0)
                print(f"kill -9 at {shared['acked']} acknowledged labels (phase: {shared['phase']})", file=sys.stderr)
                server.kill()
                server.start(resume=True)
        time.sleep(0.1)
    wall = time.time() - started
    errors = [a.error for a in annotators if a.error]
    if errors:
        raise SystemExit(f"an annotator got an unexpected answer: {errors}")
    deadline = time.monotonic() + 300  # the loop takes in the last batch and trains its last round
    while (phase := monitor.get("/api/status").json()["phase"]) not in ("finished", "error"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    server.stop()

    acked: dict[str, str] = {}
    for a in annotators:
        for sid, digest in a.acked.items():
            acked.setdefault(sid, digest)
    stored: dict[str, str] = {}
    duplicated = 0
    for line in (out / "datastore" / "answers.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            duplicated += rec["image"] in stored
            stored[rec["image"]] = rec["digest"]
    track = out / json.loads((out / "serve.json").read_text())["track_folder"]
    track_ids = [json.loads(l)["sample_id"] for l in (track / "answers" / "answers.jsonl").read_text().splitlines()
                 if l.strip()]
    duplicated += len(track_ids) - len(set(track_ids))
    lost = sum(1 for sid, digest in acked.items() if stored.get(sid) != digest)  # missing or changed in the datastore
    if phase == "finished":  # the loop has taken in every answer: each acknowledged label must be in its log
        lost += len(set(acked) - set(track_ids))
    lat = np.array([t for a in annotators for t, _ in a.latencies]) * 1000
    busy = np.array([t for a in annotators for t, b in a.latencies if b]) * 1000
    result = {
        "submissions_per_s": round(len(lat) / wall, 2), "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p95_ms": round(float(np.percentile(lat, 95)), 1), "max_ms": round(float(lat.max()), 1),
        "p95_ms_while_training": round(float(np.percentile(busy, 95)), 1) if len(busy) else None,
        "n_while_training": len(busy), "acknowledged": len(acked), "lost": int(lost),
        "duplicated": int(duplicated), "kills": server.kills, "retried_after_kill": sum(a.retries for a in annotators),
        "acknowledged_as_duplicate": sum(a.duplicates for a in annotators),
        "per_annotator": {a.name: len(a.acked) for a in annotators}, "rounds": rounds,
        "final_phase": phase, "wall_s": round(wall, 1), "torch_threads_server": 1,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
