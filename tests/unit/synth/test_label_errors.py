"""Graded label-map errors and the local agreement a graded discriminator learns."""

from __future__ import annotations

import pytest
import torch

from medloop.synth.label_errors import agreement_map, damage_label_maps


def heart(n: int = 4, size: int = 32) -> torch.Tensor:
    """Rings: myocardium (1) around a blood pool (2), centred."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    one = torch.zeros(size, size, dtype=torch.long)
    one[r < 9] = 1
    one[r < 6] = 2
    return one.repeat(n, 1, 1)


def test_damaged_maps_keep_valid_labels_and_differ_from_the_truth():
    truth = heart(32)
    damaged = damage_label_maps(truth, 3, torch.Generator().manual_seed(0))
    assert damaged.shape == truth.shape and damaged.dtype == truth.dtype
    assert int(damaged.min()) >= 0 and int(damaged.max()) <= 2
    changed = (damaged != truth).flatten(1).any(1)
    assert changed.float().mean() > 0.8  # nearly every map got an error (a 1 px shift of a ring can cancel)
    again = damage_label_maps(truth, 3, torch.Generator().manual_seed(0))
    assert torch.equal(damaged, again)  # seeded


def test_agreement_is_one_for_the_truth_and_falls_as_the_error_grows():
    truth = heart(1)
    assert torch.allclose(agreement_map(truth, truth, (4, 4)), torch.ones(1, 1, 4, 4))
    scores = []
    for shift in (0, 1, 3, 6):
        moved = torch.roll(truth, shifts=shift, dims=2)
        scores.append(float(agreement_map(moved, truth, (1, 1))))
    assert scores[0] == 1.0 and scores == sorted(scores, reverse=True) and scores[-1] < 0.5


def test_a_background_only_map_gets_a_blob_and_bad_class_counts_are_refused():
    empty = torch.zeros(2, 16, 16, dtype=torch.long)
    assert (damage_label_maps(empty, 3, torch.Generator().manual_seed(1)) > 0).any()
    with pytest.raises(ValueError, match="num_classes"):
        damage_label_maps(empty, 1, torch.Generator())
