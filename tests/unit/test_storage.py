"""Atomic writes and append-only logs that survive a torn last line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medloop.errors import DataError
from medloop.storage import append_jsonl, atomic_write, read_jsonl, save_npz, save_torch, write_json


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})

    def boom(fh):
        fh.write(b"{half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary file left behind


def test_torch_and_npz_round_trip(tmp_path):
    save_torch(tmp_path / "m" / "w.pt", {"w": torch.arange(3)})
    assert torch.equal(torch.load(tmp_path / "m" / "w.pt", weights_only=True)["w"], torch.arange(3))
    save_npz(tmp_path / "x.npz", a=np.ones(2))
    assert np.load(tmp_path / "x.npz")["a"].tolist() == [1.0, 1.0]


def test_a_torn_tail_never_swallows_the_next_record(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"n": 1})
    append_jsonl(path, {"n": 2})
    with open(path, "a") as fh:
        fh.write('{"n": 3, "half')  # a kill mid-line
    assert read_jsonl(path) == [{"n": 1}, {"n": 2}]
    append_jsonl(path, {"n": 4})
    assert read_jsonl(path) == [{"n": 1}, {"n": 2}, {"n": 4}]
    assert path.read_text().count("\n") == 3


def test_a_fragment_joined_to_a_record_is_recovered_and_other_damage_is_named(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text('{"n": 1}\n{"n": 2, "ha{"n": 3}\n{"n": 4}\n')  # written before torn tails were cut
    assert read_jsonl(path) == [{"n": 1}, {"n": 3}, {"n": 4}]
    path.write_text('{"n": 1}\nnot json\n{"n": 4}\n')
    with pytest.raises(DataError, match="old.jsonl: line 2"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "missing.jsonl") == []
