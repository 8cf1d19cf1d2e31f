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
from medloop.synth.perturb import PerturbConfig, make_variants
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
    def render(self, sources: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Generator output for sources ``[B, C, S, S]`` conditioned on binary masks ``[B, S, S]``."""
        z = self.ae.encode((masks > 0).float()[:, None].to(self.device))
        prior = torch.sigmoid(self.ae.decode(z))
        return self.G(sources.float().to(self.device), z, prior).cpu()

    def variants(self, image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor, n: int,
                 rng: np.random.Generator, batch_size: int = 32) -> list[GeneratedVariant]:
        """Up to ``n`` variants of ``image [C, S, S]`` with lung ``mask [S, S]`` (rendered in batches)."""
        image = np.asarray(image, dtype=np.float32)
        mask = np.asarray(mask).astype(np.int64)
        if image.shape[-1] != self.size or mask.shape != image.shape[-2:]:
            raise ConfigError(f"the generator was trained at {self.size} px; got an image of {tuple(image.shape[-2:])} "
                              f"and a mask of {tuple(mask.shape)}: load the data at size {self.size}")
        drawn = make_variants(image[0], mask, n, self.perturb, rng)
        lo, hi = float(image.min()), float(image.max())
        out = []
        for start in range(0, len(drawn), batch_size):
            chunk = drawn[start:start + batch_size]
            sources = torch.from_numpy(np.stack([_geometric_all_channels(image, v) for v in chunk]))
            masks = torch.from_numpy(np.stack([v.mask for v in chunk]))
            rendered = self.render(sources, masks).numpy()
            for v, src, img in zip(chunk, sources.numpy(), rendered):
                lung = v.mask > 0
                for op in v.ops:
                    if op["op"] == "intensity" and op.get("shift"):
                        img[:, lung] += op["shift"]  # the lung intensity change, on the rendered lung
                out.append(GeneratedVariant(np.clip(img, lo, hi).astype(np.float32), v.mask, src, v.geometric_mask, v.ops))
        return out

    def save(self, path: str | Path, **record: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        from medloop import __version__

        torch.save({"kind": "medloop-mask-cgan", "medloop_version": __version__,
                    "ae_params": {"size": self.ae.size, "latent_dim": self.ae.latent_dim, "channels": list(self.ae.channels)},
                    "g_params": self.g_params, "d_params": self.d_params, "perturb": self.perturb.to_dict(),
                    "ae": self.ae.state_dict(), "G": self.G.state_dict(),
                    "D": self.D.state_dict() if self.D is not None else None, **self.record, **record}, tmp)
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

    @property
    def g_params(self) -> dict[str, int]:
        g = self.G
        return {"in_channels": g.out[-1].out_channels, "latent_dim": self.ae.latent_dim,
                "features": g.blocks[0].film.out_features // 2 if len(g.blocks) else g.down[0].out_channels,
                "n_blocks": len(g.blocks)}

    @property
    def d_params(self) -> dict[str, int] | None:
        if self.D is None:
            return None
        d = self.D
        return {"in_channels": d.features[0].in_channels, "features": d.features[0].out_channels,
                "dense": d.classifier[0].out_features, "pool": d.pool.output_size}


def _geometric_all_channels(image: np.ndarray, variant) -> np.ndarray:
    """The source for the generator: every channel through the variant's geometric ops."""
    if image.shape[0] == 1:
        return variant.geometric[None].astype(np.float32)
    channels = []
    for c in range(image.shape[0]):
        img, msk = image[c], np.zeros(image.shape[-2:], dtype=np.int64)
        for op in variant.ops:
            if op["op"] == "flip":
                img = img[:, ::-1]
            elif op["op"] in ("rotate", "translate"):
                img = _replay(op, img, msk)
        channels.append(img)
    return np.stack(channels).astype(np.float32)


def _replay(op: dict[str, Any], image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import math

    from medloop.synth.perturb import affine_pair

    if op["op"] == "translate":
        return affine_pair(image, mask, np.eye(2), np.array([-op["dy"], -op["dx"]], dtype=float))[0]
    t = math.radians(op["degrees"])
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    centre = (np.array(image.shape, dtype=float) - 1) / 2
    return affine_pair(image, mask, rot, centre - rot @ centre)[0]


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
    sampler = MaskConditionedSampler(trainer.ae, trainer.G, config.perturb_config, device, trainer.D, record)
    return sampler, record
