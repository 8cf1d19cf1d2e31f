"""The frozen-trunk recipe: the head trained on cached features behaves as the whole classifier on images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.config import DataConfig, TrainConfig
from medloop.errors import ConfigError
from medloop.data import load_dataset
from medloop.metrics import classification_metrics
from medloop.models import build_model
from medloop.training import predict
from medloop.training.head import FeatureHead, fit_head, predict_head
from medloop.training.selfsup import features
from medloop.uncertainty import score_pool
from medloop.uncertainty.mc import score_features


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(source="builtin:chest-xray", size=32, options={"n_normal": 10, "n_nodule": 10}),
                        progress=False)


def classifier(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("resnet18", in_channels=1, num_classes=2, width=4)


def test_mc_scores_from_features_equal_those_from_images(data):
    model = classifier()
    feats = features(model, data)
    from_images = score_pool(model, data, n_mc_samples=5, batch_size=8, seed=3, progress=False).columns
    from_feats = score_features(FeatureHead(model), feats, n_mc_samples=5, batch_size=8, seed=3)
    assert set(from_feats) == set(from_images) and "combined" in from_feats and "prob_1" in from_feats
    for key, value in from_images.items():
        np.testing.assert_allclose(from_feats[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    assert not np.allclose(from_feats["bald"], 0)  # MC dropout really samples


def test_fit_head_learns_separable_features_and_leaves_the_trunk_alone(data):
    model = classifier()
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 2
    feats = rng.normal(size=(60, model.num_features)) * 50 + 200  # large, shifted features
    feats[:, :4] += 400 * labels[:, None]  # four features separate the classes
    cfg = TrainConfig(epochs=40, lr=3e-3, schedule="cosine", patience=0, seed=1)
    result = fit_head(model, feats[:40], labels[:40], feats[40:50], labels[40:50], cfg, reference=feats)
    auc = classification_metrics(predict_head(model, feats[50:]), labels[50:])["auc"]
    assert auc > 0.95 and 0 <= result.best_epoch < 40
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trunk.items())
    assert torch.allclose(model.head.feat_shift, torch.as_tensor(feats.mean(0), dtype=torch.float32))
    again = classifier()
    fit_head(again, feats[:40], labels[:40], feats[40:50], labels[40:50], cfg, reference=feats)
    assert torch.equal(again.head.fc.weight, model.head.fc.weight)  # seeded


def test_head_on_cached_features_predicts_as_the_classifier_on_images(data):
    model = classifier()
    feats = features(model, data)
    cfg = TrainConfig(epochs=3, patience=0, seed=0)
    fit_head(model, feats, data.labels, None, None, cfg, reference=feats)
    assert not torch.allclose(model.head.feat_scale, torch.ones_like(model.head.feat_scale))
    np.testing.assert_allclose(predict_head(model, feats), predict(model, data)["probs"].numpy(), rtol=1e-4, atol=1e-5)


def test_checkpoints_without_the_standardising_buffers_load_as_identity():
    model = classifier()
    old = {k: v for k, v in model.state_dict().items() if "feat_" not in k}
    fresh = classifier(1)
    fresh.head.feat_shift.fill_(3.0)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.head.feat_shift, torch.zeros_like(fresh.head.feat_shift))
    assert torch.equal(fresh.head.feat_scale, torch.ones_like(fresh.head.feat_scale))


def test_fit_head_refuses_workers_it_cannot_honour():
    feats, labels = np.zeros((4, 8), np.float32), np.array([0, 1, 0, 1])
    with pytest.raises(ConfigError, match="'workers' parameter \\(2\\) cannot apply to fit_head"):
        fit_head(classifier(), feats, labels, None, None, TrainConfig(workers=2, batch_size=8))
