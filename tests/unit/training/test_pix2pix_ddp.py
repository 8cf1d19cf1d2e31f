"""Data-parallel pix2pix (``Pix2PixConfig.workers``): two DDP processes train the caller's networks, the setting
reaches the config from a collaborative experiment's YAML, and settings it cannot honour are refused."""

from __future__ import annotations

import math

import pytest
import torch

from medloop.errors import ConfigError
from medloop.training.pix2pix import Pix2PixConfig, Pix2PixTrainer, train_pix2pix

TINY = dict(g_channels=(4, 8), d_features=8, batch_size=4, epochs=2, lr=2e-3, device="cpu")


def tiny_data(n=12, size=16):
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0.5).long() + (x[:, 0] > 0.8).long()  # a label map the image determines
    return x, y


@pytest.mark.parametrize("layout, discriminator", [("decoder", "graded"), ("head", "pix2pix")])
def test_two_workers_train_the_callers_networks(monkeypatch, layout, discriminator):
    spawned = []
    start_processes = torch.multiprocessing.start_processes
    monkeypatch.setattr(torch.multiprocessing, "start_processes",
                        lambda *a, **kw: spawned.append(kw["nprocs"]) or start_processes(*a, **kw))
    x, y = tiny_data()
    kw = dict(TINY, dropout_layout=layout, discriminator=discriminator)
    trainer = Pix2PixTrainer(1, 3, 16, Pix2PixConfig(workers=2, **kw))
    untrained = Pix2PixTrainer(1, 3, 16, Pix2PixConfig(**kw))  # the same seed: the same initial networks
    history = train_pix2pix(trainer, x, y, torch.ones(len(x)), seed=0, progress=False)
    assert spawned == [2]  # the two workers ran
    assert trainer.rank_spread == 0.0  # gradients were averaged: both ranks ended with the same weights
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(set(h) == {"epoch", "d_loss", "g_loss", "g_adv", "g_sup"} for h in history)
    assert all(math.isfinite(v) for h in history for v in h.values())
    for net in ("G", "D"):  # the caller's trainer holds the trained weights
        trained, initial = getattr(trainer, net).state_dict(), getattr(untrained, net).state_dict()
        assert any(not torch.equal(trained[k], initial[k]) for k in trained), net
    assert trainer.opt_g.state_dict()["state"] and trainer.opt_d.state_dict()["state"]
    assert not trainer.G.training and not trainer.D.training
    with torch.no_grad():
        before, after = untrained.G.eval()(x)[0], trainer.G(x)[0]
        ones = torch.ones(len(x))
        assert not torch.equal(before, after)
        assert trainer.supervised(after, y, ones) < trainer.supervised(before, y, ones)


def test_one_worker_takes_any_batch_size():
    assert Pix2PixConfig(batch_size=1).workers == 1


def test_one_worker_trains_in_this_process(monkeypatch):
    monkeypatch.setattr(torch.multiprocessing, "start_processes", lambda *a, **kw: pytest.fail("spawned"))
    x, y = tiny_data(n=8)
    assert len(train_pix2pix(Pix2PixTrainer(1, 3, 16, Pix2PixConfig(**TINY)), x, y, torch.ones(8), 0, False)) == 2


@pytest.mark.parametrize("params, match", [
    ({"workers": 0}, "The 'workers' parameter of Pix2PixConfig must be >= 1; got 0"),
    ({"workers": 3, "batch_size": 4},
     r"The 'workers' parameter of Pix2PixConfig must be at most batch_size // 2 \(2\).*got 3: lower workers or raise"),
    ({"workers": 2, "device": "cuda"},
     "The 'workers' parameter of Pix2PixConfig .* trains on CPU processes.*set device: cpu"),
])
def test_workers_settings_it_cannot_honour_are_refused(params, match):
    with pytest.raises(ConfigError, match=match):
        Pix2PixConfig.from_dict(params)


def test_collaborative_pix2pix_workers_come_from_the_yaml_and_exclude_processes(tmp_path):
    from medloop.methods import load_config

    path = tmp_path / "collab.yaml"
    path.write_text("method: ravanbakhsh2018\npix2pix:\n  batch_size: 8\n  workers: 2\n")
    assert load_config(path).pix2pix_config.workers == 2
    with pytest.raises(ConfigError, match=r"'processes' parameter \(2\) and 'pix2pix.workers' \(2\).*set one of them"):
        load_config(path, {"processes": 2})
    with pytest.raises(ConfigError, match="'workers' parameter of Pix2PixConfig .* set device: cpu"):
        load_config(path, {"device": "cuda"})  # the experiment's device reaches pix2pix's config
    with pytest.raises(ConfigError, match="pix2pix: unknown key 'worker'.*did you mean 'workers'"):
        load_config(path, {"pix2pix.worker": 2})
