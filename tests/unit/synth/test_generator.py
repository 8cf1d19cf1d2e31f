"""MaskConditionedSampler: variants, seeded noise, the source view and a save / load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medloop.errors import ConfigError, DataError
from medloop.models.cgan import MaskConditionedGenerator, PairDiscriminator
from medloop.models.mask_ae import MaskAutoencoder
from medloop.seeding import torch_init
from medloop.synth import PerturbConfig
from medloop.synth.generator import MaskConditionedSampler

STILL = PerturbConfig.from_dict({"reference_size": 32, "displacement": [1.0, 3.0], "p_flip": 0, "p_rotate": 0,
                                 "p_translate": 0, "p_intensity": 0})


def lung(size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), dtype=np.int64)
    for cx in (0.3, 0.7):
        mask[((xx - size * cx) / (0.13 * size)) ** 2 + ((yy - size / 2) / (0.3 * size)) ** 2 <= 1] = 1
    image = np.where(mask > 0, 0.3, 0.7) + 0.03 * rng.standard_normal((size, size))
    return image[None].astype(np.float32), mask


def sampler(noise_channels: int = 0, input_tv: float = 0.0, perturb: PerturbConfig = STILL) -> MaskConditionedSampler:
    with torch_init(0):
        ae = MaskAutoencoder(32, 8, (8, 16))
        G = MaskConditionedGenerator(1, 8, 8, 1, noise_channels)
        D = PairDiscriminator(3, 4, 8)
    for block in G.blocks:  # FiLM starts at zero: give it weights so the mask code matters
        torch.nn.init.normal_(block.film.weight, std=0.5, generator=torch.Generator().manual_seed(1))
    return MaskConditionedSampler(ae, G, perturb, input_tv, "cpu", D)


def test_sampler_round_trip_and_variants(tmp_path):
    image, mask = lung()
    s = sampler(perturb=PerturbConfig.from_dict({"reference_size": 32}))
    loaded = MaskConditionedSampler.load(s.save(tmp_path / "g.pt"))
    a = s.variants(image, mask, 5, np.random.default_rng(0), batch_size=2)
    b = loaded.variants(image, mask, 5, np.random.default_rng(0), batch_size=3)
    assert len(a) == 5
    for va, vb in zip(a, b):
        np.testing.assert_allclose(va.image, vb.image, atol=1e-5)
        assert va.image.shape == (1, 32, 32) and va.mask.shape == (32, 32)
        assert va.image.min() >= image.min() - 1e-6 and va.image.max() <= image.max() + 1e-6
    with pytest.raises(ConfigError, match="trained at 32 px"):
        s.variants(np.zeros((1, 64, 64), np.float32), np.zeros((64, 64), np.int64), 1, np.random.default_rng(0))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt"):
        MaskConditionedSampler.load(tmp_path / "bad.pt")


def test_noisy_sampler_is_seeded_by_its_rng_also_after_save_and_load(tmp_path):
    image, mask = lung()
    s = sampler(noise_channels=1)
    a = s.variants(image, mask, 3, np.random.default_rng(1))
    b = MaskConditionedSampler.load(s.save(tmp_path / "g.pt")).variants(image, mask, 3, np.random.default_rng(1))
    for va, vb in zip(a, b):
        np.testing.assert_allclose(va.image, vb.image, atol=1e-5)
    same = torch.from_numpy(np.stack([mask, mask]) > 0)
    rendered = s.render(torch.from_numpy(image)[None].repeat(2, 1, 1, 1), same, np.random.default_rng(2))
    assert not torch.allclose(rendered[0], rendered[1])  # one mask, two noise draws: two images


def test_the_source_view_setting_travels_with_the_file(tmp_path):
    image, mask = lung()
    sources, masks = torch.from_numpy(image)[None].repeat(2, 1, 1, 1), torch.from_numpy(np.stack([mask, mask]) > 0)
    tv = sampler(input_tv=0.5)
    loaded = MaskConditionedSampler.load(tv.save(tmp_path / "tv.pt"))
    assert loaded.input_tv == 0.5 and torch.load(tmp_path / "tv.pt")["source_view"] == {"input_tv": 0.5}
    rng = np.random.default_rng
    torch.testing.assert_close(tv.render(sources, masks, rng(4)), loaded.render(sources, masks, rng(4)))
    raw = sampler(input_tv=0.0)  # the same networks rendering the raw source: another image
    assert not torch.allclose(tv.render(sources, masks, rng(4)), raw.render(sources, masks, rng(4)))
    with pytest.raises(ConfigError, match="input_tv"):
        sampler(input_tv=-1.0)


def test_a_file_from_before_the_view_left_the_generator_loads_or_names_its_removed_option(tmp_path):
    s = sampler(input_tv=0.5)
    state = torch.load(s.save(tmp_path / "new.pt"))
    del state["source_view"]
    state["g_params"] = {**state["g_params"], "upsample": "resize", "padding": "zeros", "input_lowpass": 0.0,
                         "input_tv": 0.5}
    torch.save(state, tmp_path / "old.pt")
    assert MaskConditionedSampler.load(tmp_path / "old.pt").input_tv == 0.5
    state["g_params"]["upsample"] = "transpose"
    torch.save(state, tmp_path / "transpose.pt")
    with pytest.raises(DataError, match="removed option upsample='transpose'"):
        MaskConditionedSampler.load(tmp_path / "transpose.pt")
