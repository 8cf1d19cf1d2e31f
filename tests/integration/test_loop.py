"""The active-learning engine end to end on a tiny phantom: rounds, the generative strategy, resume, CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medloop.cli import app
from medloop.errors import ConfigError, DataError
from medloop.loop import ExperimentConfig, GroundTruthOracle, Interrupt, prepare, run_experiment
from medloop.loop.mahapatra import initial_set, run_mahapatra_track, sampler_factory

pytestmark = pytest.mark.integration

TINY = {
    "name": "tiny",
    "data": {"source": "builtin:chest-xray", "size": 32, "options": {"n_normal": 12, "n_nodule": 12}},
    "seeds": [0],
    "classifier": {"model": "resnet18", "model_params": {"width": 4}, "epochs": 1, "batch_size": 8, "patience": 0},
    "segmenter": {"epochs": 1, "batch_size": 8, "model_params": {"channels": [4, 8, 8, 8]}},
    "strategies": [{"name": "class_balanced", "label": "uncertainty"}, {"name": "random"}],
    "generator": {"epochs": 1, "ae_epochs": 1, "vgg_weight": 0.0, "g_features": 8, "g_blocks": 1, "d_features": 4,
                  "d_dense": 8, "latent_dim": 8, "ae_channels": [8, 8]},
    "initial_per_class": 2,
    "query_per_class": 2,
    "augment_copies": 1,
    "n_mc_samples": 3,
    "record_at": [0.1, 0.4],
    "budget": 0.9,
    "max_rounds": 2,
    "round_patience": 0,
    "fsl_folds": 0,
    "random_subset_draws": 1,
}


def tiny(**changes) -> ExperimentConfig:
    return ExperimentConfig.from_dict({**TINY, **changes})


def strip(rounds: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]


def test_two_rounds_with_the_ground_truth_oracle(tmp_path):
    ctx = prepare(tiny(), progress=False)
    rounds = run_mahapatra_track(ctx, 0, {"name": "class_balanced"}, tmp_path / "t")
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[-1]["stop"] == "max_rounds"
    assert [r["n_labeled"] for r in rounds] == [4, 8, 12]
    queried = [s for r in rounds for s in r["queried"]]
    assert len(queried) == len(set(queried)) == 8  # 2 per class per round, never twice
    pool = ctx.pool(0)
    initial = [pool.sample_ids[i] for i in initial_set(ctx, 0)]
    assert sorted(pool.labels[initial_set(ctx, 0)].tolist()) == [0, 0, 1, 1]  # 2 per class, as configured
    assert not set(initial) & set(queried)  # an initial image is never queried again
    assert rounds[1]["cost"]["pixels"] > rounds[0]["cost"]["pixels"] > 0
    assert 0 < rounds[0]["cost"]["pixel_fraction"] < rounds[2]["cost"]["pixel_fraction"] <= 1
    assert rounds[0]["seg"] is not None and rounds[0]["stages"] == [0.1]  # 4 of 15 labeled: the 10% stage
    assert all(r["test"]["auc"] is None or 0 <= r["test"]["auc"] <= 1 for r in rounds)
    n_test = int((ctx.test(0).labels >= 0).sum())
    assert all(len(r["test_probs"]) == n_test for r in rounds)  # one per test image, for bootstrap intervals
    # the test split is never queried (class balance of selections is tested in tests/unit/query)
    test_ids = set(ctx.test(0).sample_ids)
    assert not test_ids & set(queried)


def test_resume_after_a_kill_reaches_the_same_results_and_never_asks_twice(tmp_path):
    asked: list[str] = []

    def counting_oracle(pool):
        oracle = GroundTruthOracle.from_dataset(pool)
        oracle.asked = asked  # shared across the killed and the resumed run
        return oracle

    cfg = tiny(strategies=[{"name": "class_balanced"}])
    ref = run_experiment(cfg, tmp_path / "ref", progress=False)

    def kill(point, round_idx):
        if point == "answered" and round_idx == 1:
            raise Interrupt("killed after the oracle answered in round 1")

    with pytest.raises(Interrupt):
        run_experiment(cfg, tmp_path / "run", progress=False, interrupt=kill, oracle_factory=counting_oracle)
    partial = (tmp_path / "run" / "tracks" / "class_balanced-seed0" / "rounds.jsonl").read_text().splitlines()
    assert len(partial) == 1  # round 0 complete, round 1 lost (its answers are on disk)
    with pytest.raises(ConfigError, match="--resume"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    resumed = run_experiment(cfg, tmp_path / "run", resume=True, progress=False, oracle_factory=counting_oracle)
    assert len(asked) == len(set(asked)) == 4 + 4 + 4  # initial set + two rounds, each id asked once
    a, b = ref["tracks"]["class_balanced"]["0"], resumed["tracks"]["class_balanced"]["0"]
    assert strip(a) == strip(b)
    assert ref["baselines"] == resumed["baselines"]
    assert len(ref["data"]["test_labels"]["0"]) == len(ref["baselines"]["fsl"]["0"]["test_probs"]) == len(a[0]["test_probs"])


def test_a_different_config_in_the_same_folder_is_refused(tmp_path):
    run_experiment(tiny(strategies=[{"name": "random"}], max_rounds=1, segmenter=None), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="changed: max_rounds"):
        run_experiment(tiny(strategies=[{"name": "random"}], max_rounds=2, segmenter=None), tmp_path, resume=True,
                       progress=False)


def test_generative_strategy_adds_synthetic_samples_with_their_sources_labels(tmp_path):
    cfg = tiny(strategies=[{"name": "generative", "params": {"per_image": 2, "candidates": 3}}], max_rounds=1)
    ctx = prepare(cfg, progress=False)
    rounds = run_mahapatra_track(ctx, 0, cfg.strategies[0], tmp_path / "g", sampler_factory(ctx, tmp_path))
    r0 = rounds[0]
    assert r0["n_candidates"] == 6 and 1 <= len(r0["queried"]) <= 3  # one query per distinct source
    assert rounds[1]["n_synthetic"] >= len(r0["queried"])
    import torch

    syn = torch.load(tmp_path / "g" / "synthetic" / "round_000.pt", weights_only=True)
    assert rounds[0]["seg"] is not None  # the segmenter trained at round 0 gives the candidates' masks
    assert set(syn["sources"]) == set(r0["queried"])
    pool = ctx.pool(0)
    label_of = dict(zip(pool.sample_ids, pool.labels.tolist()))
    from medloop.loop.oracle import AnswerLog
    from medloop.loop.state import _load_synthetic

    log = AnswerLog(tmp_path / "g" / "answers")
    answers = {s: log.get(s) for s in r0["queried"]}
    for s in _load_synthetic(tmp_path / "g" / "synthetic" / "round_000.pt", answers):
        assert s.label == label_of[s.meta["source_sample"]] and s.mask is not None
    assert (tmp_path / "generators" / "seed0.pt").exists()
    assert (tmp_path / "g" / "gallery_round_000.npz").exists()


def test_protocol_errors_before_any_training():
    with pytest.raises(ConfigError, match="budget"):
        prepare(tiny(budget=0.1), progress=False)  # fewer than the initial set
    with pytest.raises(DataError, match="initial_per_class = 30"):
        prepare(tiny(initial_per_class=30), progress=False)
    with pytest.raises(ConfigError, match="unknown key 'strategy'"):
        ExperimentConfig.from_dict({**TINY, "strategy": "bald"})
    with pytest.raises(ConfigError, match="did you mean 'bald'"):
        tiny(strategies=[{"name": "bold"}])
    with pytest.raises(ConfigError, match="needs a segmenter"):
        tiny(strategies=[{"name": "generative"}], segmenter=None)
    with pytest.raises(ConfigError, match="data.size"):
        prepare(tiny(data={**TINY["data"], "size": 36}), progress=False)


def test_cli_run_and_report(tmp_path):
    import yaml

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({**TINY, "strategies": [{"name": "random"}]}))
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(cfg_path), "--out", str(out), "--set", "max_rounds=1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "test AUC" in result.output and "report.md" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["max_rounds"] == 1 and len(results["tracks"]["random"]["0"]) == 2
    for name in ("report.md", "report.html", "curves.png", "config.yaml", "run.json"):
        assert (out / name).exists(), name
    (out / "report.md").unlink()
    again = runner.invoke(app, ["report", str(out)], terminal_width=200)
    assert again.exit_code == 0 and (out / "report.md").exists()
    md = (out / "report.md").read_text()
    assert "| AUC |" in md and "| Dice |" in md and "FSL" in md
    bad = runner.invoke(app, ["run", str(cfg_path), "--out", str(tmp_path / "x"), "--set", "strategies=[{name: bold}]"])
    assert bad.exit_code != 0


def test_sigkill_mid_round_then_resume_matches_an_uninterrupted_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({**TINY, "strategies": [{"name": "class_balanced"}], "segmenter": None,
                                        "random_subset_draws": 0}))
    cmd = [sys.executable, "-m", "medloop", "run", str(cfg_path)]
    env = {**os.environ, "COLUMNS": "200"}
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    track = out / "tracks" / "class_balanced-seed0"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (track / "rounds.jsonl").exists() and (track / "rounds.jsonl").read_text().count("\n") >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # round 0 is recorded: the kill lands in round 1
    proc.wait()
    # the kill interrupted the run: it did not exit by itself, and neither the track nor the run finished
    assert proc.returncode == -signal.SIGKILL
    assert not (track / "done.json").exists() and not (out / "results.json").exists()
    n_ref = len(json.loads((tmp_path / "ref" / "results.json").read_text())["tracks"]["class_balanced"]["0"])
    assert 1 <= (track / "rounds.jsonl").read_text().count("\n") < n_ref
    resumed = subprocess.run(cmd + ["--out", str(out), "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "ref" / "results.json").read_text())["tracks"]
    b = json.loads((out / "results.json").read_text())["tracks"]
    assert strip(a["class_balanced"]["0"]) == strip(b["class_balanced"]["0"])


def test_vgg16_classifier_runs_in_the_loop(tmp_path):
    cfg = tiny(classifier={**TINY["classifier"], "model": "vgg16"}, segmenter=None, max_rounds=1,
               strategies=[{"name": "bald"}])
    ctx = prepare(cfg, progress=False)
    rounds = run_mahapatra_track(ctx, 0, cfg.strategies[0], tmp_path / "v")
    assert len(rounds) == 2 and len(rounds[0]["queried"]) == 4 and rounds[0]["seg"] is None
    import torch

    state = torch.load(tmp_path / "v" / "models" / "round_001.pt", weights_only=True)
    assert any(k.startswith("features.") for k in state["classifier"])  # the VGG-16 trunk was trained and saved


def test_renamed_and_unsupported_settings_are_refused_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match="'fine_tune' is now 'retrain'"):
        ExperimentConfig.from_dict({**TINY, "fine_tune": "restart"})
    with pytest.raises(ConfigError, match="'patience' is now 'round_patience'"):
        ExperimentConfig.from_dict({**{k: v for k, v in TINY.items() if k != "round_patience"}, "patience": 2})
    with pytest.raises(ConfigError, match="'savings_tolerance' was removed: a saving is now judged by bootstrap"):
        ExperimentConfig.from_dict({**TINY, "savings_tolerance": 0.02})
    with pytest.raises(ConfigError, match="segmentation network"):
        tiny(segmenter={**TINY["segmenter"], "model": "resnet18"})
    with pytest.raises(ConfigError, match="did you mean 'unet'"):
        tiny(segmenter={**TINY["segmenter"], "model": "unte"})
    with pytest.raises(ConfigError, match="discriminator input"):
        tiny(strategies=[{"name": "discriminator"}])  # method 1 trains no pix2pix discriminator
    missing = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(DataError, match="nowhere"):
        prepare(tiny(classifier={**TINY["classifier"], "pretrained": str(missing)}), progress=False)


def test_pretrained_classifier_is_loaded_in_the_loop_and_the_baselines(tmp_path):
    import torch

    from tests.unit.models.test_pretrained import torchvision_resnet18_state

    ckpt = tmp_path / "resnet18.pth"
    state = torchvision_resnet18_state()
    torch.save(state, ckpt)
    cfg = tiny(classifier={**TINY["classifier"], "model_params": {"width": 64}, "pretrained": str(ckpt), "fine_tune": "head"},
               segmenter=None, strategies=[{"name": "random"}], max_rounds=1, retrain="restart")
    ctx = prepare(cfg, progress=False)
    model = ctx.new_classifier(0, "any")
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    rounds = run_mahapatra_track(ctx, 0, cfg.strategies[0], tmp_path / "t")
    saved = torch.load(tmp_path / "t" / "models" / f"round_{rounds[-1]['round']:03d}.pt", weights_only=True)
    # only the head was fine-tuned: the round's trunk is the pretrained one, not a random initialisation
    assert torch.equal(saved["classifier"]["backbone.layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_selfsup_pretraining_runs_once_per_seed_and_initialises_every_classifier(tmp_path, monkeypatch):
    """classifier.pretrained: selfsup pretrains on the seed's pool (cached), and diversity strategies run on the
    embeddings input."""
    import torch

    monkeypatch.setenv("MEDLOOP_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny(classifier={**TINY["classifier"], "pretrained": "selfsup", "fine_tune": "head"},
               selfsup={"epochs": 1, "batch_size": 8}, segmenter=None, max_rounds=1, retrain="restart",
               strategies=[{"name": "typiclust"}, {"name": "badge"}])
    ctx = prepare(cfg, progress=False)
    ctx.workdir = tmp_path / "run"
    path = ctx.pretrained_path(0)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["meta"]["pool_ids"] == list(ctx.pool(0).sample_ids)  # the seed's pool, nothing else
    mtime = (tmp_path / "cache").rglob("*.pt").__next__().stat().st_mtime
    rounds = run_mahapatra_track(ctx, 0, cfg.strategy_specs[0], tmp_path / "t")
    assert len(rounds[0]["queried"]) == 4 and rounds[-1]["stop"] == "max_rounds"
    saved = torch.load(tmp_path / "t" / "models" / f"round_{rounds[-1]['round']:03d}.pt", weights_only=True)
    key = "backbone.layer4.1.conv2.weight"
    assert torch.equal(saved["classifier"][key], ckpt["trunk"][key])  # head-only fine-tuning kept the trunk
    ctx2 = prepare(cfg, progress=False)
    assert ctx2.pretrained_path(0) == path and next((tmp_path / "cache").rglob("*.pt")).stat().st_mtime == mtime
    assert run_mahapatra_track(ctx2, 0, cfg.strategy_specs[1], tmp_path / "b")[0]["queried"]
    with pytest.raises(ConfigError, match="classifier.pretrained: selfsup"):
        tiny(selfsup={"epochs": 1})
    with pytest.raises(ConfigError, match="selfsup.seed"):
        tiny(classifier={**TINY["classifier"], "pretrained": "selfsup"}, selfsup={"seed": 3})


def test_rounds_trained_by_two_ddp_workers_repeat_exactly(tmp_path):
    """``classifier.workers: 2``: every round's classifier is trained by two DDP processes, and a rerun of the track
    gives the same picks and test probabilities (each rank steps weights of its own; two-rank sums do not depend on
    timing)."""
    config = tiny(max_rounds=1, segmenter=None, record_at=[],
                  classifier={**TINY["classifier"], "epochs": 2, "workers": 2})
    runs = []
    for name in ("a", "b"):
        ctx = prepare(config, progress=False)
        runs.append(run_mahapatra_track(ctx, 0, {"name": "class_balanced"}, tmp_path / name))
    assert [r["round"] for r in runs[0]] == [0, 1]
    assert [r["queried"] for r in runs[0]] == [r["queried"] for r in runs[1]]
    assert [r["test_probs"] for r in runs[0]] == [r["test_probs"] for r in runs[1]]
