"""cGAN trainer: one step learns, D judges real and generated pairs in one batch, the source view is computed
once per step, the weight average, batch-norm recalibration, seeded noise."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from medloop.errors import ConfigError
from medloop.synth.views import source_view
from medloop.training.cgan import CGANConfig, CGANTrainer, train_cgan, training_pairs
from medloop.training.cgan.trainer import BN_PASSES, D_LR_FACTOR
from tests.unit.training.cgan.conftest import TINY, lungs


def batch(cfg: CGANConfig, n: int = 8):
    images, masks = lungs(n)
    return training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))


@pytest.mark.parametrize("extra", [{"g_noise": 0, "l1_lowpass": 0.0, "texture_weight": 0.0, "g_input_tv": 0.0},
                                   {"g_noise": 1, "l1_lowpass": 1.0, "texture_weight": 10.0}])
def test_one_cgan_step_lowers_the_generator_loss(ae, extra):
    cfg = CGANConfig(**{**TINY, "lr": 1e-3, **extra})
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(D_LR_FACTOR * 1e-3)
    inputs, tmasks, targets, band = batch(cfg)
    before = trainer.generator_loss(inputs, tmasks, targets, band)
    logs = trainer.step(inputs, tmasks, targets, band)
    assert np.isfinite(logs["d_loss"]) and trainer.generator_loss(inputs, tmasks, targets, band) < before
    assert set(logs) == {"d_loss", "g_loss", "g_adv", "g_l1", "g_texture", "nmi", "vgg", "mse"}


def test_the_source_view_is_computed_once_per_step_and_is_the_discriminators_condition(ae):
    cfg = CGANConfig(**TINY)
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    inputs, tmasks, targets, band = batch(cfg, 4)
    seen = []
    forward = trainer.D.forward
    trainer.D.forward = lambda c, y: seen.append(c[:, :1].detach().clone()) or forward(c, y)
    with mock.patch("medloop.training.cgan.trainer.source_view", wraps=source_view) as view:
        trainer.step(inputs, tmasks, targets, band)
    # the TV view (a CPU round trip) once per step: D's condition and G's input
    assert view.call_count == 1
    expected = source_view(inputs, cfg.g_input_tv)
    assert not torch.allclose(expected, inputs)  # the TV view, not the raw source
    assert seen and all(torch.allclose(c[: len(inputs)], expected) for c in seen)


def test_discriminator_scores_the_generator_with_batch_statistics_not_stale_running_ones(ae):
    cfg = CGANConfig(**{**TINY, "lr": 1e-3})
    inputs, tmasks, targets, band = batch(cfg)
    logs = []
    for corrupt in (False, True):
        trainer = CGANTrainer(ae, 1, cfg, vgg=None)
        if corrupt:  # running statistics far from anything D sees: the generator's signal must not depend on them
            for m in trainer.D.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.fill_(50.0)
                    m.running_var.fill_(1e-4)
        logs.append(trainer.step(inputs, tmasks, targets, band))
    assert logs[0]["g_adv"] == pytest.approx(logs[1]["g_adv"], rel=1e-5)
    assert logs[0]["g_adv"] > 1e-3  # a live adversarial signal, not a saturated one


def test_generator_weight_average_renders(ae):
    cfg = CGANConfig(**{**TINY, "lr": 1e-3, "g_ema": 0.9})
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    assert trainer.generator is trainer.G_ema and trainer.G_ema is not trainer.G
    start = [p.clone() for p in trainer.G.parameters()]
    trainer.step(*batch(cfg))
    decay = 2 / 11  # the warm-up's decay at step 1
    for p0, p, pe in zip(start, trainer.G.parameters(), trainer.G_ema.parameters()):
        torch.testing.assert_close(pe, decay * p0 + (1 - decay) * p)
    assert any(not torch.allclose(pe, p) for pe, p in zip(trainer.G_ema.parameters(), trainer.G.parameters()))
    plain = CGANTrainer(ae, 1, CGANConfig(**{**TINY, "g_ema": 0.0}), vgg=None)
    assert plain.G_ema is None and plain.generator is plain.G  # without g_ema, G itself renders


def test_recalibrate_sets_generator_batch_norm_statistics_from_final_weights(ae):
    cfg = CGANConfig(**{**TINY, "g_noise": 1})
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    assert trainer.generator is trainer.G_ema  # the default renders with the weight average: its statistics
    bn = next(m for m in trainer.generator.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_mean.fill_(7.0)
    seen = []
    hook = bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    images, masks = lungs(8)
    batches = [training_pairs(images[i:i + 4].numpy(), masks[i:i + 4].numpy(), cfg, np.random.default_rng(i))[:2]
               for i in (0, 4)]
    assert trainer.recalibrate(batches) == sum(isinstance(m, nn.BatchNorm2d) for m in trainer.generator.modules())
    hook.remove()
    # the plain average of the batch means (two batches of equal size), not a momentum average mixing in 7.0
    expected = torch.stack([s.mean((0, 2, 3)) for s in seen]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not trainer.generator.training
    with pytest.raises(ConfigError, match="no batches"):
        trainer.recalibrate([])


def test_train_cgan_ends_with_recalibrated_statistics(ae):
    images, masks = lungs(6)
    cfg = CGANConfig(**{**TINY, "epochs": 1, "g_ema": 0.0})
    trainer, history = train_cgan(images, masks, ae, cfg, progress=False)
    assert [r["epoch"] for r in history] == [0] and not trainer.generator.training
    bn = next(m for m in trainer.G.modules() if isinstance(m, nn.BatchNorm2d))
    # 6 images in batches of 4 -> 2 batches per epoch (2 in training); recalibration restarts the count
    assert int(bn.num_batches_tracked) == 2 * BN_PASSES != 2 * cfg.epochs


def test_training_is_seeded_and_leaves_the_global_generator_alone(ae):
    images, masks = lungs(4)
    cfg = CGANConfig(**{**TINY, "epochs": 1, "g_noise": 1})
    state = torch.get_rng_state()
    runs = [train_cgan(images, masks, ae, c, progress=False) for c in (cfg, cfg, cfg.replace(seed=1))]
    assert torch.equal(torch.get_rng_state(), state)
    assert runs[0][1] == runs[1][1] and runs[0][1] != runs[2][1]
    weights = [torch.cat([p.flatten() for p in t.generator.parameters()]) for t, _ in runs]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
