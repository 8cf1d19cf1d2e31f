"""cGAN recipe: NMI, VGG relu4_1 features, mask autoencoder training, one training step, sampler round trip."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from medloop.errors import ConfigError, DataError
from medloop.metrics import mask_dice
from medloop.models import VGG16Classifier
from medloop.synth.generator import MaskConditionedSampler, build_vgg
from medloop.training.cgan import (
    DISTANCES,
    CGANConfig,
    CGANTrainer,
    VGGFeatures,
    nmi,
    rewarded_distance,
    train_cgan,
    training_pairs,
    train_mask_autoencoder,
)


def lungs(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks, images = [], []
    for _ in range(n):
        m = np.zeros((size, size), dtype=np.int64)
        for cx in (0.3, 0.7):
            a, b = size * rng.uniform(0.11, 0.15), size * rng.uniform(0.25, 0.32)
            m[((xx - size * cx) / a) ** 2 + ((yy - size / 2) / b) ** 2 <= 1] = 1
        masks.append(m)
        images.append(np.where(m > 0, 0.3, 0.7) + 0.03 * rng.standard_normal((size, size)))
    return torch.tensor(np.stack(images), dtype=torch.float32)[:, None], torch.from_numpy(np.stack(masks))


TINY = dict(latent_dim=8, ae_channels=(8, 16), g_features=8, g_blocks=1, d_features=4, d_dense=8, batch_size=4,
            perturb={"reference_size": 32, "displacement": [1.0, 3.0]}, vgg_weight=0.0, device="cpu")


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


def test_vgg_from_missing_file_and_unlabeled_data_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="VGG16 weights not found"):
        build_vgg(CGANConfig(vgg=str(tmp_path / "vgg.pth")))
    with pytest.raises(ConfigError, match="vgg_weight 0"):
        build_vgg(CGANConfig(), torch.rand(4, 1, 32, 32), np.array([-1, -1, -1, -1]))


def test_mask_dice():
    a = torch.zeros(2, 8, 8, dtype=torch.bool)
    a[0, :4] = True
    b = a.clone()
    b[0, :2] = False
    d = mask_dice(a, b)
    assert d[0] == pytest.approx(2 * 16 / (32 + 16)) and d[1] == 1.0


def test_autoencoder_reconstructs_tiny_masks():
    _, masks = lungs(12)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 40, "ae_lr": 3e-3})
    ae, report = train_mask_autoencoder(masks[:10], cfg, masks[10:], progress=False)
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]
    assert report["train_dice"] > 0.8 and report["val_dice"] > 0.7
    assert ae.encode(masks[:2, None].float()).shape == (2, 8)


def test_training_pairs_deform_inputs_and_keep_targets():
    images, masks = lungs(6)
    cfg = CGANConfig(**{**TINY, "identity_prob": 0.0, "augment_geometry": False})
    inputs, tmasks, targets, _ = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
    assert torch.equal(targets, images) and torch.equal(tmasks, masks > 0)
    assert all(not torch.equal(inputs[i], images[i]) for i in range(6))


def test_training_pairs_take_the_poses_of_generation():
    images, masks = lungs(4)
    flip_only = {"p_flip": 1.0, "p_rotate": 0.0, "p_translate": 0.0}
    cfg = CGANConfig(**{**TINY, "identity_prob": 1.0, "perturb": flip_only})
    inputs, tmasks, targets, band = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
    assert torch.equal(targets, images.flip(-1)) and torch.equal(tmasks, masks.flip(-1) > 0)
    assert torch.equal(inputs, targets) and not band.any()  # identity pairs: nothing moved
    rotate = CGANConfig(**{**TINY, "identity_prob": 0.0, "perturb": {"p_flip": 0.0, "p_rotate": 1.0, "p_translate": 0.0}})
    _, tmasks, targets, _ = training_pairs(images.numpy(), masks.numpy(), rotate, np.random.default_rng(0))
    assert not torch.equal(tmasks, masks > 0) and tmasks.sum() > 0.8 * (masks > 0).sum()


@pytest.mark.parametrize("extra", [{"g_noise": 0, "l1_lowpass": 0.0, "texture_weight": 0.0},
                                   {"g_noise": 1, "l1_lowpass": 1.0, "texture_weight": 10.0}])
def test_one_cgan_step_lowers_the_generator_loss(extra):
    images, masks = lungs(8)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 2, "lr": 1e-3, **extra})
    ae, _ = train_mask_autoencoder(masks, cfg, progress=False)
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    inputs, tmasks, targets, _ = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
    before = trainer.generator_loss(inputs, tmasks, targets)
    logs = trainer.step(inputs, tmasks, targets)
    after = trainer.generator_loss(inputs, tmasks, targets)
    assert after < before
    assert set(logs) == {"d_loss", "g_loss", "g_adv", "g_l1", "g_texture", "nmi", "vgg", "mse"}


def test_joint_batch_discriminator_step_learns_and_config_checks():
    images, masks = lungs(8)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 1, "lr": 1e-3, "d_joint_batch": True, "d_lr_factor": 2.0,
                        "g_upsample": "resize"})
    ae, _ = train_mask_autoencoder(masks, cfg, progress=False)
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(2e-3) and trainer.G.params["upsample"] == "resize"
    inputs, tmasks, targets, band = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
    before = trainer.generator_loss(inputs, tmasks, targets, band)
    logs = trainer.step(inputs, tmasks, targets, band)
    assert np.isfinite(logs["d_loss"]) and trainer.generator_loss(inputs, tmasks, targets, band) < before
    with pytest.raises(ConfigError, match="g_upsample"):
        CGANConfig(g_upsample="bicubic")
    with pytest.raises(ConfigError, match="d_lr_factor"):
        CGANConfig(d_lr_factor=0)


def test_sampler_round_trip_and_variants(tmp_path):
    images, masks = lungs(4)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 1})
    ae, _ = train_mask_autoencoder(masks, cfg, progress=False)
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    sampler = MaskConditionedSampler(trainer.ae, trainer.G, cfg.perturb_config, "cpu", trainer.D)
    path = sampler.save(tmp_path / "g.pt")
    loaded = MaskConditionedSampler.load(path)
    a = sampler.variants(images[0].numpy(), masks[0].numpy(), 5, np.random.default_rng(0), batch_size=2)
    b = loaded.variants(images[0].numpy(), masks[0].numpy(), 5, np.random.default_rng(0), batch_size=3)
    assert len(a) == 5
    for va, vb in zip(a, b):
        np.testing.assert_allclose(va.image, vb.image, atol=1e-5)
        assert va.image.shape == (1, 32, 32) and va.mask.shape == (32, 32)
        assert va.image.min() >= images[0].min() - 1e-6 and va.image.max() <= images[0].max() + 1e-6
    with pytest.raises(ConfigError, match="trained at 32 px"):
        sampler.variants(np.zeros((1, 64, 64), np.float32), np.zeros((64, 64), np.int64), 1, np.random.default_rng(0))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bad.pt"):
        MaskConditionedSampler.load(tmp_path / "bad.pt")


def test_band_marks_where_the_boundary_moved_and_weighs_l1():
    images, masks = lungs(4)
    cfg = CGANConfig(**{**TINY, "identity_prob": 0.0, "band_weight": 10.0})
    inputs, tmasks, targets, band = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
    assert band.shape == (4, 32, 32) and band.any(dim=(1, 2)).all()
    changed = (inputs != targets)[:, 0]
    assert (band | ~changed).all()  # every changed pixel lies in the band
    ae, _ = train_mask_autoencoder(masks, CGANConfig(**{**TINY, "ae_epochs": 1}), progress=False)
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    err = torch.zeros(4, 1, 32, 32)
    err[:, 0][band] = 1.0  # error only in the band
    assert float(trainer.l1(err, torch.zeros_like(err), band)) > float(trainer.l1(err, torch.zeros_like(err), None))


def test_lowpass_l1_pins_structure_not_fine_texture_and_noisy_sampler_is_seeded(tmp_path):
    images, masks = lungs(4)
    ae, _ = train_mask_autoencoder(masks, CGANConfig(**{**TINY, "ae_epochs": 1}), progress=False)
    plain = CGANTrainer(ae, 1, CGANConfig(**{**TINY, "l1_lowpass": 0.0, "texture_weight": 0.0}), vgg=None)
    low = CGANTrainer(ae, 1, CGANConfig(**{**TINY, "l1_lowpass": 1.5, "g_noise": 1}), vgg=None)
    target = torch.zeros(2, 1, 32, 32)
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 0.2 - 0.1  # zero-mean fine texture
    texture = target + checker
    shifted = target + 0.1  # a change of structure (brightness) of the same L1 size
    assert float(plain.l1(texture, target, None)) == pytest.approx(float(plain.l1(shifted, target, None)))
    assert float(low.l1(texture, target, None)) < 0.1 * float(low.l1(shifted, target, None))
    assert low.G.params["noise_channels"] == 1
    with pytest.raises(ConfigError, match="g_noise"):
        CGANConfig(g_noise=-1)
    with pytest.raises(ConfigError, match="g_padding"):
        CGANConfig(g_padding="same")
    with pytest.raises(ConfigError, match="g_input_lowpass"):
        CGANConfig(g_input_lowpass=-0.5)
    with pytest.raises(ConfigError, match="g_input_tv"):
        CGANConfig(g_input_tv=0.5, g_input_lowpass=1.0)
    # a noisy generator: variants are reproducible from the rng (also after save / load), and one mask rendered
    # with two noise draws gives two images
    sampler = MaskConditionedSampler(low.ae, low.G, CGANConfig(**{**TINY, "perturb": {
        **TINY["perturb"], "p_flip": 0, "p_rotate": 0, "p_translate": 0, "p_intensity": 0}}).perturb_config, "cpu", low.D)
    a = sampler.variants(images[0].numpy(), masks[0].numpy(), 3, np.random.default_rng(1))
    b = MaskConditionedSampler.load(sampler.save(tmp_path / "g.pt")).variants(
        images[0].numpy(), masks[0].numpy(), 3, np.random.default_rng(1))
    for va, vb in zip(a, b):
        np.testing.assert_allclose(va.image, vb.image, atol=1e-5)
    same = masks[0].numpy() > 0
    rendered = sampler.render(images[:1].repeat(2, 1, 1, 1), torch.from_numpy(np.stack([same, same])),
                              np.random.default_rng(2))
    assert not torch.allclose(rendered[0], rendered[1])  # one mask, two noise draws: two images


def test_texture_term_matches_the_amount_of_fine_texture_not_its_realization():
    _, masks = lungs(2)
    ae, _ = train_mask_autoencoder(masks, CGANConfig(**{**TINY, "ae_epochs": 1}), progress=False)
    trainer = CGANTrainer(ae, 1, CGANConfig(**{**TINY, "l1_lowpass": 1.0, "texture_weight": 10.0}), vgg=None)
    g = torch.Generator().manual_seed(0)
    base = torch.linspace(0, 1, 64).repeat(2, 1, 64, 1)  # smooth structure
    target = base + 0.03 * torch.randn(2, 1, 64, 64, generator=g)
    redrawn = base + 0.03 * torch.randn(2, 1, 64, 64, generator=g)  # the same amount, another realization
    noisier = base + 0.06 * torch.randn(2, 1, 64, 64, generator=g)
    smooth = base.clone()
    same = float(trainer.texture(redrawn, target))
    assert same < 0.25 * float(trainer.texture(noisier, target))
    assert same < 0.25 * float(trainer.texture(smooth, target))
    assert float(trainer.l1(redrawn, target, None)) < 0.01  # the low-passed L1 lets the realization change
    with pytest.raises(ConfigError, match="needs 'l1_lowpass'"):
        CGANConfig(texture_weight=1.0, l1_lowpass=0.0)
    off = CGANConfig(**{**TINY, "texture_weight": 0.0})
    assert float(CGANTrainer(ae, 1, off, vgg=None).texture(noisier, target)) == 0.0  # switched off


def test_generator_weight_average_and_least_squares_gan_loss():
    images, masks = lungs(8)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 1, "lr": 1e-3, "g_ema": 0.9, "gan_loss": "lsgan"})
    ae, _ = train_mask_autoencoder(masks, cfg, progress=False)
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    assert trainer.generator is trainer.G_ema and trainer.G_ema is not trainer.G
    start = [p.clone() for p in trainer.G.parameters()]
    inputs, tmasks, targets, band = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
    before = trainer.generator_loss(inputs, tmasks, targets, band)
    logs = trainer.step(inputs, tmasks, targets, band)
    assert np.isfinite(logs["d_loss"]) and trainer.generator_loss(inputs, tmasks, targets, band) < before
    decay = 2 / 11  # the warm-up's decay at step 1
    for p0, p, pe in zip(start, trainer.G.parameters(), trainer.G_ema.parameters()):
        torch.testing.assert_close(pe, decay * p0 + (1 - decay) * p)
    assert any(not torch.allclose(pe, p) for pe, p in zip(trainer.G_ema.parameters(), trainer.G.parameters()))
    logits = torch.tensor([2.0, -1.0])
    assert float(trainer.gan_loss(logits, True)) == pytest.approx(((2 - 1) ** 2 + (-1 - 1) ** 2) / 2)
    plain = CGANTrainer(ae, 1, CGANConfig(**{**TINY, "g_ema": 0.0}), vgg=None)
    assert plain.G_ema is None and plain.generator is plain.G  # without g_ema, G itself renders
    with pytest.raises(ConfigError, match="g_ema"):
        CGANConfig(g_ema=1.0)
    with pytest.raises(ConfigError, match="gan_loss"):
        CGANConfig(gan_loss="wgan")


def test_discriminator_scores_the_generator_with_batch_statistics_not_stale_running_ones():
    images, masks = lungs(8)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 1, "lr": 1e-3, "d_joint_batch": True})
    ae, _ = train_mask_autoencoder(masks, cfg, progress=False)
    inputs, tmasks, targets, band = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
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


def test_recalibrate_sets_generator_batch_norm_statistics_from_final_weights():
    images, masks = lungs(8)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 1, "g_noise": 1})
    ae, _ = train_mask_autoencoder(masks, cfg, progress=False)
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    assert trainer.generator is trainer.G_ema  # the default renders with the weight average: its statistics
    bn = next(m for m in trainer.generator.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_mean.fill_(7.0)
    seen = []
    hook = bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
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
    with pytest.raises(ConfigError, match="g_bn_passes"):
        CGANConfig(g_bn_passes=-1)


def tiny_vgg() -> VGGFeatures:
    torch.manual_seed(0)
    return VGGFeatures(VGG16Classifier(1, 2, width=4).features, imagenet=False, source="test")


def test_vgg_cap_clamps_each_images_reward_for_moving_away():
    vgg = tiny_vgg()
    images, masks = lungs(4)
    ae, _ = train_mask_autoencoder(masks, CGANConfig(**{**TINY, "ae_epochs": 1}), progress=False)
    far = torch.rand_like(images)
    dist = vgg.distance(images, far)
    cap = float(dist.median())
    terms = {c: CGANTrainer(ae, 1, CGANConfig(**{**TINY, "vgg_weight": 0.5, "vgg_cap": c}), vgg).content_terms(images, far)
             for c in (0.0, cap)}
    torch.testing.assert_close(terms[0.0]["vgg"], dist.mean())
    torch.testing.assert_close(terms[cap]["vgg"], dist.clamp_max(cap).mean())
    assert float(terms[cap]["vgg"]) < float(terms[0.0]["vgg"])
    with pytest.raises(ConfigError, match="vgg_cap"):
        CGANConfig(vgg_cap=-0.1)


def test_l2_vgg_distance_keeps_its_push_near_the_input():
    vgg = tiny_vgg()
    images, _ = lungs(2)
    direction = torch.randn_like(images)
    grads = {}
    for kind in DISTANCES:
        for scale in (1e-1, 3e-3):
            y = (images + scale * direction).requires_grad_(True)
            rewarded_distance(vgg.distance(images, y), kind, 0.0).backward()
            grads[kind, scale] = float(y.grad.norm())
    far = images + 0.1 * direction
    sq = vgg.distance(images, far)
    torch.testing.assert_close(rewarded_distance(sq, "l2", 0.0), sq.sqrt().mean(), rtol=1e-4, atol=1e-6)
    # the squared distance's gradient shrinks with the distance; the L2 distance's does not
    assert grads["squared", 3e-3] < 0.05 * grads["squared", 1e-1]
    assert grads["l2", 3e-3] > 0.3 * grads["l2", 1e-1]
    with pytest.raises(ConfigError, match="vgg_distance"):
        CGANConfig(vgg_distance="l1")


def test_train_cgan_ends_with_recalibrated_statistics():
    images, masks = lungs(6)
    for passes in (0, 1):
        cfg = CGANConfig(**{**TINY, "ae_epochs": 1, "epochs": 2, "g_bn_passes": passes, "g_ema": 0.0})
        ae, _ = train_mask_autoencoder(masks, cfg, progress=False)
        trainer, history = train_cgan(images, masks, ae, cfg, progress=False)
        assert [r["epoch"] for r in history] == [0, 1] and not trainer.generator.training
        bn = next(m for m in trainer.G.modules() if isinstance(m, nn.BatchNorm2d))
        # 6 images in batches of 4 -> 2 batches per epoch; recalibration restarts the count: one pass = 2 batches
        assert int(bn.num_batches_tracked) == (2 if passes else 2 * 2)


def test_mse_term_distance_and_cap():
    images, masks = lungs(4)
    ae, _ = train_mask_autoencoder(masks, CGANConfig(**{**TINY, "ae_epochs": 1}), progress=False)
    far = images + 0.1 * torch.randn_like(images)
    far[0] = images[0] + 0.01  # one image close to its input, under the cap
    rmse = (far - images).pow(2).flatten(1).mean(1).sqrt()
    terms = lambda **kw: CGANTrainer(ae, 1, CGANConfig(**{**TINY, "mse_weight": 1.0, **kw}), None).content_terms(images, far)
    torch.testing.assert_close(terms()["mse"], torch.nn.functional.mse_loss(far, images))
    torch.testing.assert_close(terms(mse_distance="l2")["mse"], rmse.mean())
    torch.testing.assert_close(terms(mse_distance="l2", mse_cap=0.05)["mse"], rmse.clamp_max(0.05).mean())
    assert float(rmse[0]) < 0.05 < float(rmse[1:].min())
    for bad in ({"mse_distance": "l1"}, {"mse_cap": -1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            CGANConfig(**bad)


def test_input_lowpass_discriminator_judges_pairs_with_the_view_the_generator_had(tmp_path):
    images, masks = lungs(4)
    cfg = CGANConfig(**{**TINY, "ae_epochs": 1, "g_noise": 1, "l1_lowpass": 1.0, "g_input_lowpass": 1.0,
                        "g_input_tv": 0.0})
    ae, _ = train_mask_autoencoder(masks, cfg, progress=False)
    trainer = CGANTrainer(ae, 1, cfg, vgg=None)
    assert trainer.G.params["input_lowpass"] == 1.0
    seen = []
    forward = trainer.D.forward
    trainer.D.forward = lambda c, y: seen.append(c[:, :1].detach().clone()) or forward(c, y)
    inputs, tmasks, targets, band = training_pairs(images.numpy(), masks.numpy(), cfg, np.random.default_rng(0))
    trainer.step(inputs, tmasks, targets, band)
    assert seen and all(torch.allclose(c[: len(inputs)], trainer.G.source_view(inputs)) for c in seen)
    assert not torch.allclose(seen[0][: len(inputs)], inputs)  # not the raw source
    # the option travels with the generator: a saved sampler renders with the same view
    sampler = MaskConditionedSampler(trainer.ae, trainer.G, cfg.perturb_config, "cpu", trainer.D)
    loaded = MaskConditionedSampler.load(sampler.save(tmp_path / "g.pt"))
    assert loaded.G.params["input_lowpass"] == 1.0
    rng = np.random.default_rng(3)
    a = sampler.render(inputs[:2], tmasks[:2], np.random.default_rng(3))
    assert torch.allclose(a, loaded.render(inputs[:2], tmasks[:2], rng), atol=1e-6)
    # the edge-preserving (TV) view reaches the generator through the config and survives save / load too
    tv = CGANTrainer(ae, 1, CGANConfig(**{**TINY, "ae_epochs": 1}), vgg=None)
    assert tv.G.params["input_tv"] == 0.5  # the default
    with mock.patch.object(tv.G, "source_view", wraps=tv.G.source_view) as view:
        tv.step(inputs, tmasks, targets, band)
    assert view.call_count == 1  # the TV view (a CPU round trip) once per step: D's condition and G's input and not torch.allclose(tv.G.source_view(inputs), inputs)
    tv_sampler = MaskConditionedSampler(tv.ae, tv.G, cfg.perturb_config, "cpu", tv.D)
    tv_loaded = MaskConditionedSampler.load(tv_sampler.save(tmp_path / "tv.pt"))
    assert tv_loaded.G.params["input_tv"] == 0.5
    assert torch.allclose(tv_sampler.render(inputs[:2], tmasks[:2], np.random.default_rng(4)),
                          tv_loaded.render(inputs[:2], tmasks[:2], np.random.default_rng(4)), atol=1e-6)
