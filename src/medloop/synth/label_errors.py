"""Label maps with graded errors: what a segmenter gets wrong, made from a correct map.

The collaborative discriminator (Ravanbakhsh et al.) should score a label map by how wrong it is, not by
whether it is one-hot (Luc et al. 2016 show a discriminator can tell one-hot ground truth from soft predictions
without judging the anatomy). Training it on ground truth damaged by known amounts teaches it the grades:
each map gets one error of a random kind and size:

- ``erode`` / ``dilate``: one structure shrinks or grows by 1..``max_px`` pixels (into its neighbours);
- ``shift``: one structure moves by up to ``max_px`` pixels;
- ``drop``: one structure disappears (becomes background);
- ``swap``: two structures exchange labels;
- ``noise``: boundary pixels flip to a neighbour's label with probability 0.1..0.5.

Pure torch on ``[N, H, W]`` integer maps, drawn from an explicit generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ERROR_KINDS", "damage_label_maps", "agreement_map"]

ERROR_KINDS = ("erode", "dilate", "shift", "drop", "swap", "noise")


def _grow(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Binary dilation of ``[H, W]`` by ``px`` pixels (square structuring element)."""
    return F.max_pool2d(mask[None, None].float(), 2 * px + 1, stride=1, padding=px)[0, 0] > 0


def _one(label: torch.Tensor, num_classes: int, gen: torch.Generator, max_px: int) -> torch.Tensor:
    present = [int(c) for c in torch.unique(label) if c > 0]
    if not present:  # nothing to damage but the background: add a blob of a random structure
        out = label.clone()
        h, w = label.shape
        cy, cx = int(torch.randint(h, (1,), generator=gen)), int(torch.randint(w, (1,), generator=gen))
        r = max(1, min(h, w) // 16)
        out[max(0, cy - r):cy + r, max(0, cx - r):cx + r] = int(torch.randint(1, num_classes, (1,), generator=gen))
        return out
    kind = ERROR_KINDS[int(torch.randint(len(ERROR_KINDS), (1,), generator=gen))]
    c = present[int(torch.randint(len(present), (1,), generator=gen))]
    px = int(torch.randint(1, max_px + 1, (1,), generator=gen))
    out = label.clone()
    mask = label == c
    if kind == "erode":
        inner = ~_grow(~mask, px)
        out[mask & ~inner] = 0
    elif kind == "dilate":
        out[_grow(mask, px) & ~mask & (label == 0)] = c
    elif kind == "shift":
        dy, dx = (int(v) for v in torch.randint(-px, px + 1, (2,), generator=gen))
        moved = torch.roll(mask, shifts=(dy, dx), dims=(0, 1))
        out[mask] = 0
        out[moved] = c
    elif kind == "drop":
        out[mask] = 0
    elif kind == "swap" and len(present) > 1:
        other = present[(present.index(c) + 1) % len(present)]
        out[mask] = other
        out[label == other] = c
    else:  # noise (and swap with a single structure): flip boundary pixels to a neighbour's label
        edge = _grow(mask, 1) & ~(~_grow(~mask, 1))
        p = 0.1 + 0.4 * float(torch.rand(1, generator=gen))
        flip = edge & (torch.rand(label.shape, generator=gen) < p)
        neighbour = torch.where(mask, torch.zeros_like(label), torch.full_like(label, c))
        out[flip] = neighbour[flip]
    return out


def damage_label_maps(labels: torch.Tensor, num_classes: int, gen: torch.Generator, max_px: int = 4) -> torch.Tensor:
    """One random error per map: ``[N, H, W]`` -> ``[N, H, W]`` (same dtype, labels in ``[0, num_classes)``)."""
    if num_classes < 2:
        raise ValueError(f"label maps need at least 2 classes; got num_classes={num_classes}")
    return torch.stack([_one(lab, num_classes, gen, max_px) for lab in labels.cpu()]).to(labels.device)


def agreement_map(label_map: torch.Tensor, truth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """How right ``label_map`` is, region by region, at D's output resolution: ``[N, H, W]`` -> ``[N, 1, h, w]``.

    Per region: the fraction of foreground pixels (of either map) on which the two agree (an IoU-like local
    score); 1 where neither map has foreground (nothing there to get wrong).
    """
    union = ((label_map > 0) | (truth > 0)).float()[:, None]
    agree = (union * (label_map == truth).float()[:, None])
    u = F.adaptive_avg_pool2d(union, size)
    a = F.adaptive_avg_pool2d(agree, size)
    return torch.where(u > 1e-6, a / u.clamp_min(1e-6), torch.ones_like(u))
