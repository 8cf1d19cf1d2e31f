"""Fast MC scoring equals T naive full passes under the same seed; pool scoring streams in batches."""

from __future__ import annotations

import pytest
import torch

from medloop.data import load_dataset
from medloop.models import build_model, mc_dropout_layers, mc_generators
from medloop.uncertainty import mc_forward, naive_mc_forward, score_pool


@pytest.mark.parametrize("name, params, shape", [
    ("resnet18", {"width": 8}, (4, 1, 32, 32)),
    ("vgg16", {"width": 4, "num_classes": 3}, (3, 1, 32, 32)),
    ("unet", {"channels": (4, 8, 16), "num_classes": 3}, (2, 1, 16, 16)),  # 4 active dropout layers in the decoder
    ("unet", {"channels": (4, 8, 16), "num_classes": 3, "dropout_layout": "head"}, (2, 1, 16, 16)),  # channel dropout
])
@pytest.mark.parametrize("max_head_batch", [None, 5])
def test_fast_mc_gives_exactly_the_naive_samples(name, params, shape, max_head_batch):
    torch.manual_seed(0)
    model = build_model(name, **params)
    x = torch.randn(shape)
    fast_logits, fast_lv = mc_forward(model, x, mc_generators(7, 6), max_head_batch=max_head_batch)
    slow_logits, slow_lv = naive_mc_forward(model, x, mc_generators(7, 6))
    assert fast_logits.shape == (shape[0], 6, *slow_logits.shape[2:])
    torch.testing.assert_close(fast_logits, slow_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_lv, slow_lv, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fast_logits[:, 0], fast_logits[:, 1])  # the passes really differ


def test_fast_and_naive_draw_identical_dropout_masks():
    torch.manual_seed(0)
    model = build_model("unet", channels=(4, 8, 16), num_classes=3)
    layers = [layer for layer in mc_dropout_layers(model) if layer.p > 0]
    assert len(layers) == 4  # two convolutions in each of the two decoder blocks
    for layer in layers:
        layer.record = True
    x = torch.randn(2, 1, 16, 16)
    mc_forward(model, x, mc_generators(3, 4))
    fast = [layer.last_mask.reshape(4, 2, *layer.last_mask.shape[1:]) for layer in layers]
    for t, g in enumerate(mc_generators(3, 4)):
        naive_mc_forward(model, x, [g])
        for layer, masks in zip(layers, fast):
            assert torch.equal(layer.last_mask, masks[t])


def test_mc_scoring_is_seeded():
    model = build_model("resnet18", width=8)
    x = torch.randn(3, 1, 32, 32)
    a = mc_forward(model, x, mc_generators(1, 5))[0]
    b = mc_forward(model, x, mc_generators(1, 5))[0]
    c = mc_forward(model, x, mc_generators(2, 5))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_score_pool_streams_batches_and_returns_every_measure(monkeypatch):
    ds = load_dataset("builtin:chest-xray", size=32, options={"n_normal": 4, "n_nodule": 3}, progress=False)
    model = build_model("resnet18", width=8)
    calls = []
    import medloop.uncertainty.mc as mc

    real = mc.mc_forward
    monkeypatch.setattr(mc, "mc_forward", lambda m, x, g, **kw: calls.append(len(x)) or real(m, x, g, **kw))
    scores = score_pool(model, ds, n_mc_samples=4, batch_size=3, progress=False)
    assert calls == [3, 3, 1]  # never the whole pool at once
    assert scores.sample_ids == ds.sample_ids
    for key in ("epistemic", "aleatoric", "combined", "entropy", "bald", "margin", "variation_ratio", "pred", "prob_1"):
        assert scores.columns[key].shape == (7,)
    assert len(scores.rows()) == 7 and scores.rows()[0]["sample_id"] == "cxr-0001"


def test_score_pool_segmentation_reductions_and_maps():
    ds = load_dataset("builtin:cardiac-mr", size=16, options={"n_volumes": 1, "min_slices": 3, "max_slices": 3}, progress=False)
    model = build_model("unet", channels=(4, 8, 16), num_classes=3)
    seen = []
    scores = score_pool(model, ds, n_mc_samples=3, batch_size=2, on_maps=lambda idx, maps, p: seen.append((idx, maps["combined"].shape)),
                        progress=False)
    assert "combined_top_q_mean" in scores.columns and "bald_foreground_sum" in scores.columns
    assert seen == [([0, 1], (2, 16, 16)), ([2], (1, 16, 16))]


def test_segmentation_foreground_fraction_is_that_of_pixels_whose_argmax_is_not_background():
    ds = load_dataset("builtin:cardiac-mr", size=16, options={"n_volumes": 1, "min_slices": 2, "max_slices": 2}, progress=False)
    model = build_model("unet", channels=(4, 8, 16), num_classes=3, dropout_layout="head")
    seen = []
    scores = score_pool(model, ds, n_mc_samples=3, batch_size=2, on_maps=lambda idx, maps, p: seen.append(p), progress=False)
    mean_probs = seen[0]
    expected = (mean_probs.argmax(1) > 0).flatten(1).float().mean(1)
    torch.testing.assert_close(torch.as_tensor(scores.columns["foreground_fraction"]), expected)


def test_segmentation_maps_computed_per_image_equal_the_whole_batch_measures():
    from medloop.uncertainty.measures import all_measures

    ds = load_dataset("builtin:cardiac-mr", size=16, options={"n_volumes": 1, "min_slices": 3, "max_slices": 3}, progress=False)
    torch.manual_seed(0)
    model = build_model("unet", channels=(4, 8, 16), num_classes=3)
    seen = {}
    score_pool(model, ds, n_mc_samples=4, batch_size=3, seed=2, on_maps=lambda idx, maps, p: seen.update(maps=maps, p=p),
               progress=False)
    x = torch.stack([ds[i].image for i in range(3)])
    mc_logits, mc_log_var = mc_forward(model, x, mc_generators(2, 4, offset=0), max_head_batch=64)
    mc_probs = mc_logits.softmax(2)
    for name, umap in all_measures(mc_probs, mc_log_var).items():
        assert torch.equal(seen["maps"][name], umap), name
    assert torch.equal(seen["p"], mc_probs.mean(1))
