"""Mask-conditioned sample generation with a trained generator: render variants (Mahapatra et al. 2018).

``MaskConditionedSampler.variants`` makes up to N realistic variants of one image: the perturbations of
``medloop.synth.perturb`` decide the new mask (and geometry), the generator renders the image for it from the
source view (``medloop.synth.views``), and the lung intensity change is applied to the rendered lung. The
training recipe that makes a sampler is ``fit_generator`` in ``training/cgan`` (synth/ never imports training/).
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
from medloop.storage import save_torch
from medloop.synth.perturb import PerturbConfig, intensity_shift, make_variants, shift_lung
from medloop.synth.views import source_view

__all__ = ["GeneratedVariant", "MaskConditionedSampler"]

# generator options of files written before they were removed, with the only value the networks still build
_REMOVED_G_OPTIONS = {"upsample": "resize", "padding": "zeros", "input_lowpass": 0.0}


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
    """A trained mask autoencoder + generator that renders variants of an image.

    ``input_tv`` is the source-view setting the generator was trained with (``CGANConfig.g_input_tv``): the
    sampler computes that view before rendering, and ``save`` records it, so a loaded sampler renders the same.
    """

    def __init__(self, ae: MaskAutoencoder, generator: MaskConditionedGenerator, perturb: PerturbConfig,
                 input_tv: float, device: torch.device | str = "cpu", discriminator: PairDiscriminator | None = None,
                 record: dict[str, Any] | None = None):
        if input_tv < 0:
            raise ConfigError(f"The 'input_tv' parameter of MaskConditionedSampler must be >= 0; got {input_tv}")
        self.ae = ae.to(device).eval()
        self.G = generator.to(device).eval()
        self.D = discriminator
        self.perturb = perturb
        self.input_tv = float(input_tv)
        self.device = torch.device(device)
        self.record = record or {}

    @property
    def size(self) -> int:
        return self.ae.size

    @torch.no_grad()
    def render(self, sources: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Generator output for sources ``[B, 1, S, S]`` conditioned on binary masks ``[B, S, S]``; a generator
        with noise channels gets its noise from ``rng`` (reproducible variants)."""
        z, prior = self.ae.condition(masks)
        view = source_view(sources.float().to(self.device), self.input_tv)
        noise = None
        if self.G.noise_channels:
            noise = torch.from_numpy(rng.standard_normal(self.G.noise_shape(view), dtype=np.float32)).to(self.device)
        return self.G(view, z, prior, noise).cpu()

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
        """Write the networks, the source-view setting and the perturbations (plus ``record``) to ``path``."""
        from medloop import __version__

        # the record first: what describes the networks below always comes from the networks themselves
        return save_torch(path, {
            **self.record, **record, "kind": "medloop-mask-cgan", "medloop_version": __version__,
            "ae_params": {"size": self.ae.size, "latent_dim": self.ae.latent_dim, "channels": list(self.ae.channels)},
            "g_params": self.G.params, "d_params": self.D.params if self.D is not None else None,
            "source_view": {"input_tv": self.input_tv}, "perturb": self.perturb.to_dict(),
            "ae": self.ae.state_dict(), "G": self.G.state_dict(),
            "D": self.D.state_dict() if self.D is not None else None})

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
        g_params = dict(state["g_params"])
        # files written before the source view left the generator keep its setting (and removed options) there
        view = state.get("source_view") or {"input_tv": g_params.pop("input_tv", 0.0)}
        for name, only in _REMOVED_G_OPTIONS.items():
            if g_params.pop(name, only) != only:
                raise DataError(f"this generator was trained with the removed option {name}="
                                f"{state['g_params'][name]!r}; train it again with this medloop version", path, "format")
        G = MaskConditionedGenerator(**g_params)
        G.load_state_dict(state["G"])
        D = None
        if state.get("D") is not None:
            D = PairDiscriminator(**state["d_params"])
            D.load_state_dict(state["D"])
        record = {k: v for k, v in state.items() if k not in ("ae", "G", "D")}
        return cls(ae, G, PerturbConfig.from_dict(state["perturb"]), view["input_tv"], device, D, record)
