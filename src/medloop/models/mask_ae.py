"""Convolutional autoencoder of lung masks: its latent vector ``z`` encodes any (perturbed) mask.

Mahapatra et al. 2018 condition the generator on the latent code of the deformed mask; this is that encoder
and the decoder that maps a code back to a mask (logits).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskAutoencoder"]


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(True))


class MaskAutoencoder(nn.Module):
    """Mask ``[N, 1, S, S]`` (0/1) -> latent ``z [N, latent_dim]`` -> mask logits ``[N, 1, S, S]``.

    Args:
        size: mask side length (divisible by ``2 ** len(channels)``).
        latent_dim: length of ``z``.
        channels: encoder widths, one strided 4x4 convolution each (the decoder mirrors them).
    """

    def __init__(self, size: int = 128, latent_dim: int = 64, channels: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        factor = 2 ** len(channels)
        if size % factor:
            raise ValueError(f"size {size} must be divisible by {factor} (one halving per encoder block)")
        self.size, self.latent_dim, self.channels = size, latent_dim, tuple(channels)
        self.grid = size // factor
        widths = [1, *channels]
        self.encoder = nn.Sequential(*[_down(a, b) for a, b in zip(widths[:-1], widths[1:])])
        flat = channels[-1] * self.grid * self.grid
        self.to_latent = nn.Linear(flat, latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU(True))
        rev = list(reversed(channels))
        self.decoder = nn.Sequential(*[_up(a, b) for a, b in zip(rev[:-1], rev[1:])],
                                     nn.ConvTranspose2d(rev[-1], 1, 4, stride=2, padding=1))

    def encode(self, mask: torch.Tensor) -> torch.Tensor:
        """``[N, 1, S, S]`` float mask -> ``z [N, latent_dim]``."""
        return self.to_latent(self.encoder(mask).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z [N, latent_dim]`` -> mask logits ``[N, 1, S, S]``."""
        h = self.from_latent(z).view(len(z), self.channels[-1], self.grid, self.grid)
        return self.decoder(h)

    @torch.no_grad()
    def condition(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the generator is conditioned on: binary masks ``[N, S, S]`` -> (code ``z [N, latent_dim]``,
        decoded mask prior ``[N, 1, S, S]`` in [0, 1])."""
        device = next(self.parameters()).device
        z = self.encode((masks > 0).float()[:, None].to(device))
        return z, torch.sigmoid(self.decode(z))

    def forward(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(mask)
        return self.decode(z), z
