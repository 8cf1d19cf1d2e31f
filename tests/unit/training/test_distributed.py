"""Data-parallel training (``TrainConfig.workers``): two DDP processes reach the one-process model's quality on a
learnable phantom, the setting is honoured (two processes trained), and settings it cannot honour are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.config import TrainConfig
from medloop.data import load_dataset
from medloop.errors import ConfigError
from medloop.models import build_model
from medloop.seeding import torch_init
from medloop.training import evaluate, fit

CONSPICUOUS = {"n_normal": 60, "n_nodule": 60, "nodule_contrast": [0.4, 0.6], "nodule_radius": [0.08, 0.12]}


def test_two_workers_train_a_model_as_good_as_one():
    ds = load_dataset("builtin:chest-xray", size=32, options=CONSPICUOUS, progress=False)
    order = np.random.default_rng(0).permutation(len(ds))
    train, test = ds.subset(order[:80]), ds.subset(order[80:])
    results = {}
    for workers in (1, 2):
        with torch_init(0):
            model = build_model("resnet18", in_channels=1, num_classes=2, width=4, dropout=0.2)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        config = TrainConfig(epochs=8, batch_size=16, lr=3e-3, patience=0, device="cpu", workers=workers)
        out = fit(model, train, None, config, progress=False)
        assert out.workers == workers and len(out.history) == 8
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model trained
        results[workers] = evaluate(model, test, "classify")["auc"]
    # on one machine: 1 worker 0.915, 2 workers 0.799 (both bit-reproducible); over init seeds 0-3 the two differ
    # by -0.116 to +0.125 (40 test images), either ahead
    assert results[1] > 0.8 and results[2] > 0.7  # both learn the phantom (chance: 0.5)
    assert abs(results[2] - results[1]) < 0.2


def test_each_rank_trains_weights_of_its_own_so_two_worker_runs_repeat_exactly():
    """The ranks must not share the caller's weights: torch's pickler moves a module's tensors to shared memory when
    it is handed to spawned processes as it is, and then every rank's optimizer steps the same weights (two ranks:
    each update applied twice, racing), so runs differ and learn at a doubled, erratic rate. With weights of its
    own per rank, two ranks' averaged gradients do not depend on timing and a run repeats bit for bit."""
    ds = load_dataset("builtin:chest-xray", size=32, options=CONSPICUOUS, progress=False)
    train = ds.subset(np.arange(48))
    states = []
    for _ in range(2):
        with torch_init(0):
            model = build_model("resnet18", in_channels=1, num_classes=2, width=4, dropout=0.2)
        fit(model, train, None, TrainConfig(epochs=2, batch_size=16, patience=0, device="cpu", workers=2),
            progress=False)
        assert not any(t.is_shared() for t in model.state_dict().values())  # the caller's model stays its own
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], v) for k, v in states[1].items())


@pytest.mark.parametrize("params, match", [
    ({"workers": 0}, "The 'workers' parameter of TrainConfig must be >= 1"),
    ({"workers": 2, "device": "cuda"}, "trains on CPU processes.*set device: cpu"),
    ({"workers": 8, "batch_size": 4}, "must be at most batch_size"),
])
def test_workers_settings_it_cannot_honour_are_refused(params, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(params)


def test_experiment_classifier_workers_reach_the_training_config():
    from medloop.loop.config import ExperimentConfig

    with pytest.raises(ConfigError, match="'workers' parameter of TrainConfig must be >= 1"):
        ExperimentConfig.from_dict({"classifier": {"workers": 0}})
