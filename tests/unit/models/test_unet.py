"""BayesianUNet's two dropout layouts: shapes, what MC sampling repeats, and the samples' diversity."""

from __future__ import annotations

import pytest
import torch

from medloop.models import build_model, mc_dropout_layers, mc_generators
from medloop.uncertainty import mc_forward

SMALL = {"channels": (4, 8, 16), "num_classes": 3}
HEAD = {**SMALL, "dropout_layout": "head"}


@pytest.mark.parametrize("params, in_shape, out_shape", [
    ({**SMALL}, (2, 1, 16, 16), (2, 3, 16, 16)),
    ({**HEAD}, (2, 1, 16, 16), (2, 3, 16, 16)),
    ({**HEAD, "heteroscedastic": False}, (1, 1, 32, 16), (1, 3, 32, 16)),
    ({"channels": (4, 8), "num_classes": 2, "in_channels": 2, "dropout_layout": "head"}, (3, 2, 8, 8), (3, 2, 8, 8)),
])
def test_shapes(params, in_shape, out_shape):
    logits, log_var = build_model("unet", **params)(torch.randn(in_shape))
    assert logits.shape == out_shape
    assert (log_var is None) == (params.get("heteroscedastic") is False)
    if log_var is not None:
        assert log_var.shape == out_shape


def test_layouts_share_parameters_and_deterministic_output():
    torch.manual_seed(0)
    head = build_model("unet", **HEAD).eval()
    torch.manual_seed(0)
    decoder = build_model("unet", **SMALL).eval()
    assert head.state_dict().keys() == decoder.state_dict().keys()  # a checkpoint loads into either layout
    x = torch.randn(2, 1, 16, 16)
    for a, b in zip(head(x), decoder(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_head_layout_computes_the_whole_unet_once():
    model = build_model("unet", **HEAD)
    active = [layer for layer in mc_dropout_layers(model) if layer.p > 0]
    assert active == [model.head_dropout]  # the only stochastic layer: after the decoder
    feats = model.forward_features(torch.randn(2, 1, 16, 16))
    assert feats.shape == (2, 4, 16, 16)  # the last decoder map, not the encoder's
    decoder = build_model("unet", **SMALL)  # the default
    assert len([layer for layer in mc_dropout_layers(decoder) if layer.p > 0]) == 4
    assert isinstance(decoder.forward_features(torch.randn(2, 1, 16, 16)), list)


def test_head_layout_samples_vary_at_every_pixel_and_with_the_rate():
    x = torch.randn(2, 1, 16, 16)
    spread = {}
    for p in (0.1, 0.4):
        torch.manual_seed(0)
        model = build_model("unet", **HEAD, dropout=p)
        mc_probs = mc_forward(model, x, mc_generators(0, 8))[0].softmax(2)  # [N, T, K, H, W]
        std = mc_probs.std(1).amax(1)  # [N, H, W]
        assert (std > 0).float().mean() > 0.99  # a channel mask reweights every pixel's features
        spread[p] = std.mean()
    assert spread[0.4] > spread[0.1]


def test_head_layout_samples_differ_exactly_when_their_channel_masks_do():
    """The limit of channel dropout: at most 2 ** C distinct samples (C = channels[0]). With 4 channels at
    p = 0.2 samples repeat; with the default 16 (65,536 masks, 3% all-kept) they almost never do."""
    x = torch.randn(1, 1, 16, 16)
    for channels, rate in (((4, 8, 16), 0.2), ((16, 32), 0.2)):
        torch.manual_seed(0)
        model = build_model("unet", channels=channels, num_classes=3, dropout=rate, dropout_layout="head")
        model.head_dropout.record = True
        mc_logits = mc_forward(model, x, mc_generators(1, 16))[0][0]  # [T, K, H, W]
        masks = {tuple(m.tolist()) for m in model.head_dropout.last_mask}  # [T, C]: one per sample
        samples = {tuple(s.flatten().tolist()) for s in mc_logits}
        assert len(samples) == len(masks)
        if channels[0] == 16:
            assert len(samples) >= 15


def test_bad_layout_names_the_parameter():
    with pytest.raises(ValueError, match="The 'dropout_layout' parameter of BayesianUNet must be one of decoder, "
                                         "head; got 'encoder' instead"):
        build_model("unet", **SMALL, dropout_layout="encoder")
