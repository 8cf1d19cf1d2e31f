"""The phantom cache: renders are stored atomically and re-used; a cache that cannot be written only costs speed."""

from __future__ import annotations

import numpy as np

from medloop.cache import cached_arrays


def _compute(calls):
    def compute():
        calls.append(1)
        return {"image": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"nodule": True}
    return compute


def test_second_call_reads_the_stored_arrays(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLOOP_CACHE_DIR", str(tmp_path / "c"))
    calls: list[int] = []
    first = cached_arrays({"k": 1}, _compute(calls))
    second = cached_arrays({"k": 1}, _compute(calls))
    assert len(calls) == 1 and second[1] == {"nodule": True}
    np.testing.assert_array_equal(first[0]["image"], second[0]["image"])
    assert [p.suffix for p in (tmp_path / "c" / "phantoms").iterdir()] == [".npz"]  # no temporary file left


def test_unwritable_cache_only_costs_speed(tmp_path, monkeypatch):
    root = tmp_path / "c"
    root.mkdir()
    (root / "phantoms").write_text("a file where the cache folder should be")  # any OSError on write, even as root
    monkeypatch.setenv("MEDLOOP_CACHE_DIR", str(root))
    calls: list[int] = []
    arrays, meta = cached_arrays({"k": 1}, _compute(calls))
    cached_arrays({"k": 1}, _compute(calls))
    assert calls == [1, 1] and meta == {"nodule": True} and arrays["image"].shape == (2, 3)


def test_a_damaged_cache_file_is_rendered_again(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLOOP_CACHE_DIR", str(tmp_path / "c"))
    calls: list[int] = []
    cached_arrays({"k": 1}, _compute(calls))
    (path,) = (tmp_path / "c" / "phantoms").iterdir()
    path.write_bytes(path.read_bytes()[:20])
    arrays, _ = cached_arrays({"k": 1}, _compute(calls))
    assert calls == [1, 1] and arrays["image"].shape == (2, 3)
    assert cached_arrays({"k": 1}, _compute(calls))[0]["image"].shape == (2, 3) and calls == [1, 1]
