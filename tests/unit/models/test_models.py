"""Contract suite over every registered model: shapes, gradients, seeded init, state_dict round trip,
MC sampling stochastic where it should be, deterministic otherwise."""

from __future__ import annotations

import pytest
import torch

from medloop.errors import ConfigError
from medloop.models import MODELS, build_model, mc_dropout_layers, mc_generators, mc_sampling

CASES = {
    "resnet18": ({"in_channels": 1, "num_classes": 2, "width": 8}, (3, 1, 32, 32), (3, 2)),
    "vgg16": ({"in_channels": 3, "num_classes": 4, "width": 4}, (2, 3, 32, 32), (2, 4)),
    "unet": ({"in_channels": 1, "num_classes": 3, "channels": (4, 8, 16)}, (2, 1, 16, 16), (2, 3, 16, 16)),
}


def test_every_registered_model_is_covered():
    assert set(MODELS.names()) == set(CASES)


@pytest.fixture(params=sorted(CASES))
def case(request):
    name = request.param
    params, in_shape, out_shape = CASES[name]
    torch.manual_seed(0)
    return name, build_model(name, **params), params, in_shape, out_shape


def test_output_shapes(case):
    _, model, _, in_shape, out_shape = case
    logits, log_var = model(torch.randn(in_shape))
    assert logits.shape == out_shape and log_var.shape == out_shape


def test_gradients_reach_first_layer_and_variance_head(case):
    _, model, _, in_shape, _ = case
    model.train()
    logits, log_var = model(torch.randn(in_shape))
    (logits.sum() + log_var.sum()).backward()
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.grad is not None and first.grad.abs().sum() > 0
    head = model.head.fc_logvar if hasattr(model, "head") else model.out_logvar
    assert head.weight.grad.abs().sum() > 0


def test_seeded_init_and_state_dict_round_trip(case):
    name, model, params, in_shape, _ = case
    torch.manual_seed(0)
    twin = build_model(name, **params)
    x = torch.randn(in_shape)
    model.eval(), twin.eval()
    assert torch.equal(model(x)[0], twin(x)[0])
    other = build_model(name, **params)
    other.load_state_dict(model.state_dict())
    assert torch.equal(model.eval()(x)[0], other.eval()(x)[0])


def test_eval_is_deterministic_and_mc_sampling_is_stochastic(case):
    _, model, _, in_shape, _ = case
    x = torch.randn(in_shape)
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
    assert mc_dropout_layers(model)
    g1, g2 = mc_generators(0, 2)
    with mc_sampling(model, [g1]):
        a = model(x)[0]
    with mc_sampling(model, [g2]):
        b = model(x)[0]
    assert not torch.allclose(a, b)
    assert torch.equal(model(x)[0], model(x)[0])  # sampling state is cleared after the block


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ConfigError, match="The 'width' parameter of ResNet18Classifier must be >= 1"):
        build_model("resnet18", width=0)
    with pytest.raises(ConfigError, match=r"unknown model 'unett' \(did you mean 'unet'\?\)"):
        build_model("unett")
    with pytest.raises(ConfigError, match="bad parameters for model 'unet'"):
        build_model("unet", widht=3)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model("unet", channels=(4, 8, 16))(torch.zeros(1, 1, 18, 18))


POOL_CASES = [  # (model, params, global_pool, features per image)
    ("resnet18", {"width": 8}, "avg", 64),
    ("resnet18", {"width": 8}, "max", 64),
    ("resnet18", {"width": 8}, "avgmax", 128),
    ("vgg16", {"width": 4}, "avg", 32),
    ("vgg16", {"width": 4}, "max", 32),
    ("vgg16", {"width": 4}, "avgmax", 64),
]


@pytest.mark.parametrize("name, params, global_pool, features", POOL_CASES)
def test_global_pool_sets_the_feature_vector(name, params, global_pool, features):
    model = build_model(name, global_pool=global_pool, **params).eval()
    x = torch.randn(2, 1, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, features) and model.num_features == features
    assert model(x)[0].shape == (2, 2)


def test_max_pool_keeps_a_response_that_average_pooling_dilutes():
    # one bright pixel: its trace in the last feature map is local, so max pooling keeps more of it
    torch.manual_seed(0)
    avg = build_model("vgg16", width=4, global_pool="avg").eval()
    mx = build_model("vgg16", width=4, global_pool="max").eval()
    mx.load_state_dict(avg.state_dict())
    x = torch.zeros(1, 1, 64, 64)
    spot = x.clone()
    spot[0, 0, 40, 20] = 10.0
    change = {name: (m.forward_features(spot) - m.forward_features(x)).abs().sum() for name, m in (("avg", avg), ("max", mx))}
    assert change["max"] > change["avg"]


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_bad_global_pool_is_refused_by_name(name):
    with pytest.raises(ConfigError, match=r"The 'global_pool' parameter of \w+Classifier must be one of avg, max, "
                                          r"avgmax; got 'mean' instead"):
        build_model(name, width=4, global_pool="mean")


def test_dropout_rate_is_configurable_and_zero_makes_mc_deterministic():
    model = build_model("resnet18", width=8, dropout=0.0)
    x = torch.randn(2, 1, 32, 32)
    g1, g2 = mc_generators(0, 2)
    with mc_sampling(model.eval(), [g1]):
        a = model(x)[0]
    with mc_sampling(model, [g2]):
        b = model(x)[0]
    assert torch.equal(a, b)
