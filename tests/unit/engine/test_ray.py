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


@pytest.fixture(scope="module")
def local_ray():
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    yield ray
    ray.shutdown()


def test_ray_scores_match_in_process_and_rerun_reuses_them(local_ray, checkpoint, pool, tmp_path):
    import pyarrow.parquet as pq

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
