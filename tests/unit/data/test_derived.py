"""``MedDataset.derived``: samples made on access a group at a time (a loop's variants rendered again in the
driver), in their members' order, with the last groups kept, and an error when a render does not make a member."""

from __future__ import annotations

import pytest
import torch

from medloop.data import MedDataset, Sample
from medloop.data.record import DatasetInfo
from medloop.errors import DataError

INFO = DatasetInfo(name="derived", root="derived", class_names=(), mask_labels={})


def _render(calls: list[int], drop: str | None = None):
    def render(g: int) -> list[Sample]:
        calls.append(g)
        made = [Sample(torch.full((1, 4, 4), float(10 * g + v)), None, None, f"case{g}", f"s{g}v{v}", "synthetic")
                for v in range(3)]
        return [s for s in made if s.sample_id != drop]
    return render


def test_members_come_in_their_order_and_groups_are_made_once():
    calls: list[int] = []
    members = [(1, "s1v2"), (0, "s0v0"), (1, "s1v0"), (0, "s0v2")]
    ds = MedDataset.derived(INFO, [("s0", "case0"), ("s1", "case1")], members, _render(calls), keep=2)
    assert ds.sample_ids == ["s1v2", "s0v0", "s1v0", "s0v2"] and ds.case_ids == ["case1", "case0", "case1", "case0"]
    values = [float(ds[i].image[0, 0, 0]) for i in range(len(ds))]
    assert values == [12.0, 0.0, 10.0, 2.0] and [ds[i].sample_id for i in range(len(ds))] == ds.sample_ids
    assert sorted(calls) == [0, 1]  # each group rendered once, however its members interleave


def test_a_render_that_does_not_make_a_member_is_an_error():
    ds = MedDataset.derived(INFO, [("s0", "case0")], [(0, "s0v1")], _render([], drop="s0v1"))
    with pytest.raises(DataError, match="rendering group 's0' again did not make \\['s0v1'\\]"):
        ds[0]
