"""pix2pix pieces: PatchGAN receptive field scaled to the size, shapes, one training step, sample weights."""

from __future__ import annotations

import pytest
import torch

from medloop.errors import ConfigError
from medloop.models.pix2pix import Pix2PixDiscriminator, layers_for_size, patch_receptive_field
from medloop.training.pix2pix import Pix2PixConfig, Pix2PixTrainer, train_pix2pix


def test_receptive_field_matches_pix2pix_and_scales_with_size():
    assert patch_receptive_field(3) == 70  # pix2pix's 70x70 PatchGAN
    assert [layers_for_size(s) for s in (64, 128, 256)] == [1, 2, 3]


@pytest.mark.parametrize("size,channels,classes", [(32, 1, 3), (64, 2, 4)])
def test_discriminator_judges_pairs_patchwise(size, channels, classes):
    d = Pix2PixDiscriminator(channels, classes, size, features=8)
    out = d(torch.rand(2, channels, size, size), torch.rand(2, classes, size, size))
    assert out.shape[:2] == (2, 1) and 1 < out.shape[-1] < size


def tiny_batch(n=4, size=32):
    torch.manual_seed(0)
    x = torch.rand(n, 1, size, size)
    y = (x[:, 0] > 0.5).long() + (x[:, 0] > 0.8).long()  # a label map the image determines
    return x, y


def test_one_training_step_lowers_the_generator_loss():
    x, y = tiny_batch()
    t = Pix2PixTrainer(1, 3, 32, Pix2PixConfig(g_channels=(8, 16, 16), d_features=8, lr=1e-3, device="cpu"))
    before = t.generator_loss(x, y)
    logs = t.step(x, y, torch.ones(4))
    assert t.generator_loss(x, y) < before
    assert set(logs) == {"d_loss", "g_loss", "g_adv", "g_sup"}


def test_zero_weight_samples_do_not_move_the_supervised_loss():
    x, y = tiny_batch()
    cfg = Pix2PixConfig(g_channels=(8, 16, 16), d_features=8, adv_weight=0.0, device="cpu")
    y_noisy = y.clone()
    y_noisy[2:] = 0  # wrong labels on the samples that get weight 0
    la = Pix2PixTrainer(1, 3, 32, cfg).step(x, y, torch.tensor([1.0, 1.0, 0.0, 0.0]))["g_sup"]
    lb = Pix2PixTrainer(1, 3, 32, cfg).step(x, y_noisy, torch.tensor([1.0, 1.0, 0.0, 0.0]))["g_sup"]
    assert la == pytest.approx(lb, rel=1e-5)


def test_state_dict_round_trip_includes_optimizers():
    x, y = tiny_batch()
    cfg = Pix2PixConfig(g_channels=(8, 16, 16), d_features=8, device="cpu")
    a = Pix2PixTrainer(1, 3, 32, cfg)
    a.step(x, y, torch.ones(4))
    b = Pix2PixTrainer(1, 3, 32, cfg.replace(seed=5))
    b.load_state_dict(a.state_dict())
    assert b.opt_g.state_dict()["state"] and torch.equal(
        next(iter(a.G.state_dict().values())), next(iter(b.G.state_dict().values())))


def test_initialisation_is_seeded_without_touching_the_global_generator():
    from medloop.models.unet import BayesianUNet

    cfg = Pix2PixConfig(g_channels=(8, 16, 16), d_features=8, seed=3, device="cpu")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    t = Pix2PixTrainer(1, 3, 32, cfg)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(3)  # the seed alone: initialisation is what it was before named streams
    g = BayesianUNet(1, 3, channels=cfg.g_channels, dropout=cfg.dropout)
    assert all(torch.equal(a, b) for a, b in zip(t.G.state_dict().values(), g.state_dict().values()))


def test_dice_ce_weights_rare_classes_and_the_graded_discriminator_tells_wrong_maps():
    from medloop.synth.label_errors import agreement_map
    from medloop.training.pix2pix import class_weights, train_pix2pix
    from medloop.uncertainty.discriminator import discriminator_scores
    from tests.unit.synth.test_label_errors import heart

    y = heart(8, 32)
    w = class_weights(y, 4)
    assert w[3] == 0 and w[1] > w[0] and w[2] > w[0]  # absent class 3; rarer classes weigh more
    x = (y.float() / 2 + 0.05 * torch.randn(8, 32, 32, generator=torch.Generator().manual_seed(0)))[:, None]
    cfg = Pix2PixConfig(g_channels=(4, 8, 8), d_features=4, lr=2e-3, epochs=20, batch_size=2, device="cpu")
    t = Pix2PixTrainer(1, 3, 32, cfg)
    train_pix2pix(t, x, y, torch.ones(8), seed=0, progress=False)
    # D's judgement falls as the map's error grows (the true map, then shifted by 3 and by 8 px)
    with torch.no_grad():
        plaus = [torch.sigmoid(t.D(x, t._onehot(torch.roll(y, s, dims=2)))).mean().item() for s in (0, 3, 8)]
    agree = [agreement_map(torch.roll(y, s, dims=2), y, (1, 1)).mean().item() for s in (0, 3, 8)]
    assert plaus[0] > plaus[1] > plaus[2] and plaus[0] - plaus[2] > 0.05, (plaus, agree)
    scores, maps, pred = discriminator_scores(t.G, t.D, x, reduction="foreground")
    assert scores.shape == (8,) and maps.shape == (8, 32, 32) and pred.shape == (8, 32, 32)


@pytest.mark.parametrize("discriminator", ["graded", "pix2pix"])
def test_a_step_computes_the_discriminator_weight_gradients_once(discriminator):
    """G's update back-propagates through D to G only; D's weights get the gradients of D's own update."""
    x, y = tiny_batch()
    t = Pix2PixTrainer(1, 3, 32, Pix2PixConfig(g_channels=(8, 16, 16), d_features=8, device="cpu",
                                                discriminator=discriminator))
    counts = {name: 0 for name, _ in t.D.named_parameters()}
    for name, p in t.D.named_parameters():
        p.register_hook(lambda grad, name=name: counts.__setitem__(name, counts[name] + 1))
    g_before = [p.detach().clone() for p in t.G.parameters()]
    t.step(x, y, torch.ones(4))
    assert set(counts.values()) == {1}
    assert all(p.requires_grad for p in t.D.parameters())  # trainable again for the next D update
    assert any(not torch.equal(a, b) for a, b in zip(g_before, t.G.parameters()))


def test_generator_dropout_layout_and_channels_last_discriminator():
    x, y = tiny_batch()
    cfg = Pix2PixConfig(g_channels=(8, 16, 16), d_features=8, device="cpu", dropout_layout="head")
    t = Pix2PixTrainer(1, 3, 32, cfg)
    assert t.G.dropout_layout == "head"
    weight = t.D.net.initial_conv.conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    contiguous = Pix2PixDiscriminator(1, 3, 32, features=8)
    contiguous.load_state_dict(t.D.state_dict())
    onehot = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(t.D.eval()(x, onehot), contiguous.eval()(x, onehot), rtol=1e-4, atol=1e-5)


def test_min_steps_lengthens_training_on_a_handful_of_slices():
    x, y, w = torch.randn(5, 1, 16, 16), torch.randint(0, 3, (5, 16, 16)), torch.ones(5)
    small = dict(g_channels=(4, 8), d_features=4, batch_size=4)  # 5 slices: one update an epoch (a batch of 1 is skipped)
    plain = train_pix2pix(Pix2PixTrainer(1, 3, 16, Pix2PixConfig(epochs=2, **small)), x, y, w, 0, False)
    assert len(plain) == 2
    longer = train_pix2pix(Pix2PixTrainer(1, 3, 16, Pix2PixConfig(epochs=2, min_steps=7, **small)), x, y, w, 0, False)
    assert len(longer) == 7  # 7 updates need 7 epochs
    many = torch.randn(40, 1, 16, 16), torch.randint(0, 3, (40, 16, 16)), torch.ones(40)
    assert len(train_pix2pix(Pix2PixTrainer(1, 3, 16, Pix2PixConfig(epochs=2, min_steps=7, **small)), *many, 0,
                             False)) == 2  # 10 updates an epoch: epochs already give more than min_steps
    with pytest.raises(ConfigError, match="The 'min_steps' parameter of Pix2PixConfig must be >= 0; got -1"):
        Pix2PixConfig(min_steps=-1)


def test_bf16_training_runs_in_bfloat16_and_keeps_float32_weights():
    import medloop.training.pix2pix as p2p_module

    if not p2p_module._cpu_has_bf16():
        pytest.skip("this CPU has no bfloat16 instructions")
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0.5).long() + (x[:, 0] > 0.8).long()
    small = dict(g_channels=(4, 8), d_features=8, batch_size=4, device="cpu")
    runs = {}
    for precision in ("fp32", "bf16"):
        t = Pix2PixTrainer(1, 3, 16, Pix2PixConfig(precision=precision, **small))
        seen = []
        hook = t.G.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
        runs[precision] = t.step(x, y, torch.ones(8))
        hook.remove()
        assert seen == [torch.bfloat16 if precision == "bf16" else torch.float32]  # autocast reached G
        assert all(p.dtype == torch.float32 for p in t.G.parameters())  # the weights and updates stay float32
    for key, value in runs["fp32"].items():  # the same first step, to bfloat16's precision
        assert abs(runs["bf16"][key] - value) <= 0.02 * abs(value) + 1e-3, key


def test_bf16_is_refused_where_the_cpu_would_only_emulate_it(monkeypatch):
    import medloop.training.pix2pix as p2p_module

    monkeypatch.setattr(p2p_module, "_cpu_has_bf16", lambda: False)
    with pytest.raises(ConfigError, match="'precision' parameter 'bf16'.*needs a CPU with bfloat16.*precision: fp32"):
        Pix2PixTrainer(1, 3, 16, Pix2PixConfig(precision="bf16", device="cpu", g_channels=(4, 8), d_features=8))
