"""Self-supervised pretraining: it learns (the contrastive loss falls), is seeded, and its checkpoint loads into
a classifier of the same network only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.errors import ConfigError
from medloop.models import build_model, load_pretrained
from medloop.training.selfsup import SelfSupConfig, features, linear_probe, pretrain, trunk_state


def images(n: int = 16, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Distinct smooth images in [0, 1]: a bright disc at a random place on a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0.25, 0.75, 2).tolist() + [rng.uniform(0.1, 0.25)]
        img = 0.3 * xx * rng.uniform(0.5, 1.5) + ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) * 0.6
        out.append(np.clip(img, 0, 1)[None])
    return torch.tensor(np.stack(out), dtype=torch.float32)


def tiny_model(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", in_channels=1, num_classes=2, width=width)


def test_contrastive_loss_falls_and_only_the_trunk_is_saved(tmp_path):
    model = tiny_model()
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    cfg = SelfSupConfig(epochs=10, batch_size=16, lr=1e-2, seed=2, device="cpu")
    result = pretrain(model, images(32), cfg, progress=False, out=tmp_path / "ss.pt", meta={"model": "resnet18"})
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 10 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3
    saved = torch.load(tmp_path / "ss.pt", weights_only=True)
    assert saved["format"] == "medloop-selfsup-1" and not any(k.startswith("head.") for k in saved["trunk"])
    for k, v in model.head.state_dict().items():
        assert torch.equal(v, head_before[k])  # the head is not pretrained


def test_pretraining_is_seeded():
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    cfg = SelfSupConfig(epochs=2, batch_size=8, seed=5, device="cpu")
    pretrain(a, images(), cfg, progress=False)
    pretrain(b, images(), cfg, progress=False)
    pretrain(c, images(), cfg.replace(seed=6), progress=False)
    ta, tb, tc = trunk_state(a), trunk_state(b), trunk_state(c)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)


def test_checkpoint_loads_into_the_same_network_and_refuses_another(tmp_path):
    model = tiny_model()
    pretrain(model, images(), SelfSupConfig(epochs=1, batch_size=8, device="cpu"), progress=False,
             out=tmp_path / "ss.pt", meta={"model": "resnet18", "model_params": {"width": 4}, "in_channels": 1})
    fresh = tiny_model()
    report = load_pretrained(fresh, tmp_path / "ss.pt")
    assert report.loaded == len(trunk_state(model))
    x = images(4)
    assert np.allclose(features(fresh, x), features(model, x))
    with pytest.raises(ConfigError, match="width"):
        load_pretrained(tiny_model(width=8), tmp_path / "ss.pt")  # 'model_params': {'width': 4} in the message


def test_linear_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    x = rng.normal(size=(80, 6)) + y[:, None] * 2.0
    probe = linear_probe(x[::2], y[::2], x[1::2], y[1::2])
    assert probe["auc"] > 0.95 and probe["n_train"] == 40
    noise = linear_probe(rng.normal(size=(40, 6)), y[::2], rng.normal(size=(40, 6)), y[1::2])
    assert noise["auc"] < 0.8
    with pytest.raises(ConfigError, match="two classes"):
        linear_probe(x[:10], np.zeros(10, int), x[10:20], y[10:20])


def test_config_is_checked():
    with pytest.raises(ConfigError, match="batch_size"):
        SelfSupConfig(batch_size=1)
    with pytest.raises(ConfigError, match="crop_scale"):
        SelfSupConfig(crop_scale=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        SelfSupConfig(temperature=0)


def test_the_checkpoint_key_names_a_folder_however_its_path_is_written(tmp_path, monkeypatch):
    from medloop.loop import ExperimentConfig
    from medloop.loop.pretraining import selfsup_key

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    relative = ExperimentConfig.from_dict({"data": {"source": "data"}})
    absolute = ExperimentConfig.from_dict({"data": {"source": str(tmp_path / "data")}})
    other = ExperimentConfig.from_dict({"data": {"source": str(tmp_path / "other")}})
    assert selfsup_key(relative, 0, 1) == selfsup_key(absolute, 0, 1) != selfsup_key(other, 0, 1)
    assert selfsup_key(ExperimentConfig.from_dict({}), 0, 1)["data"]["source"] == "builtin:chest-xray"
