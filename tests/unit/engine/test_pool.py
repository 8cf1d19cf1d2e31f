"""The engine-independent parts: per-sample dropout seeds, the streaming in-process scorer, the global top-k,
engine choice, and that Ray is imported only when a job runs on it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from medloop.data import load_dataset
from medloop.engine import ScoreSpec, check_engine, merge_top_k, top_k
from medloop.engine.local import score_local
from medloop.errors import ConfigError, DataError
from medloop.training import load_checkpoint
from medloop.uncertainty import score_pool


def test_sample_seeding_does_not_depend_on_batches(checkpoint, pool):
    model, _ = load_checkpoint(checkpoint)
    ds = load_dataset(pool, size=32, progress=False)
    a = score_pool(model, ds, n_mc_samples=6, batch_size=5, seed=1, seeding="sample", progress=False)
    b = score_pool(model, ds.subset(range(len(ds) - 1, -1, -1)), n_mc_samples=6, batch_size=8, seed=1,
                   seeding="sample", progress=False)
    for key in a.columns:
        np.testing.assert_allclose(a.columns[key], b.columns[key][::-1], atol=1e-6, err_msg=key)
    # the batch-position seeding (the loop's) does depend on them: the check above could fail
    c = score_pool(model, ds, n_mc_samples=6, batch_size=8, seed=1, seeding="batch", progress=False)
    assert np.abs(a.columns["bald"] - c.columns["bald"]).max() > 1e-4
    other = score_pool(model, ds, n_mc_samples=6, batch_size=5, seed=2, seeding="sample", progress=False)
    assert np.abs(a.columns["bald"] - other.columns["bald"]).max() > 1e-4


def test_score_local_streams_the_same_columns_as_score_pool(checkpoint, pool):
    spec = ScoreSpec.for_checkpoint(checkpoint, pool, n_mc_samples=6, batch_size=7, seed=1)
    assert spec.data.size == 32  # the checkpoint's working size
    local = score_local(spec, progress=False)
    model, _ = load_checkpoint(checkpoint)
    ref = score_pool(model, load_dataset(spec.data, progress=False), n_mc_samples=6, batch_size=4, seed=1,
                     seeding="sample", progress=False)
    assert list(local["sample_id"]) == ref.sample_ids
    for key, value in ref.columns.items():
        np.testing.assert_allclose(local[key], value, atol=1e-5, err_msg=key)
    assert local["embedding"].dtype == np.float16 and local["embedding"].shape == (36, 32)


def test_merge_top_k_is_order_independent_with_ties_and_nan():
    ids = np.array(["e", "b", "d", "a", "c", "f"], dtype=object)
    scores = np.array([0.5, 0.9, 0.5, np.nan, 0.7, 0.1])
    best, best_scores = top_k(ids, scores, 4)
    assert list(best) == ["b", "c", "d", "e"]  # 0.5 tie: the smaller id first
    np.testing.assert_allclose(best_scores, [0.9, 0.7, 0.5, 0.5])
    # the same top-k when rows arrive in two chunks, in another order
    part, part_scores = merge_top_k(np.array([], dtype=object), np.array([]), ids[3:], scores[3:], 4)
    merged, _ = merge_top_k(part, part_scores, ids[:3], scores[:3], 4)
    assert list(merged) == list(best)
    assert list(top_k(ids, scores, 10)[0])[-1] == "a"  # NaN last


@pytest.mark.parametrize("engine, address, match", [
    ("spark", None, "The '--engine' parameter must be one of local, ray; got 'spark'"),
    ("local", "ray://head:10001", "applies only with engine 'ray'"),
])
def test_check_engine_refuses(engine, address, match):
    with pytest.raises(ConfigError, match=match):
        check_engine(engine, address)


def test_experiment_config_engine_keys():
    from medloop.loop.config import CollaborativeConfig, ExperimentConfig

    assert ExperimentConfig.from_dict({"engine": "ray"}).engine == "ray"  # the pool's or the variants' scoring
    with pytest.raises(ConfigError, match="'engine' parameter 'ray' cannot apply with recipe: frozen"):
        ExperimentConfig.from_dict({"engine": "ray", "recipe": "frozen", "augment_copies": 1, "segmenter": None,
                                    "strategies": ["coreset"]})
    with pytest.raises(ConfigError, match="applies only with engine 'ray'"):
        CollaborativeConfig.from_dict({"engine_address": "auto"})
    with pytest.raises(ConfigError, match="'ray' cannot apply to strategy 'entropy'.*MC-dropout"):
        CollaborativeConfig.from_dict({"engine": "ray"})  # the default strategies include entropy
    with pytest.raises(ConfigError, match="'ray' judges the pool on Ray's workers, and 'processes' \\(2\\)"):
        CollaborativeConfig.from_dict({"engine": "ray", "processes": 2, "strategies": ["discriminator"]})
    assert CollaborativeConfig.from_dict({"engine": "ray", "strategies": ["discriminator", "random"]}).engine == "ray"
    assert ExperimentConfig.from_dict({"engine": "local"}).engine == "local"


def test_ray_engine_without_ray_names_the_extra(checkpoint, pool, tmp_path, monkeypatch):
    from medloop.jobs import score_job

    monkeypatch.setitem(sys.modules, "ray", None)  # "not installed": importing it raises ImportError
    with pytest.raises(ConfigError, match=r"pip install medloop\[ray\]"):
        score_job(checkpoint, pool, tmp_path, n_mc_samples=2, engine="ray", progress=False)


def test_nothing_imports_ray_unless_asked():
    code = ("import sys, medloop, medloop.cli, medloop.jobs, medloop.engine, medloop.engine.local, medloop.loop; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_source_read_again_on_a_worker_is_its_own_slice_of_a_volume():
    from medloop.data.dataset import resolve_layout
    from medloop.engine.ray import read_sample  # plain Python: imports no Ray

    ds = load_dataset("builtin:cardiac-mr", size=32, options={"n_volumes": 2, "min_slices": 3, "max_slices": 3},
                      progress=False)
    layout = resolve_layout(ds.config)
    for i in range(len(ds)):  # every slice of a volume shares the volume's entry
        again = read_sample(layout, ds.entry_of(i), ds.config, ds.sample_ids[i])
        assert again.sample_id == ds[i].sample_id and again.slice_index == ds[i].slice_index
        assert np.array_equal(again.image.numpy(), ds[i].image.numpy())
    with pytest.raises(DataError, match="'cmr-01:z09' is not in its entry"):
        read_sample(layout, ds.entry_of(0), ds.config, "cmr-01:z09")


def test_every_slice_of_a_volume_is_tagged_with_its_entry(checkpoint):
    from medloop.config import DataConfig
    from medloop.engine import BatchScorer
    from medloop.engine.pool import scan_pool

    data = DataConfig.from_dict({"source": "builtin:cardiac-mr", "size": 32,
                                 "options": {"n_volumes": 2, "min_slices": 3, "max_slices": 3}})
    spec = ScoreSpec(str(checkpoint), data, n_mc_samples=2)
    entries, _ = scan_pool(spec)
    read = BatchScorer(spec).read(entries)
    assert [entry_id for _, entry_id in read] == [e.entry_id for e in entries for _ in range(3)]
    assert all(s.sample_id == f"{entry_id}:z{s.slice_index:02d}" for s, entry_id in read)
