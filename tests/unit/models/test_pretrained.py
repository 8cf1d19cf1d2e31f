"""torchvision-format ImageNet checkpoints map onto medloop's modules (built here: nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medloop.errors import ConfigError, DataError
from medloop.models import build_model, load_pretrained
from medloop.models.classifiers import VGG16_CFG


def torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    """Keys and shapes of torchvision's resnet18 (random values), written out independently of medloop."""
    state: dict[str, torch.Tensor] = {"conv1.weight": torch.randn(64, 3, 7, 7)}

    def bn(prefix, c):
        state.update({f"{prefix}.weight": torch.rand(c), f"{prefix}.bias": torch.randn(c), f"{prefix}.running_mean": torch.randn(c),
                      f"{prefix}.running_var": torch.rand(c) + 0.5, f"{prefix}.num_batches_tracked": torch.tensor(7)})

    bn("bn1", 64)
    c_in = 64
    for layer, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            state[f"{p}.conv1.weight"] = torch.randn(c, c_in if block == 0 else c, 3, 3)
            bn(f"{p}.bn1", c)
            state[f"{p}.conv2.weight"] = torch.randn(c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if block == 0 and layer > 1:
                state[f"{p}.downsample.0.weight"] = torch.randn(c, c_in, 1, 1)
                bn(f"{p}.downsample.1", c)
        c_in = c
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return state


def torchvision_vgg16_state() -> dict[str, torch.Tensor]:
    state, idx, c_in = {}, 0, 3
    for v in VGG16_CFG:
        if v == "M":
            idx += 1
            continue
        state[f"features.{idx}.weight"], state[f"features.{idx}.bias"] = torch.randn(v, c_in, 3, 3), torch.randn(v)
        idx += 2  # conv, relu
        c_in = v
    state.update({"classifier.0.weight": torch.randn(4096, 25088), "classifier.0.bias": torch.randn(4096)})
    return state


def test_resnet18_checkpoint_loads_with_first_conv_summed_to_one_channel(tmp_path):
    state = torchvision_resnet18_state()
    torch.save(state, tmp_path / "resnet18.pth")
    model = build_model("resnet18", in_channels=1, num_classes=2)
    report = load_pretrained(model, tmp_path / "resnet18.pth")
    assert report.loaded == len(state) - 2 and report.skipped == ["fc.weight", "fc.bias"]
    assert torch.allclose(model.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.backbone.layer3[0].downsample[0].weight, state["layer3.0.downsample.0.weight"])
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    # a gray image through the adapted conv equals the RGB-replicated image through the original one
    x = torch.randn(1, 1, 16, 16)
    ref = nn.functional.conv2d(x.repeat(1, 3, 1, 1), state["conv1.weight"], stride=2, padding=3)
    assert torch.allclose(model.backbone.conv1(x), ref, atol=1e-4)


@pytest.mark.parametrize("global_pool", ["max", "avgmax"])
def test_resnet18_checkpoint_loads_whatever_the_global_pool(tmp_path, global_pool):
    # the pooling sits inside MONAI's backbone (its ``avgpool``): it must add no weights the checkpoint lacks
    torch.save(torchvision_resnet18_state(), tmp_path / "r.pth")
    model = build_model("resnet18", global_pool=global_pool)
    assert load_pretrained(model, tmp_path / "r.pth").loaded == len(torchvision_resnet18_state()) - 2
    assert model.forward_features(torch.randn(2, 1, 32, 32)).shape == (2, model.num_features)


def test_vgg16_checkpoint_loads_into_features(tmp_path):
    state = torchvision_vgg16_state()
    torch.save({"state_dict": state}, tmp_path / "vgg16.pth")  # wrapped checkpoints work too
    model = build_model("vgg16", in_channels=3, batch_norm=False)
    report = load_pretrained(model, tmp_path / "vgg16.pth")
    assert report.first_conv == "kept" and torch.equal(model.features[28].weight, state["features.28.weight"])
    with pytest.raises(ConfigError, match=r"checkpoint is vgg16 but the model has batch_norm=True; set batch_norm: false"):
        load_pretrained(build_model("vgg16", in_channels=3), tmp_path / "vgg16.pth")


def test_width_mismatch_and_missing_file_are_clear_errors(tmp_path):
    torch.save(torchvision_resnet18_state(), tmp_path / "r.pth")
    with pytest.raises(ConfigError, match=r"'conv1.weight' has shape \(64, 1, 7, 7\) but the model expects \(16, 1, 7, 7\); "
                                          r"pretrained ResNet-18 weights need width=64"):
        load_pretrained(build_model("resnet18", width=16), tmp_path / "r.pth")
    with pytest.raises(DataError, match=r"nope\.pth: pretrained checkpoint not found"):
        load_pretrained(build_model("resnet18"), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(DataError, match=r"junk\.pth: cannot read as a PyTorch checkpoint"):
        load_pretrained(build_model("resnet18"), tmp_path / "junk.pth")
