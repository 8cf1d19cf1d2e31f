"""Named random streams: reproducible, independent, and no change to global state."""

from __future__ import annotations

import pytest
import torch

from medloop.seeding import seed_for, stream, torch_init, torch_stream


def test_same_name_same_draws_other_name_other_draws():
    a = stream(3, "round", 1, "query").random(4)
    assert (a == stream(3, "round", 1, "query").random(4)).all()
    assert not (a == stream(3, "round", 2, "query").random(4)).any()
    assert not (a == stream(4, "round", 1, "query").random(4)).any()
    assert seed_for(0, "x") != seed_for(0, "y") and 0 <= seed_for(0, "x") < 2**31 - 1
    t = torch_stream(1, "mc")
    assert torch.equal(torch.rand(3, generator=t), torch.rand(3, generator=torch_stream(1, "mc")))


def test_torch_init_restores_the_global_state():
    torch.manual_seed(123)
    expected = torch.rand(2)
    torch.manual_seed(123)
    with torch_init(7, "model"):
        w1 = torch.nn.Linear(3, 2).weight.detach().clone()
    assert torch.equal(torch.rand(2), expected)  # the caller's stream is where it was
    with torch_init(7, "model"):
        assert torch.equal(torch.nn.Linear(3, 2).weight, w1)


def test_bad_names_are_refused():
    with pytest.raises(TypeError):
        seed_for(0, 1.5)
    with pytest.raises(ValueError):
        seed_for(0, -1)
