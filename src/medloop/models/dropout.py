"""MC dropout whose masks come from explicit generators, one per MC sample.

Kendall & Gal (2017) estimate epistemic uncertainty with dropout kept on at test time. Here every
stochastic pass ``t`` draws its masks from its own ``torch.Generator``, layer after layer. A batched run
(the deterministic trunk once, the stochastic head on ``T`` stacked copies) therefore draws exactly the
masks that ``T`` separate full passes draw, whatever the number of dropout layers: same seed, same samples.

A pass may also hold one generator per sample (``mc_sample_generators``): each image's masks then depend on
the seed and the image's id only, not on which batch or worker it landed in, so a pool scored in batches of
any size, in any order, on any number of workers gives the same samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from medloop.seeding import seeds_for, torch_stream

__all__ = ["MCDropout", "mc_sampling", "mc_generators", "mc_sample_generators", "patch_dropout",
           "mc_dropout_layers"]

# One pass's masks: one generator for the whole batch, or one per sample (in batch order).
PassGenerators = torch.Generator | Sequence[torch.Generator]


@dataclasses.dataclass
class _MCState:
    generators: Sequence[PassGenerators]  # one entry per MC sample in the batch, t-major order


class MCDropout(nn.Module):
    """Dropout that (a) trains like ``nn.Dropout`` and (b) samples from per-pass generators under ``mc_sampling``.

    Outside ``mc_sampling`` and in eval mode it is the identity (a deterministic pass).
    Input in MC mode: ``[T * N, ...]`` with the T copies stacked t-major (all of pass 0, then pass 1, ...).
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"The 'p' parameter of MCDropout must be in [0, 1); got {p} instead")
        self.p = p
        self.generator: torch.Generator | None = None  # training masks (set by the trainer for seeded runs)
        self._mc: _MCState | None = None
        self.last_mask: torch.Tensor | None = None  # kept only when ``record`` is set (tests, debugging)
        self.record = False

    def _mask(self, shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
        keep = torch.full(tuple(shape), 1.0 - self.p, dtype=like.dtype, device=like.device)
        return torch.bernoulli(keep, generator=generator) / (1.0 - self.p)

    def _pass_mask(self, n: int, shape: Sequence[int], gens: PassGenerators, like: torch.Tensor) -> torch.Tensor:
        if isinstance(gens, torch.Generator):
            return self._mask((n, *shape), gens, like)
        if len(gens) != n:
            raise ValueError(f"per-sample MC generators: {len(gens)} for a batch of {n} samples")
        return torch.cat([self._mask((1, *shape), g, like) for g in gens])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        if self._mc is not None:
            gens = self._mc.generators
            if x.shape[0] % len(gens):
                raise ValueError(f"MC batch of {x.shape[0]} is not a multiple of {len(gens)} samples")
            n = x.shape[0] // len(gens)
            mask = torch.cat([self._pass_mask(n, x.shape[1:], g, x) for g in gens])
            if self.record:
                self.last_mask = mask.detach().clone()
            return x * mask
        if self.training:
            return x * self._mask(x.shape, self.generator, x)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mc_dropout_layers(model: nn.Module) -> list[MCDropout]:
    return [m for m in model.modules() if isinstance(m, MCDropout)]


def patch_dropout(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Dropout``/``nn.Dropout2d`` inside ``model`` by ``MCDropout`` (in place)."""
    for name, child in list(model.named_children()):
        if isinstance(child, (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.Dropout3d)) and not isinstance(child, MCDropout):
            setattr(model, name, MCDropout(child.p))
        else:
            patch_dropout(child)
    return model


def mc_generators(seed: int, n_samples: int, offset: int = 0, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per MC pass: the stream ``(seed, "mc", offset, t)`` (offset: e.g. a batch's position in a pool)."""
    return [torch_stream(seed, "mc", offset, t, device=device) for t in range(n_samples)]


def _sample_key(sample_id: str) -> int:
    """A 64-bit integer for a sample id (BLAKE2b): ids of a million-image pool do not collide, as CRC-32's would."""
    return int.from_bytes(hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest(), "little")


def mc_sample_generators(seed: int, sample_ids: Sequence[str], n_samples: int,
                         device: str | torch.device = "cpu") -> list[list[torch.Generator]]:
    """Per-sample generators ``[T][N]``: pass ``t`` of sample ``i`` draws from the ``t``-th seed of the stream
    ``(seed, "mc-sample", key(id_i))``, whatever the batch around it."""
    out: list[list[torch.Generator]] = [[] for _ in range(n_samples)]
    for sample_id in sample_ids:
        for t, s in enumerate(seeds_for(seed, "mc-sample", _sample_key(sample_id), n=n_samples)):
            out[t].append(torch.Generator(device=device).manual_seed(int(s)))
    return out


@contextlib.contextmanager
def mc_sampling(model: nn.Module, generators: Sequence[PassGenerators]) -> Iterator[None]:
    """Within the block, the model's MCDropout layers sample masks from ``generators`` (one entry per pass: a
    generator, or one generator per sample of the batch)."""
    layers = mc_dropout_layers(model)
    state = _MCState(list(generators))
    for layer in layers:
        layer._mc = state
    try:
        yield
    finally:
        for layer in layers:
            layer._mc = None
