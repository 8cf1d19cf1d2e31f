"""cGAN losses: NMI, VGG relu4_1 features, the adversarial loss and the generator's L1, texture and content terms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medloop.models import VGG16Classifier
from medloop.seeding import torch_init
from medloop.training.cgan import CGANConfig, GeneratorLoss, VGGFeatures, adversarial_loss, nmi
from tests.unit.training.cgan.conftest import TINY, lungs


def tiny_vgg() -> VGGFeatures:
    with torch_init(0):
        return VGGFeatures(VGG16Classifier(1, 2, width=4).features, imagenet=False, source="test")


def test_nmi_orders_identical_related_and_independent_images():
    x = torch.rand(1, 1, 32, 32)
    related = 1.0 - x + 0.05 * torch.randn_like(x)  # an inverted copy shares all information
    noise = torch.rand(1, 1, 32, 32)
    same, rel, ind = float(nmi(x, x)), float(nmi(x, related)), float(nmi(x, noise))
    assert same > rel > ind
    assert 0.0 <= ind < 0.2 and same <= 1.0 + 1e-5


def test_nmi_is_differentiable():
    x = torch.rand(2, 1, 16, 16)
    y = torch.rand(2, 1, 16, 16, requires_grad=True)
    nmi(x, y).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


@pytest.mark.parametrize("batch_norm", [True, False])
def test_vgg_features_stop_at_relu4_1_and_are_frozen(batch_norm):
    vgg = VGG16Classifier(1, 2, width=4, batch_norm=batch_norm)
    feats = VGGFeatures(vgg.features, imagenet=False, source="test")
    assert sum(isinstance(m, nn.Conv2d) for m in feats.net) == 8 and isinstance(feats.net[-1], nn.ReLU)
    assert not any(p.requires_grad for p in feats.parameters())
    feats.train()
    assert not feats.net.training
    x = torch.rand(2, 1, 32, 32)
    assert feats(x).shape == (2, 32, 4, 4)  # width 4: conv4 has 512 * 4 / 64 maps, 3 poolings
    d = feats.distance(x, x)
    assert torch.allclose(d, torch.zeros(2), atol=1e-6)


def test_adversarial_loss_is_the_sigmoid_cross_entropy():
    logits = torch.tensor([2.0, -1.0])
    expected = -(torch.sigmoid(logits).log().mean())
    torch.testing.assert_close(adversarial_loss(logits, True), expected)
    torch.testing.assert_close(adversarial_loss(logits, False), -(1 - torch.sigmoid(logits)).log().mean())


def test_band_weighs_the_l1_where_the_boundary_moved():
    loss = GeneratorLoss(CGANConfig(**{**TINY, "band_weight": 10.0}), None)
    band = torch.zeros(4, 32, 32, dtype=torch.bool)
    band[:, 10:20] = True
    err = torch.zeros(4, 1, 32, 32)
    err[:, 0][band] = 1.0  # error only in the band
    zero = torch.zeros_like(err)
    assert float(loss.l1(err, zero, band)) > float(loss.l1(err, zero, None))


def test_lowpass_l1_pins_structure_not_fine_texture():
    plain = GeneratorLoss(CGANConfig(**{**TINY, "l1_lowpass": 0.0, "texture_weight": 0.0}), None)
    low = GeneratorLoss(CGANConfig(**{**TINY, "l1_lowpass": 1.5}), None)
    target = torch.zeros(2, 1, 32, 32)
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 0.2 - 0.1  # zero-mean fine texture
    texture = target + checker
    shifted = target + 0.1  # a change of structure (brightness) of the same L1 size
    assert float(plain.l1(texture, target, None)) == pytest.approx(float(plain.l1(shifted, target, None)))
    assert float(low.l1(texture, target, None)) < 0.1 * float(low.l1(shifted, target, None))


def test_texture_term_matches_the_amount_of_fine_texture_not_its_realization():
    loss = GeneratorLoss(CGANConfig(**{**TINY, "l1_lowpass": 1.0, "texture_weight": 10.0}), None)
    g = torch.Generator().manual_seed(0)
    base = torch.linspace(0, 1, 64).repeat(2, 1, 64, 1)  # smooth structure
    target = base + 0.03 * torch.randn(2, 1, 64, 64, generator=g)
    redrawn = base + 0.03 * torch.randn(2, 1, 64, 64, generator=g)  # the same amount, another realization
    noisier = base + 0.06 * torch.randn(2, 1, 64, 64, generator=g)
    same = float(loss.texture(redrawn, target))
    assert same < 0.25 * float(loss.texture(noisier, target))
    assert same < 0.25 * float(loss.texture(base.clone(), target))
    assert float(loss.l1(redrawn, target, None)) < 0.01  # the low-passed L1 lets the realization change
    off = GeneratorLoss(CGANConfig(**{**TINY, "texture_weight": 0.0}), None)
    assert float(off.texture(noisier, target)) == 0.0  # switched off


def test_content_terms_reward_distance_from_the_input():
    vgg = tiny_vgg()
    images, _ = lungs(4)
    far = images + 0.1 * torch.randn_like(images)
    terms = GeneratorLoss(CGANConfig(**{**TINY, "vgg_weight": 0.5, "mse_weight": 1.0}), vgg).content_terms(images, far)
    torch.testing.assert_close(terms["mse"], nn.functional.mse_loss(far, images))
    torch.testing.assert_close(terms["vgg"], vgg.distance(images, far).mean())
    torch.testing.assert_close(terms["nmi"], nmi(images, far).mean())
    off = GeneratorLoss(CGANConfig(**{**TINY, "vgg_weight": 0.0, "mse_weight": 0.0, "nmi_weight": 0.0}), vgg)
    assert all(float(v) == 0.0 for v in off.content_terms(images, far).values())


def test_generator_loss_adds_its_weighted_terms():
    images, _ = lungs(2)
    y = images + 0.05 * torch.randn_like(images)
    cfg = CGANConfig(**{**TINY, "vgg_weight": 0.5})
    loss_fn = GeneratorLoss(cfg, tiny_vgg())
    logits = torch.tensor([0.3, -0.2])
    loss, logs = loss_fn(images, y, images, None, logits)
    expected = (cfg.adv_weight * logs["g_adv"] + cfg.l1_weight * logs["g_l1"] + cfg.texture_weight * logs["g_texture"]
                + cfg.nmi_weight * logs["nmi"] - cfg.vgg_weight * logs["vgg"] - cfg.mse_weight * logs["mse"])
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert set(logs) == {"g_adv", "g_l1", "g_texture", "nmi", "vgg", "mse"}
