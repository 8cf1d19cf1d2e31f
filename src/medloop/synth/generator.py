"""Mask-conditioned sample generation: fit the mask autoencoder + cGAN, render variants (Mahapatra et al. 2018).

``fit_generator`` trains everything a ``MaskConditionedSampler`` needs from real images with lung masks;
``MaskConditionedSampler.variants`` makes up to N realistic variants of one image: the perturbations of
``medloop.synth.perturb`` decide the new mask (and geometry), the generator renders the image for it, and the
lung intensity change is applied to the rendered lung.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medloop.errors import ConfigError, DataError
from medloop.models.cgan import MaskConditionedGenerator, PairDiscriminator
from medloop.models.mask_ae import MaskAutoencoder
from medloop.synth.perturb import PerturbConfig, intensity_shift, make_variants, shift_lung
from medloop.training.cgan import CGANConfig, VGGFeatures, train_cgan, train_mask_autoencoder

__all__ = ["GeneratedVariant", "MaskConditionedSampler", "fit_generator", "build_vgg", "check_vgg_source"]


@dataclasses.dataclass
class GeneratedVariant:
    """One synthetic sample: ``image [C, S, S]`` float32, ``mask [S, S]`` int64 (the conditioning mask),
    ``source [C, S, S]`` (the source after the geometric ops: what the generator received), ``source_mask``
    (the source's mask after the same geometric ops, before the boundary moved) and the ops."""

    image: np.ndarray
    mask: np.ndarray
    source: np.ndarray
    source_mask: np.ndarray
    ops: list[dict[str, Any]]


class MaskConditionedSampler:
    """A trained mask autoencoder + generator that renders variants of an image."""

    def __init__(self, ae: MaskAutoencoder, generator: MaskConditionedGenerator, perturb: PerturbConfig,
                 device: torch.device | str = "cpu", discriminator: PairDiscriminator | None = None,
                 record: dict[str, Any] | None = None):
        self.ae = ae.to(device).eval()
        self.G = generator.to(device).eval()
        self.D = discriminator
        self.perturb = perturb
        self.device = torch.device(device)
        self.record = record or {}

    @property
    def size(self) -> int:
        return self.ae.size

    @torch.no_grad()
    def render(self, sources: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Generator output for sources ``[B, 1, S, S]`` conditioned on binary masks ``[B, S, S]``.

        A generator with noise channels gets its noise from ``rng`` (reproducible variants), or from torch's
        global generator when ``rng`` is None."""
        z, prior = self.ae.condition(masks)
        noise = None
        if self.G.noise_channels and rng is not None:
            noise = torch.from_numpy(rng.standard_normal(self.G.noise_shape(sources), dtype=np.float32)).to(self.device)
        return self.G(sources.float().to(self.device), z, prior, noise).cpu()

    def variants(self, image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor, n: int,
                 rng: np.random.Generator, batch_size: int = 32) -> list[GeneratedVariant]:
        """Up to ``n`` variants of a single-channel ``image [1, S, S]`` with lung ``mask [S, S]`` (in batches)."""
        image = np.asarray(image, dtype=np.float32)
        mask = np.asarray(mask).astype(np.int64)
        if image.ndim != 3 or image.shape[0] != 1:
            raise ConfigError(f"the generator works on single-channel radiographs; got an image of shape "
                              f"{tuple(image.shape)}: load the data with channels: 1")
        if image.shape[-1] != self.size or mask.shape != image.shape[-2:]:
            raise ConfigError(f"the generator was trained at {self.size} px; got an image of {tuple(image.shape[-2:])} "
                              f"and a mask of {tuple(mask.shape)}: load the data at size {self.size}")
        drawn = make_variants(image[0], mask, n, self.perturb, rng)
        lo, hi = float(image.min()), float(image.max())
        out = []
        for start in range(0, len(drawn), batch_size):
            chunk = drawn[start:start + batch_size]
            sources = torch.from_numpy(np.stack([v.geometric[None] for v in chunk]).astype(np.float32))
            masks = torch.from_numpy(np.stack([v.mask for v in chunk]))
            rendered = self.render(sources, masks, rng).numpy()
            for v, src, img in zip(chunk, sources.numpy(), rendered):
                shift = intensity_shift(v.ops)
                if shift:  # the lung intensity change, on the rendered lung
                    img = shift_lung(img, v.mask > 0, shift, lo, hi)
                out.append(GeneratedVariant(np.clip(img, lo, hi).astype(np.float32), v.mask, src, v.geometric_mask, v.ops))
        return out

    def save(self, path: str | Path, **record: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        from medloop import __version__

        # the record first: what describes the networks below always comes from the networks themselves
        torch.save({**self.record, **record, "kind": "medloop-mask-cgan", "medloop_version": __version__,
                    "ae_params": {"size": self.ae.size, "latent_dim": self.ae.latent_dim, "channels": list(self.ae.channels)},
                    "g_params": self.G.params, "d_params": self.D.params if self.D is not None else None,
                    "perturb": self.perturb.to_dict(),
                    "ae": self.ae.state_dict(), "G": self.G.state_dict(),
                    "D": self.D.state_dict() if self.D is not None else None}, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "MaskConditionedSampler":
        path = Path(path)
        if not path.is_file():
            raise DataError("generator checkpoint not found; give the generator.pt written by `medloop generate`",
                            path, "missing")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", path, "corrupt") from None
        if not isinstance(state, dict) or state.get("kind") != "medloop-mask-cgan":
            raise DataError("not a medloop generator checkpoint; use the generator.pt written by `medloop generate`",
                            path, "format")
        ap = state["ae_params"]
        ae = MaskAutoencoder(ap["size"], ap["latent_dim"], tuple(ap["channels"]))
        ae.load_state_dict(state["ae"])
        G = MaskConditionedGenerator(**state["g_params"])
        G.load_state_dict(state["G"])
        D = None
        if state.get("D") is not None:
            D = PairDiscriminator(**state["d_params"])
            D.load_state_dict(state["D"])
        record = {k: v for k, v in state.items() if k not in ("ae", "G", "D")}
        sampler = cls(ae, G, PerturbConfig.from_dict(state["perturb"]), device, D, record)
        return sampler


def check_vgg_source(config: CGANConfig, labels: np.ndarray | None) -> None:
    """Fail before any training when the content loss needs a VGG16 that cannot be had."""
    if config.vgg or config.vgg_weight == 0 or config.content_weight == 0:
        return
    if labels is None or (labels >= 0).sum() < 2 or len(np.unique(labels[labels >= 0])) < 2:
        raise ConfigError("the content loss needs a VGG16: give cgan.vgg (a local ImageNet vgg16 file or a medloop "
                          "vgg16 checkpoint), or labeled images of two classes to train one, or set cgan.vgg_weight 0")


def build_vgg(config: CGANConfig, images: torch.Tensor | None = None, labels: np.ndarray | None = None,
              progress: bool = True) -> tuple[VGGFeatures | None, dict[str, Any]]:
    """The VGG16 of the content loss: a local file when ``config.vgg`` is set, else the project's own
    vgg16 classifier trained on ``images``/``labels``. Returns ``(features or None, description)``."""
    from medloop.models import VGG16Classifier, load_pretrained

    if config.vgg_weight == 0 or config.content_weight == 0:
        return None, {"vgg": "not used (vgg_weight or content_weight is 0)"}
    in_channels = int(images.shape[1]) if images is not None else 1
    if config.vgg:
        path = Path(config.vgg)
        if not path.is_file():
            raise DataError("VGG16 weights not found; give a local torchvision vgg16/vgg16_bn .pth file or a "
                            "`medloop train --model vgg16` checkpoint", path, "missing")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and state.get("model") == "vgg16" and "state_dict" in state:
            from medloop.training import load_checkpoint

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
    from medloop.training import fit

    keep = np.nonzero(labels >= 0)[0]
    samples = [Sample(images[i], None, int(labels[i]), f"img{i}", f"img{i}", "generator-training") for i in keep]
    ds = MedDataset.from_samples(samples, DatasetInfo("vgg-training", "memory"))
    model = VGG16Classifier(in_channels, int(labels.max()) + 1, width=config.vgg_width)
    cfg = TrainConfig(model="vgg16", model_params={"width": config.vgg_width}, epochs=config.vgg_epochs,
                      patience=0, seed=config.seed, device=config.device, augment={"enabled": False})
    torch.manual_seed(config.seed)
    result = fit(model, ds, None, cfg, progress=progress)
    model.cpu().eval()
    desc = f"project's own vgg16 (width {config.vgg_width}) trained {config.vgg_epochs} epochs on {len(keep)} labeled images"
    return VGGFeatures(model.features, imagenet=False, source=desc), {"vgg": desc,
                                                                    "final_train_loss": result.history[-1]["train_loss"] if result.history else None}


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
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(masks))
    n_val = max(1, int(round(0.15 * len(masks)))) if len(masks) >= 8 else 0
    ae, ae_report = train_mask_autoencoder(masks[order[n_val:]], config, masks[order[:n_val]] if n_val else None,
                                           progress=progress)
    vgg, vgg_report = build_vgg(config, images, labels, progress=progress)
    trainer, history = train_cgan(images, masks, ae, config, vgg, progress=progress)
    device = resolve_device(config.device)
    record = {"cgan_config": config.to_dict(), "autoencoder": {k: v for k, v in ae_report.items() if k != "history"},
              "content_vgg": vgg_report, "cgan_history": history}
    sampler = MaskConditionedSampler(trainer.ae, trainer.generator, config.perturb_config, device, trainer.D, record)
    return sampler, record
