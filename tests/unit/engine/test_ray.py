"""The Ray engine against the in-process path on a tiny phantom pool: the same top-k ids, scores within 1e-5,
and a rerun that reuses the finished output. One local Ray (2 CPUs) for the module: starting it takes seconds."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install medloop[ray])")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install medloop[ray])")
pytestmark = pytest.mark.ray

from medloop.data import load_dataset  # noqa: E402
from medloop.engine import ScoreSpec, top_k  # noqa: E402
from medloop.training import load_checkpoint  # noqa: E402
from medloop.uncertainty import score_pool  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    yield ray
    ray.shutdown()


def test_ray_scores_match_in_process_and_rerun_reuses_them(local_ray, checkpoint, pool, tmp_path):
    from medloop.engine.ray import score_ray

    spec = ScoreSpec.for_checkpoint(checkpoint, pool, n_mc_samples=8, batch_size=5, seed=3)
    summary = score_ray(spec, tmp_path, k=10, progress=False)
    assert summary["rows"] == 36 and summary["entries_scored"] == 36 and summary["workers"] == 2

    model, _ = load_checkpoint(checkpoint)
    ref = score_pool(model, load_dataset(spec.data, progress=False), n_mc_samples=8, batch_size=32, seed=3,
                     seeding="sample", progress=False)
    table = pq.read_table(summary["folder"])
    row = {sid: i for i, sid in enumerate(table.column("sample_id").to_pylist())}
    order = [row[sid] for sid in ref.sample_ids]
    for key, value in ref.columns.items():
        np.testing.assert_allclose(table.column(key).to_numpy()[order], value, atol=1e-5, rtol=0, err_msg=key)
    assert summary["top_k"] == list(top_k(ref.sample_ids, ref.columns["combined"], 10)[0])
    assert (tmp_path / "topk.csv").read_text().splitlines()[1].startswith(f"1,{summary['top_k'][0]},")
    embedding = table.column("embedding")
    assert str(embedding.type.value_type) == "halffloat" and len(embedding[0]) == 32

    files = sorted(p.name for p in (tmp_path / "scores" / spec.version()).glob("*.parquet"))
    again = score_ray(spec, tmp_path, k=10, progress=False)  # same model: nothing is scored again
    assert again["entries_scored"] == 0 and again["entries_reused"] == 36 and again["top_k"] == summary["top_k"]
    assert sorted(p.name for p in (tmp_path / "scores" / spec.version()).glob("*.parquet")) == files

    # after a kill: a torn file is dropped and only its entries are scored again
    torn = tmp_path / "scores" / spec.version() / files[0]
    lost = pq.read_table(torn).num_rows
    torn.write_bytes(torn.read_bytes()[:100])
    resumed = score_ray(spec, tmp_path, k=10, progress=False)
    assert resumed["entries_scored"] == lost and resumed["rows"] == 36 and resumed["top_k"] == summary["top_k"]
    # another seed is another version: a new folder, not mixed with this one
    assert ScoreSpec.for_checkpoint(checkpoint, pool, n_mc_samples=8, seed=4).version() != spec.version()


def test_cli_score_engine_ray(local_ray, checkpoint, tmp_path):
    from typer.testing import CliRunner

    from medloop.cli import app

    out = tmp_path / "scored"
    result = CliRunner().invoke(app, ["score", "--checkpoint", str(checkpoint), "--data", "builtin:chest-xray",
                                      "-o", "n_normal=4", "-o", "n_nodule=4", "--mc-samples", "4", "--engine",
                                      "ray", "--top-k", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len((out / "topk.csv").read_text().splitlines()) == 4
    assert (out / "summary.json").is_file() and (out / "run.json").is_file()


def test_generate_on_ray_writes_what_the_local_engine_writes(local_ray, tmp_path):
    from PIL import Image

    from medloop.config import DataConfig
    from medloop.generate import generate_job
    from medloop.training.cgan import CGANConfig

    tiny = CGANConfig(latent_dim=8, ae_channels=(8, 16), ae_epochs=1, g_features=8, g_blocks=1, d_features=4,
                      d_dense=8, epochs=1, batch_size=2, vgg_weight=0.0, device="cpu")
    data = DataConfig(source="builtin:chest-xray", size=32, options={"n_normal": 2, "n_nodule": 2})
    local = generate_job(data, tmp_path / "local", per_image=3, cgan=tiny, limit=3, progress=False)
    ray_run = generate_job(data, tmp_path / "ray", per_image=3, checkpoint=tmp_path / "local" / "generator.pt",
                           limit=3, progress=False, engine="ray")
    assert local["variants"] == ray_run["variants"] == 9 and ray_run["engine"] == "ray"
    for name in ("labels.csv", "manifest.jsonl"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    for png in sorted((tmp_path / "local" / "images").glob("*.png")):
        a = np.asarray(Image.open(png), dtype=np.int64)
        b = np.asarray(Image.open(tmp_path / "ray" / "images" / png.name), dtype=np.int64)
        assert np.abs(a - b).max() <= 2  # 16-bit PNGs: rounding of the same render at most
    assert (tmp_path / "ray" / "gallery.png").is_file()


def test_ray_settings_that_cannot_apply_are_refused(local_ray):
    from medloop.engine.ray import ray_session
    from medloop.errors import ConfigError

    with pytest.raises(ConfigError, match="num_cpus \\(2\\) sizes a local Ray.*'auto' has its own CPUs"):
        with ray_session("auto", num_cpus=2):
            pass
    with pytest.raises(ConfigError, match="already running in this process.*num_cpus \\(4\\)"):
        with ray_session(num_cpus=4):  # the module's Ray has 2 CPUs: 4 would be silently ignored
            pass
    with ray_session() as ray:  # the open session, as it is
        assert ray.cluster_resources()["CPU"] == 2
    assert local_ray.is_initialized()  # not shut down by a session it did not start


LOOP = {
    "name": "ray-loop", "seeds": [0], "segmenter": None, "fsl_folds": 0, "random_subset_draws": 1,
    "data": {"source": "builtin:chest-xray", "size": 32, "options": {"n_normal": 12, "n_nodule": 12}},
    "classifier": {"model": "resnet18", "model_params": {"width": 4, "dropout": 0.5}, "epochs": 1, "batch_size": 8,
                   "patience": 0},
    "initial_per_class": 2, "query_per_class": 2, "augment_copies": 1, "n_mc_samples": 4, "record_at": [0.5],
    "budget": 0.9, "max_rounds": 1, "round_patience": 0,
}


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["class_balanced", "badge"])
def test_the_loop_on_ray_scores_as_in_process_and_selects_the_same(local_ray, strategy, tmp_path):
    """engine: ray in an experiment: each round's pool scored by the Ray job gives the in-process scores (same
    per-sample seeds) and the strategy picks what it picks on them; a rerun of a round reuses its output."""
    from medloop.loop.config import ExperimentConfig
    from medloop.loop.mahapatra import prepare, run_mahapatra_track
    from medloop.loop.state import RunState
    from medloop.methods.mahapatra.method import Mahapatra
    from medloop.query import build_strategy
    from medloop.seeding import seed_for, stream
    from medloop.training.selfsup import features

    config = ExperimentConfig.from_dict({**LOOP, "engine": "ray", "strategies": [strategy]})
    ctx = prepare(config, progress=False)
    rounds = run_mahapatra_track(ctx, 0, {"name": strategy}, tmp_path / "t")
    assert [r["round"] for r in rounds] == [0, 1] and all(len(r["queried"]) == 4 for r in rounds[:1])
    folders = sorted((tmp_path / "t" / "engine" / "scores").iterdir())
    assert len(folders) == 1  # round 0 queried (round 1 stopped at max_rounds before querying)

    pool, sel = ctx.pool(0), build_strategy(strategy)
    method = Mahapatra(ctx, 0, sel)
    model = method.restore(RunState(tmp_path / "t", method.oracle()))  # the last round's model
    saved = RunState(tmp_path / "t", method.oracle()).load_model(0)
    model.classifier.load_state_dict(saved["classifier"])  # round 0's, which ranked the pool
    labeled = set(method.initial_ids())
    unlabeled = [i for i, s in enumerate(pool.sample_ids) if s not in labeled]
    cands = pool.subset(unlabeled)
    ref = score_pool(model.classifier, cands, n_mc_samples=4, seed=seed_for(0, "round", 0, "mc"), seeding="sample",
                     progress=False).columns
    table = pq.read_table(folders[0])
    row = {sid: i for i, sid in enumerate(table.column("sample_id").to_pylist())}
    assert sorted(row) == sorted(pool.sample_ids)  # the whole training pool: labeled images' embeddings too
    order = [row[s] for s in cands.sample_ids]
    for key, value in ref.items():
        np.testing.assert_allclose(table.column(key).to_numpy()[order], value, atol=1e-5, rtol=0, err_msg=key)
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)[order]
    np.testing.assert_allclose(emb, features(model.classifier, cands), rtol=2e-3, atol=2e-3)

    # the strategy's choice on the in-process scores is the loop's choice on Ray's
    ref_inputs = {**ref, "index": np.arange(len(cands))}
    if "embeddings" in sel.needs:
        head = model.classifier.head
        shift, scale = head.feat_shift.numpy(), head.feat_scale.numpy()
        lab = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)[[row[s] for s in method.initial_ids()]]
        ref_inputs.update(embeddings=(emb - shift) * scale, labeled_embeddings=(lab - shift) * scale,
                          labeled_labels=pool.labels[[pool.sample_ids.index(s) for s in method.initial_ids()]])
    size = method.query_size(RunState(tmp_path / "t", method.oracle()), 0)
    chosen, _ = sel.select(ref_inputs, 4, stream(0, "round", 0, "query"), size.per_class)
    assert [cands.sample_ids[int(j)] for j in chosen] == rounds[0]["queried"]

    # a rerun (a resumed run redoing the round) finds the round's folder and scores nothing again
    from medloop.engine.rounds import score_model

    again = score_model(model.classifier, "resnet18", {"in_channels": 1, "num_classes": 2, "width": 4, "dropout": 0.5},
                        pool.config, [pool.entry_of(i) for i in range(len(pool))], tmp_path / "t" / "engine",
                        "round_000", n_mc_samples=4, seed=seed_for(0, "round", 0, "mc"), progress=False)
    assert len(again["sample_id"]) == len(pool) and len(list((tmp_path / "t" / "engine" / "scores").iterdir())) == 1


@pytest.mark.integration
def test_the_generative_loop_on_ray_renders_and_scores_variants_on_the_workers(local_ray, tmp_path):
    """engine: ray with the paper's strategy: every variant is rendered and scored on a worker; the ones that join
    the training set are rendered again in the driver from the same stream, and score there as they scored on
    the worker; the strategy's picks are its picks on the workers' scores."""
    from medloop.loop.config import ExperimentConfig
    from medloop.loop.mahapatra import prepare, run_mahapatra_track, sampler_factory
    from medloop.loop.state import RunState
    from medloop.methods.mahapatra.method import Mahapatra
    from medloop.query import build_strategy
    from medloop.seeding import seed_for, stream

    strategy = {"name": "generative", "params": {"per_image": 3, "candidates": 4}}
    config = ExperimentConfig.from_dict({
        **LOOP, "engine": "ray", "strategies": [strategy],
        "segmenter": {"epochs": 1, "batch_size": 8, "model_params": {"channels": [4, 8, 8, 8]}},
        "generator": {"epochs": 1, "ae_epochs": 1, "vgg_weight": 0.0, "g_features": 8, "g_blocks": 1,
                      "d_features": 4, "d_dense": 8, "latent_dim": 8, "ae_channels": [8, 8]}})
    ctx = prepare(config, progress=False)
    rounds = run_mahapatra_track(ctx, 0, strategy, tmp_path / "t", sampler_factory(ctx, tmp_path))
    (folder,) = sorted((tmp_path / "t" / "engine" / "derived").iterdir())
    table = pq.read_table(folder)
    assert table.num_rows == 4 * 3 and len(set(table.column("source_sample").to_pylist())) == 4

    method = Mahapatra(ctx, 0, build_strategy("generative", strategy["params"]))
    state = RunState(tmp_path / "t", method.oracle()).restore(method.initial_ids())
    joined = [s for s in state.synthetic if "~r0v" in s.sample_id]
    assert joined and {s.meta["source_sample"] for s in joined} <= set(rounds[0]["queried"])
    model = method.restore(state)
    model.classifier.load_state_dict(state.load_model(0)["classifier"])  # round 0's, which scored the variants
    from medloop.data import MedDataset

    again = score_pool(model.classifier, MedDataset.from_samples(joined, ctx.dataset.info), n_mc_samples=4,
                       seed=seed_for(0, "round", 0, "mc"), seeding="sample", progress=False).columns
    row = {sid: i for i, sid in enumerate(table.column("sample_id").to_pylist())}
    on_worker = table.column("combined").to_numpy()[[row[s.sample_id] for s in joined]]
    np.testing.assert_allclose(again["combined"], on_worker, atol=1e-4)

    # the picks: the generative strategy on the workers' columns, in the candidates' order
    ids = sorted(row, key=lambda sid: (sid.split("~")[0], sid))
    order = [row[sid] for sid in ids]
    inputs = {k: table.column(k).to_numpy()[order] for k in table.column_names
              if k not in ("sample_id", "source_sample", "entry_id", "case_id", "embedding")}
    size = method.query_size(state, 0)
    chosen, _ = method.strategy.select({**inputs, "index": np.arange(len(ids))}, size.k,
                                       stream(0, "round", 0, "query"), size.per_class)
    assert sorted(s.sample_id for s in joined) == sorted(ids[int(j)] for j in chosen)


def test_ray_names_what_its_workers_skipped_and_leaves_out_removed_files(local_ray, checkpoint, tmp_path):
    """Under on_error: skip an entry a worker cannot read is named in _SUCCESS.json and the summary; rows of
    files removed from the pool since they were scored stay out of the top-k."""
    import json

    from medloop.config import DataConfig
    from medloop.engine.ray import score_ray
    from tests.conftest import gray, write_png

    root = tmp_path / "ds"
    for i in range(5):
        write_png(root / "images" / f"{i:03d}.png", gray(32, 32, i))
    damaged = root / "images" / "001.png"
    damaged.write_bytes(damaged.read_bytes()[:60])
    data = DataConfig.from_dict({"source": str(root), "on_error": "skip"})
    spec = ScoreSpec.for_checkpoint(checkpoint, data, n_mc_samples=2, batch_size=2)
    summary = score_ray(spec, tmp_path / "out", k=5, progress=False)
    done = json.loads((tmp_path / "out" / "scores" / spec.version() / "_SUCCESS.json").read_text())
    assert summary["rows"] == 4 and summary["skipped"] == 1 and "001" not in summary["top_k"]
    assert len(done["read_skipped"]) == 1 and "001.png" in done["read_skipped"][0]

    (root / "images" / "003.png").unlink()  # removed from the pool after it was scored
    again = score_ray(spec, tmp_path / "out", k=5, progress=False)
    assert again["stale_rows"] == 1 and again["rows"] == 3 and sorted(again["top_k"]) == ["000", "002", "004"]


COLLAB = {"name": "collab-ray", "data": {"source": "builtin:cardiac-mr", "size": 32,
                                        "options": {"n_volumes": 4, "min_slices": 4, "max_slices": 5}},
          "folds": 2, "max_folds": 1, "budgets": [0.5], "cycles": [1], "strategies": ["discriminator"], "fsl": False,
          "pix2pix": {"epochs": 2, "batch_size": 8, "g_channels": [4, 8, 8], "d_features": 4}, "engine": "ray"}


@pytest.mark.integration
def test_collaborative_judging_on_ray_is_the_in_process_judging(local_ray, tmp_path):
    """engine: ray in method 2: the pool's slices read and judged on the workers give the plausibility maps and
    label maps of the in-process judging; a second call maps only the slices not judged yet; a whole protocol runs."""
    import torch

    from medloop.data import kfold_by_case
    from medloop.loop.config import CollaborativeConfig
    from medloop.methods.ravanbakhsh.method import Ravanbakhsh, load_collab_data
    from medloop.methods.ravanbakhsh.protocol import run_collaborative
    from medloop.training.pix2pix import train_pix2pix

    config = CollaborativeConfig.from_dict(COLLAB)
    data = load_collab_data(config, progress=False)
    train_idx, test_idx = kfold_by_case(data.dataset, k=2, seed=0)[0]
    base_case = data.dataset.case_ids[int(train_idx[0])]
    on_ray = Ravanbakhsh(data, train_idx, test_idx, base_case, 0.5, 1, config, 0, progress=False)
    local = Ravanbakhsh(data, train_idx, test_idx, base_case, 0.5, 1, config.replace(engine="local"), 0, False)
    trainer = on_ray._trainer()
    train_pix2pix(trainer, data.images[on_ray.base], data.masks[on_ray.base], torch.ones(len(on_ray.base)), 0, False)
    on_ray._engine_dir = tmp_path / "engine"
    ids = [data.ids[i] for i in on_ray.pool]
    first = on_ray._plausibility(trainer, ids[::2])
    score, pred = on_ray._plausibility(trainer, ids)  # the rest of each volume's slices now
    ref_score, ref_pred = local._plausibility(trainer, ids)
    np.testing.assert_allclose(score, ref_score, atol=1e-5)
    assert torch.equal(pred, ref_pred) and pred.max() > 0  # a model that labels structures
    np.testing.assert_allclose(first[0], ref_score[::2], atol=1e-5)
    (folder,) = (tmp_path / "engine" / "mapped").iterdir()
    assert pq.read_table(folder).num_rows == len(ids)  # each slice judged once over the two calls

    results = run_collaborative(config, tmp_path / "run", progress=False)
    assert results["tracks"]["discriminator-n1"]["0.50"]["0"]
    assert list((tmp_path / "run").rglob("engine/mapped/*/*.parquet"))
