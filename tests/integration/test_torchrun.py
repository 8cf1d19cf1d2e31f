"""``medloop train`` started by torchrun: the processes join one DDP group, train one model, and rank 0 writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

from medloop.errors import ConfigError


def test_medloop_train_under_torchrun_trains_one_model_over_two_processes(tmp_path):
    from medloop.data import load_dataset
    from medloop.training import evaluate, load_checkpoint

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "medloop",
           "train", "--data", "builtin:chest-xray", "--size", "32", "--epochs", "2", "--batch-size", "16",
           "--width", "4", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ranks"] == 2 and metrics["epochs_run"] == 2
    assert "data-parallel over 2 processes" in (out / "report.md").read_text()
    # the checkpoint is the model the metrics were measured on
    model, record = load_checkpoint(out / "checkpoint.pt")
    ds = load_dataset("builtin:chest-xray", size=32, progress=False)
    test = ds.subset([ds.sample_ids.index(s) for s in record["split"]["test"]])
    assert abs(evaluate(model, test, "classify")["auc"] - metrics["test"]["auc"]) < 1e-4


def test_launcher_variables_are_checked(monkeypatch):
    from medloop.config import DataConfig, TrainConfig
    from medloop.jobs import train_job
    from medloop.training.distributed import launched

    assert launched() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE must be an integer.*torchrun"):
        launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK \\(2\\) and WORLD_SIZE \\(2\\) do not fit"):
        launched()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="'workers' parameter \\(2\\) spawns.*launcher with 2 processes"):
        train_job(DataConfig(), TrainConfig(workers=2, batch_size=8, device="cpu"), "unused", progress=False)
