"""Training recipes on tiny phantoms: learning happens, seeds reproduce, head-only fine-tuning freezes the trunk,
early stopping stops, checkpoints round-trip."""

from __future__ import annotations

import math

import pytest
import torch

from medloop.config import TrainConfig
from medloop.data import load_dataset, split_by_case
from medloop.errors import ConfigError, DataError
from medloop.models import build_model
from medloop.training import evaluate, fit, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def chest():
    return load_dataset("builtin:chest-xray", size=32, options={"n_normal": 8, "n_nodule": 8}, progress=False)


@pytest.fixture(scope="module")
def cardiac():
    return load_dataset("builtin:cardiac-mr", size=32, options={"n_volumes": 3, "min_slices": 4, "max_slices": 4}, progress=False)


def _cfg(**kw):
    base = {"epochs": 2, "batch_size": 8, "device": "cpu", "augment": {"enabled": False}}
    return TrainConfig.from_dict({**base, **kw})


def test_segmentation_training_lowers_the_loss(cardiac):
    torch.manual_seed(0)
    model = build_model("unet", channels=(8, 16, 32), num_classes=3)
    result = fit(model, cardiac, None, _cfg(task="segment", model="unet", epochs=6, lr=5e-3), progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    metrics = evaluate(model, cardiac, "segment")
    assert set(metrics["dice"]) == {"myocardium", "blood pool"} and 0 <= metrics["dice_mean"] <= 1


def test_training_is_reproducible_under_a_seed(chest):
    def run(seed):
        torch.manual_seed(0)
        model = build_model("resnet18", width=4)
        fit(model, chest, None, _cfg(seed=seed, augment={"enabled": True}), progress=False)
        return torch.cat([p.flatten() for p in model.parameters()])

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_head_fine_tuning_changes_only_the_head(chest):
    torch.manual_seed(0)
    model = build_model("resnet18", width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, chest, None, _cfg(fine_tune="head"), progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)  # batch-norm statistics frozen too


def test_early_stopping_restores_the_best_epoch(chest):
    split = split_by_case(chest, val=0.25, test=0.0, seed=0)
    torch.manual_seed(0)
    model = build_model("resnet18", width=4)
    result = fit(model, chest.subset(split.train), chest.subset(split.val), _cfg(epochs=30, patience=2, lr=1e-4), progress=False)
    assert result.stopped_early and len(result.history) == result.best_epoch + 3
    assert result.best_metric == max(h["val_auc"] for h in result.history)


def test_evaluate_reports_classification_metrics(chest):
    metrics = evaluate(build_model("resnet18", width=4), chest, "classify")
    assert set(metrics) == {"accuracy", "sensitivity", "specificity", "auc", "ece", "n"} and metrics["n"] == 16


def test_tasks_need_their_labels(cardiac):
    with pytest.raises(DataError, match="no samples with image labels"):
        fit(build_model("resnet18", width=4), cardiac, None, _cfg(), progress=False)
    with pytest.raises(ConfigError, match=r"The 'epochs' parameter of TrainConfig must be >= 1"):
        _cfg(epochs=0)
    with pytest.raises(ConfigError, match=r"augment: unknown key 'rotate'"):
        _cfg(augment={"rotate": 3})


def test_checkpoint_round_trip(tmp_path, chest):
    model = build_model("vgg16", width=4)
    path = save_checkpoint(tmp_path / "c.pt", model, "vgg16", {"width": 4}, class_names=["a", "b"])
    loaded, record = load_checkpoint(path)
    x = chest[0].image[None]
    assert torch.equal(model.eval()(x)[0], loaded.eval()(x)[0]) and record["class_names"] == ["a", "b"]
    with pytest.raises(DataError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("fine_tune", ["all", "head"])
def test_cosine_schedule_starts_each_epoch_on_the_curve_of_the_steps_taken_and_constant_keeps_the_rate(fine_tune):
    # 17 samples at batch 8: the last batch of one is dropped, so 2 steps per epoch; epoch k starts at
    # lr * (1 + cos(pi * k / E)) / 2 only if the schedule's length counts the steps actually taken
    data = load_dataset("builtin:chest-xray", size=32, options={"n_normal": 8, "n_nodule": 9}, progress=False)
    histories = {}
    for schedule in ("constant", "cosine"):
        torch.manual_seed(0)
        model = build_model("resnet18", width=4)
        cfg = _cfg(epochs=4, lr=1e-3, schedule=schedule, fine_tune=fine_tune)
        histories[schedule] = fit(model, data, None, cfg, progress=False).history
    assert [h["lr"] for h in histories["constant"]] == [1e-3] * 4
    expected = [1e-3 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert [h["lr"] for h in histories["cosine"]] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="schedule"):
        _cfg(schedule="step")
