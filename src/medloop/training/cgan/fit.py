"""The whole generator recipe: mask autoencoder, the content loss's VGG16, then the cGAN -> a sampler.

``fit_generator`` trains everything a ``medloop.synth.generator.MaskConditionedSampler`` needs from real images
with lung masks (Mahapatra et al. 2018); the sampler renders the variants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.errors import ConfigError, DataError
from medloop.seeding import stream, torch_init
from medloop.synth.generator import MaskConditionedSampler
from medloop.training.cgan.config import CGANConfig
from medloop.training.cgan.losses import VGGFeatures
from medloop.training.cgan.mask_ae import train_mask_autoencoder
from medloop.training.cgan.trainer import train_cgan
from medloop.training.checkpoint import load_checkpoint
from medloop.training.trainer import fit

__all__ = ["check_vgg_source", "build_vgg", "fit_generator"]


def check_vgg_source(config: CGANConfig, labels: np.ndarray | None) -> None:
    """Fail before any training when the content loss needs a VGG16 that cannot be had."""
    if config.vgg or config.vgg_weight == 0:
        return
    if labels is None or (labels >= 0).sum() < 2 or len(np.unique(labels[labels >= 0])) < 2:
        raise ConfigError("the content loss needs a VGG16: give cgan.vgg (a local ImageNet vgg16 file or a medloop "
                          "vgg16 checkpoint), or labeled images of two classes to train one, or set cgan.vgg_weight 0")


def build_vgg(config: CGANConfig, images: torch.Tensor | None = None, labels: np.ndarray | None = None,
              progress: bool = True) -> tuple[VGGFeatures | None, dict[str, Any]]:
    """The VGG16 of the content loss: a local file when ``config.vgg`` is set, else the project's own
    vgg16 classifier trained on ``images``/``labels``. Returns ``(features or None, description)``."""
    from medloop.models import VGG16Classifier, load_pretrained

    if config.vgg_weight == 0:
        return None, {"vgg": "not used (vgg_weight is 0)"}
    in_channels = int(images.shape[1]) if images is not None else 1
    if config.vgg:
        path = Path(config.vgg)
        if not path.is_file():
            raise DataError("VGG16 weights not found; give a local torchvision vgg16/vgg16_bn .pth file or a "
                            "`medloop train --model vgg16` checkpoint", path, "missing")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and state.get("model") == "vgg16" and "state_dict" in state:
            model, _ = load_checkpoint(path)
            return VGGFeatures(model.features, imagenet=False, source=f"medloop vgg16 checkpoint {path}"), {
                "vgg": f"medloop vgg16 checkpoint {path}"}
        has_bn = any("running_mean" in k for k in state) if isinstance(state, dict) else False
        model = VGG16Classifier(in_channels, 2, batch_norm=has_bn)
        report = load_pretrained(model, path)
        return VGGFeatures(model.features, imagenet=True, source=f"ImageNet VGG16 {path}"), {
            "vgg": f"ImageNet {'vgg16_bn' if has_bn else 'vgg16'} from {path}", "loaded": report.loaded}
    check_vgg_source(config, labels)
    from medloop.config import TrainConfig
    from medloop.data.dataset import MedDataset
    from medloop.data.record import DatasetInfo, Sample

    keep = np.nonzero(labels >= 0)[0]
    samples = [Sample(images[i], None, int(labels[i]), f"img{i}", f"img{i}", "generator-training") for i in keep]
    ds = MedDataset.from_samples(samples, DatasetInfo("vgg-training", "memory"))
    with torch_init(config.seed, "cgan", "vgg"):
        model = VGG16Classifier(in_channels, int(labels.max()) + 1, width=config.vgg_width)
    cfg = TrainConfig(model="vgg16", model_params={"width": config.vgg_width}, epochs=config.vgg_epochs,
                      patience=0, seed=config.seed, device=config.device, augment={"enabled": False})
    result = fit(model, ds, None, cfg, progress=progress)
    model.cpu().eval()
    desc = (f"project's own vgg16 (width {config.vgg_width}) trained {config.vgg_epochs} epochs on {len(keep)} "
            "labeled images")
    final_loss = result.history[-1]["train_loss"] if result.history else None
    return VGGFeatures(model.features, imagenet=False, source=desc), {"vgg": desc, "final_train_loss": final_loss}


def fit_generator(images: torch.Tensor, masks: torch.Tensor, config: CGANConfig, labels: np.ndarray | None = None,
                  progress: bool = True) -> tuple[MaskConditionedSampler, dict[str, Any]]:
    """Train the mask autoencoder (85% of the masks; reconstruction Dice on the other 15%), the VGG16 of the
    content loss when needed, then the cGAN. ``images [N, C, S, S]``, ``masks [N, S, S]`` (lung > 0)."""
    from medloop.device import resolve_device

    if len(images) < 2:
        raise ConfigError(f"the generator needs at least 2 images with lung masks; got {len(images)}")
    if images.shape[-1] % 16 or images.shape[-1] != images.shape[-2]:
        raise ConfigError(f"the generator needs square images whose size is divisible by 16; got "
                          f"{tuple(images.shape[-2:])}: use a working size such as 64, 128 or 256")
    check_vgg_source(config, labels)
    order = stream(config.seed, "mask_ae", "split").permutation(len(masks))
    n_val = max(1, int(round(0.15 * len(masks)))) if len(masks) >= 8 else 0
    ae, ae_report = train_mask_autoencoder(masks[order[n_val:]], config, masks[order[:n_val]] if n_val else None,
                                           progress=progress)
    vgg, vgg_report = build_vgg(config, images, labels, progress=progress)
    trainer, history = train_cgan(images, masks, ae, config, vgg, progress=progress)
    device = resolve_device(config.device)
    record = {"cgan_config": config.to_dict(), "autoencoder": {k: v for k, v in ae_report.items() if k != "history"},
              "content_vgg": vgg_report, "cgan_history": history}
    sampler = MaskConditionedSampler(trainer.ae, trainer.generator, config.perturb_config, config.g_input_tv, device,
                                     trainer.D, record)
    return sampler, record
