"""``cache: disk``: the prepared samples of a pool in a store on disk, read back one at a time; the same samples as
in memory, no source file read again, a new store when a file changes, a store cut short by a kill never used."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from medloop.data import load_dataset
from medloop.errors import ConfigError, DataError
from tests.conftest import gray, lung_mask, write_png


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLOOP_CACHE_DIR", str(tmp_path / "cache"))


def _folder(root, n=4):
    for i in range(n):
        write_png(root / "images" / f"{i:03d}.png", gray(24, 24, i))
        write_png(root / "masks" / f"{i:03d}.png", lung_mask(24, 24))
    return root


def _same(a, b):
    assert a.sample_ids == b.sample_ids and a.case_ids == b.case_ids and list(a.labels) == list(b.labels)
    for x, y in zip(a, b):
        assert torch.equal(x.image, y.image) and x.image.dtype == torch.float32
        assert (x.mask is None and y.mask is None) or torch.equal(x.mask, y.mask)
        assert x.slice_index == y.slice_index and x.source == y.source
        assert json.loads(json.dumps(x.meta, default=list)) == json.loads(json.dumps(y.meta, default=list))


def test_disk_store_holds_what_memory_holds_and_is_reused_without_reading(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds")
    memory = load_dataset(str(root), size=16, progress=False)
    disk = load_dataset(str(root), size=16, cache="disk", progress=False)
    _same(memory, disk)
    assert disk._cache is None  # nothing held: each sample is read from the store when used

    import medloop.data.dataset as dataset_module

    def no_reading(*args, **kwargs):
        raise AssertionError("a source file was read again")

    monkeypatch.setattr(dataset_module, "read_entry", no_reading)
    again = load_dataset(str(root), size=16, cache="disk", progress=False)
    _same(memory, again)
    assert [e.entry_id for e in again.entries] == [e.entry_id for e in memory.entries]


def test_a_changed_file_makes_a_new_store_and_a_torn_store_is_not_used(tmp_path):
    root = _folder(tmp_path / "ds")
    first = load_dataset(str(root), size=16, cache="disk", progress=False)
    write_png(root / "images" / "002.png", gray(24, 24, 99))  # edited: another size / modification time
    os.utime(root / "images" / "002.png", ns=(1, 1))
    edited = load_dataset(str(root), size=16, cache="disk", progress=False)
    assert not torch.equal(first[2].image, edited[2].image)
    _same(load_dataset(str(root), size=16, progress=False), edited)

    from medloop.cache import cache_dir

    for index in (cache_dir() / "pools").glob("*/index.json"):
        index.unlink()  # stores that lost their index (a disk error) are written again, not used
    assert not list((cache_dir() / "pools").glob("*.part-*"))  # nothing of a finished write is left behind
    _same(load_dataset(str(root), size=16, progress=False), load_dataset(str(root), size=16, cache="disk",
                                                                          progress=False))


def test_a_load_killed_while_writing_leaves_no_store(tmp_path, monkeypatch):
    import medloop.data.dataset as dataset_module
    from medloop.cache import cache_dir

    root = _folder(tmp_path / "ds")
    real, calls = dataset_module.read_entry, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops the load half way
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "read_entry", killed)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(str(root), size=16, cache="disk", progress=False)
    assert not list((cache_dir() / "pools").glob("*"))
    monkeypatch.setattr(dataset_module, "read_entry", real)
    _same(load_dataset(str(root), size=16, progress=False), load_dataset(str(root), size=16, cache="disk",
                                                                          progress=False))


def test_skips_are_reported_again_from_the_store(tmp_path):
    root = _folder(tmp_path / "ds")
    damaged = root / "images" / "001.png"
    damaged.write_bytes(damaged.read_bytes()[:60])
    first = load_dataset(str(root), size=16, cache="disk", on_error="skip", progress=False)
    again = load_dataset(str(root), size=16, cache="disk", on_error="skip", progress=False)
    assert first.sample_ids == again.sample_ids == ["000", "002", "003"]
    assert [(e.reason, e.path) for e in first.skipped] == [(e.reason, e.path) for e in again.skipped]
    assert again.skipped and again.skipped[0].path.endswith("001.png")


def test_a_store_written_under_skip_does_not_hide_a_bad_file_from_raise(tmp_path):
    root = _folder(tmp_path / "ds")
    damaged = root / "images" / "001.png"
    damaged.write_bytes(damaged.read_bytes()[:60])
    load_dataset(str(root), size=16, cache="disk", on_error="skip", progress=False)
    with pytest.raises(DataError, match="001.png"):
        load_dataset(str(root), size=16, cache="disk", progress=False)  # on_error: raise


def test_a_torn_index_is_written_again_and_stale_parts_are_swept(tmp_path):
    from medloop.cache import cache_dir

    root = _folder(tmp_path / "ds")
    memory = load_dataset(str(root), size=16, progress=False)
    load_dataset(str(root), size=16, cache="disk", progress=False)
    (store,) = (cache_dir() / "pools").iterdir()
    columns = store / "columns.npz"
    columns.write_bytes(columns.read_bytes()[:50])  # torn by a crash
    stale = store.with_name(f"{store.name}.part-999999999-x")  # a killed writer's part, an hour old
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    _same(memory, load_dataset(str(root), size=16, cache="disk", progress=False))
    assert not stale.exists() and sorted(p.name for p in (cache_dir() / "pools").iterdir()) == [store.name]


def test_volumes_on_disk_are_the_slices_in_memory():
    options = {"n_volumes": 2, "min_slices": 3, "max_slices": 3}
    memory = load_dataset("builtin:cardiac-mr", size=16, options=options, progress=False)
    disk = load_dataset("builtin:cardiac-mr", size=16, options=options, cache="disk", progress=False)
    _same(memory, disk)
    assert [s.slice_index for s in disk] == [s.slice_index for s in memory]


def test_disk_cache_needs_a_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLOOP_CACHE_DIR", "off")
    with pytest.raises(ConfigError, match="'cache' parameter 'disk' needs a cache folder.*MEDLOOP_CACHE_DIR"):
        load_dataset(str(_folder(tmp_path / "ds")), cache="disk", progress=False)
    with pytest.raises(ConfigError, match="'cache' parameter of DataConfig must be true or false or one of \\['disk'\\]"):
        load_dataset(str(tmp_path / "ds"), cache="yes", progress=False)


def test_a_pool_on_disk_scores_as_in_memory(tmp_path):
    from medloop.models import build_model
    from medloop.seeding import torch_init
    from medloop.uncertainty import score_pool

    root = _folder(tmp_path / "ds", n=6)
    with torch_init(0):
        model = build_model("resnet18", in_channels=1, num_classes=2, width=4, dropout=0.5)
    kw = dict(n_mc_samples=3, seed=1, progress=False)
    a = score_pool(model, load_dataset(str(root), size=16, progress=False), **kw).columns
    b = score_pool(model, load_dataset(str(root), size=16, cache="disk", progress=False), **kw).columns
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
