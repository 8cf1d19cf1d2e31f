"""generate_job: a generated folder is a dataset medloop reads, written without temporary leftovers."""

from __future__ import annotations

import json

from medloop.config import DataConfig
from medloop.data import load_dataset
from medloop.generate import generate_job
from medloop.training.cgan import CGANConfig

TINY = CGANConfig(latent_dim=8, ae_channels=(8, 16), ae_epochs=1, g_features=8, g_blocks=1, d_features=4, d_dense=8,
                  epochs=1, batch_size=2, vgg_weight=0.0, device="cpu",
                  perturb={"p_flip": 0.0, "p_rotate": 0.0, "p_translate": 0.0})


def test_generated_folder_is_a_dataset_and_a_saved_generator_is_reused(tmp_path):
    data = DataConfig(source="builtin:chest-xray", size=32, options={"n_normal": 2, "n_nodule": 2})
    summary = generate_job(data, tmp_path / "gen", per_image=2, cgan=TINY, limit=2, progress=False)
    out = tmp_path / "gen"
    assert summary["variants"] == 4 and summary["generator"].startswith("trained on 4 images")
    assert json.loads((out / "summary.json").read_text())["variants"] == 4
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4
    assert {p.name for p in out.iterdir()} >= {"images", "masks", "labels.csv", "manifest.jsonl", "gallery.png",
                                               "generator.pt", "summary.json", "run.json"}
    assert not list(out.rglob("*.tmp"))  # every file through the atomic write
    ds = load_dataset(str(out), progress=False)
    assert len(ds) == 4 and ds.has_mask.all()
    again = generate_job(data, tmp_path / "again", per_image=1, checkpoint=out / "generator.pt", limit=1,
                         progress=False)
    assert again["generator"] == f"loaded from {out / 'generator.pt'}" and again["variants"] == 1
