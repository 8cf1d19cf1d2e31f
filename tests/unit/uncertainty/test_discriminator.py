"""Discriminator uncertainty: maps brought to image size, per-slice reductions on constructed outputs."""

from __future__ import annotations

import pytest
import torch

from medloop.uncertainty.discriminator import plausibility_map, slice_score


def test_map_is_upsampled_plausibility():
    logits = torch.full((2, 1, 4, 4), 5.0)
    logits[1, 0, 0, 0] = -5.0
    pmap = plausibility_map(logits, (32, 32))
    assert pmap.shape == (2, 32, 32) and ((pmap >= 0) & (pmap <= 1)).all()
    assert pmap[0].min() > 0.99 and pmap[1, :4, :4].max() < 0.1  # the implausible patch stays where it was


def test_less_plausible_slices_score_higher():
    good = torch.full((1, 1, 4, 4), 4.0)
    one_bad_patch = good.clone()
    one_bad_patch[0, 0, 1, 1] = -4.0
    all_bad = torch.full((1, 1, 4, 4), -4.0)
    maps = plausibility_map(torch.cat([good, one_bad_patch, all_bad]), (16, 16))
    for reduction in ("mean", "low_q"):
        s = slice_score(maps, reduction)
        assert s[0] < s[1] < s[2], reduction
    # low_q looks at the worst pixels: one bad patch counts much more than in the mean
    assert slice_score(maps, "low_q")[1] > 3 * slice_score(maps, "mean")[1]


def test_unknown_reduction():
    with pytest.raises(ValueError, match="low_q"):
        slice_score(torch.rand(1, 4, 4), "median")
