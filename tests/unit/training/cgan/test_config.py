"""CGANConfig: ill values name the field, removed options are unknown keys, its defaults are the only ones."""

from __future__ import annotations

import inspect

import pytest

from medloop.errors import ConfigError
from medloop.models.cgan import MaskConditionedGenerator, PairDiscriminator
from medloop.training.cgan import CGANConfig, build_discriminator, build_generator

ILL = [
    ({"g_noise": -1}, "g_noise"),
    ({"g_input_tv": -0.5}, "g_input_tv"),
    ({"l1_lowpass": -1.0, "texture_weight": 0.0}, "l1_lowpass"),
    ({"texture_weight": 1.0, "l1_lowpass": 0.0}, "needs 'l1_lowpass'"),
    ({"g_ema": 1.0}, "g_ema"),
    ({"band_weight": 0.5}, "band_weight"),
    ({"identity_prob": 1.5}, "identity_prob"),
    ({"vgg_weight": -1.0}, "vgg_weight"),
    ({"g_features": 0}, "g_features"),
    ({"perturb": {"p_flip": 2.0}}, "p_flip"),
]


@pytest.mark.parametrize("params,match", ILL)
def test_ill_values_name_the_field(params, match):
    with pytest.raises(ConfigError, match=match):
        CGANConfig(**params)


@pytest.mark.parametrize("key", ["vgg_cap", "vgg_distance", "mse_cap", "mse_distance", "g_input_lowpass", "gan_loss",
                                 "g_padding", "g_upsample", "d_joint_batch", "texture_window", "d_lr_factor",
                                 "g_bn_passes", "augment_geometry", "content_weight"])
def test_removed_options_are_unknown_keys(key):
    with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
        CGANConfig.from_dict({key: 1})


def test_networks_take_their_recipe_options_from_the_config_only():
    # no second set of defaults: the constructors' recipe options have none (D's pooled size is not an option)
    for cls, free in ((MaskConditionedGenerator, set()), (PairDiscriminator, {"pool"})):
        params = inspect.signature(cls.__init__).parameters.values()
        defaulted = {p.name for p in params if p.default is not inspect.Parameter.empty}
        assert defaulted == free, cls.__name__
    cfg = CGANConfig()
    assert build_generator(cfg, 1).params == {"in_channels": 1, "latent_dim": cfg.latent_dim,
                                              "features": cfg.g_features, "n_blocks": cfg.g_blocks,
                                              "noise_channels": cfg.g_noise}
    assert build_discriminator(cfg, 1).params == {"in_channels": 3, "features": cfg.d_features, "dense": cfg.d_dense,
                                                  "pool": 4}
