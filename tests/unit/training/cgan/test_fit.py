"""fit_generator: the whole recipe returns a sampler that renders with the training's source view; VGG errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.errors import ConfigError, DataError
from medloop.synth.generator import MaskConditionedSampler
from medloop.training.cgan import CGANConfig, build_vgg, fit_generator
from tests.unit.training.cgan.conftest import TINY, lungs


def test_vgg_from_missing_file_and_unlabeled_data_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="VGG16 weights not found"):
        build_vgg(CGANConfig(vgg=str(tmp_path / "vgg.pth")))
    with pytest.raises(ConfigError, match="vgg_weight 0"):
        build_vgg(CGANConfig(), torch.rand(4, 1, 32, 32), np.array([-1, -1, -1, -1]))
    assert build_vgg(CGANConfig(vgg_weight=0.0)) == (None, {"vgg": "not used (vgg_weight is 0)"})


def test_fit_generator_returns_a_seeded_sampler_with_the_training_view(tmp_path):
    images, masks = lungs(4)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 1, "epochs": 1, "g_input_tv": 0.25})
    state = torch.get_rng_state()
    sampler, record = fit_generator(images, masks, cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # library code leaves the caller's generator alone
    assert isinstance(sampler, MaskConditionedSampler) and sampler.input_tv == 0.25 and sampler.size == 32
    assert record["cgan_config"] == cfg.to_dict() and len(record["cgan_history"]) == 1
    again, _ = fit_generator(images, masks, cfg, progress=False)
    a, b = (s.variants(images[0].numpy(), masks[0].numpy(), 2, np.random.default_rng(0)) for s in (sampler, again))
    for va, vb in zip(a, b):
        np.testing.assert_array_equal(va.image, vb.image)


@pytest.mark.parametrize("n,size,match", [(1, 32, "at least 2 images"), (2, 40, "divisible by 16")])
def test_fit_generator_rejects_too_few_or_odd_sized_images(n, size, match):
    images, masks = lungs(n, size)
    with pytest.raises(ConfigError, match=match):
        fit_generator(images, masks, CGANConfig(**TINY), progress=False)
