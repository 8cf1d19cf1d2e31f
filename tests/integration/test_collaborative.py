"""Algorithm 1 (Ravanbakhsh et al.) on a tiny cardiac phantom: bookkeeping, no leaks, resume, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from medloop.cli import app
from medloop.data import kfold_by_case
from medloop.errors import ConfigError
from medloop.loop import CollaborativeConfig, GroundTruthOracle, Interrupt, algorithm1, run_collaborative
from medloop.loop.ravanbakhsh import load_collab_data, query_counts

pytestmark = pytest.mark.integration

TINY = {"name": "collab-tiny", "data": {"source": "builtin:cardiac-mr", "size": 32,
                                          "options": {"n_volumes": 4, "min_slices": 4, "max_slices": 5}},
        "folds": 2, "budgets": [0.5], "cycles": [2], "strategies": ["discriminator"],
        "pix2pix": {"epochs": 1, "batch_size": 8, "g_channels": [4, 8, 8], "d_features": 4}, "n_mc_samples": 2}


def test_query_counts_spread_exactly_k():
    assert query_counts(7, 3) == [3, 2, 2] and sum(query_counts(10, 4)) == 10 and query_counts(2, 1) == [2]


@pytest.mark.parametrize("strategy", ["discriminator", "random", "foreground_random", "entropy", "bald"])
def test_algorithm1_bookkeeping(tmp_path, strategy):
    cfg = CollaborativeConfig.from_dict(TINY)
    data = load_collab_data(cfg, progress=False)
    train_idx, test_idx = kfold_by_case(data.dataset, k=2, seed=0)[0]
    cases = np.array(data.dataset.case_ids)
    base_case = sorted(set(cases[train_idx]))[0]
    asked: list[str] = []

    def oracle(ds):
        o = GroundTruthOracle.from_dataset(ds)
        o.asked = asked
        return o

    folder = tmp_path / strategy
    recs = algorithm1(data, train_idx, test_idx, base_case, strategy, 0.5, 2, cfg, folder, False, None, oracle)
    ids = data.dataset.sample_ids
    base = [ids[i] for i in train_idx if cases[i] == base_case]
    pool = [ids[i] for i in train_idx if cases[i] != base_case]
    k = int(round(0.5 * len(pool)))
    assert [len(r["queried"]) for r in recs[:-1]] == query_counts(k, 2)  # exactly k/n per cycle
    queried = [s for r in recs for s in r["queried"]]
    assert set(queried) <= set(pool) and len(set(queried)) == k
    assert sorted(asked) == sorted(base + queried)  # the oracle saw nothing else: no label leaks, no test slice
    assert not set(asked) & {ids[i] for i in test_idx}
    # pseudo-labels cover the rest of the pool and never an expert-labeled slice
    last = recs[-2]["cycle"]
    pseudo = np.load(folder / "pseudo" / f"round_{last:03d}.npz")
    assert set(pseudo["ids"].tolist()) == set(pool) - set(queried)
    assert recs[-1]["final"] and recs[-1]["n_true"] == len(base) + k and recs[-1]["n_pseudo"] == len(pool) - k
    assert set(recs[-1]["test"]["dice"]) == {"myocardium", "blood pool"}
    test_cases = {str(cases[i]) for i in test_idx}
    assert set(recs[-1]["test"]["by_case"]) == test_cases  # per patient, for paired comparisons
    # quality control: each cycle calibrates on exactly the slices the expert just labeled, and grades every
    # pseudo-label it made; flagged = predicted Dice below the threshold
    for r in recs[:-1]:
        qc = json.loads((folder / "qc" / f"round_{r['cycle']:03d}.json").read_text())
        assert set(qc["calibration_slices"]) == set(r["queried"]) and qc["calibration"]["n"] == len(r["queried"])
        pseudo = np.load(folder / "pseudo" / f"round_{r['cycle']:03d}.npz")
        assert set(qc["predicted_dice"]) == set(pseudo["ids"].tolist())
        assert qc["flagged"] == [s for s, v in qc["predicted_dice"].items() if v < cfg.qc_threshold]
        assert all(0 <= v <= 1 for v in qc["predicted_dice"].values())


def test_collaborative_resume_after_a_kill_matches(tmp_path):
    cfg = CollaborativeConfig.from_dict({**TINY, "fsl": False})
    ref = run_collaborative(cfg, tmp_path / "ref", progress=False)

    def kill(point, cycle):
        if point == "answered" and cycle == 1:
            raise Interrupt("killed in cycle 1")

    with pytest.raises(Interrupt):
        run_collaborative(cfg, tmp_path / "run", progress=False, interrupt=kill)
    with pytest.raises(ConfigError, match="--resume"):
        run_collaborative(cfg, tmp_path / "run", progress=False)
    resumed = run_collaborative(cfg, tmp_path / "run", resume=True, progress=False)

    def strip(tracks):
        return {k: {b: {f: [{x: y for x, y in r.items() if not x.endswith("seconds")} for r in recs] for f, recs in folds.items()}
                    for b, folds in v.items()} for k, v in tracks.items()}

    assert strip(ref["tracks"]) == strip(resumed["tracks"])
    assert ref["correlation"]["pearson_r"] == resumed["correlation"]["pearson_r"]


def test_protocol_in_two_processes_matches_one(tmp_path):
    """The units of work run in two spawned processes write what one process computes (one thread each)."""
    import torch

    cfg = CollaborativeConfig.from_dict({**TINY, "cycles": [1], "strategies": ["discriminator", "foreground_random"]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = run_collaborative(cfg, tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)
    par = run_collaborative(cfg.replace(processes=2), tmp_path / "two", progress=False)

    def strip(tracks):
        return {k: {b: {f: [{x: y for x, y in r.items() if not x.endswith("seconds")} for r in recs]
                        for f, recs in folds.items()} for b, folds in v.items()} for k, v in tracks.items()}

    assert strip(par["tracks"]) == strip(ref["tracks"]) and par["fsl"] == ref["fsl"]
    assert par["quality_control"] == ref["quality_control"] and par["comparisons"] == ref["comparisons"]
    with pytest.raises(ConfigError, match="processes"):
        run_collaborative(cfg.replace(processes=2), tmp_path / "hooked", progress=False, interrupt=lambda p, r: None)


def test_cli_end_to_end_with_report(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": "ravanbakhsh2018", **TINY, "strategies": ["discriminator", "random"],
                                    "cycles": [1]}))
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(path), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Pearson r" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "ravanbakhsh2018" and set(results["tracks"]) == {"discriminator-n1", "random-n1"}
    assert results["correlation"]["n_slices"] > 0 and len(results["fsl"]) == 2
    comp = results["comparisons"]["discriminator-n1 - random-n1"]["0.50"]
    n_cases = len({c for f in results["tracks"]["random-n1"]["0.50"].values() for c in f[-1]["test"]["by_case"]})
    assert comp["n"] == n_cases == 4 and comp["ci"] is None  # four patients: no interval worth the name
    assert comp["verdict"] == "too few test patients (4) for an interval"
    qc = results["quality_control"]["discriminator-n1"]["all"]
    assert qc["n"] == results["correlation"]["n_slices"] and 0 <= qc["mae"] <= 1
    md = (out / "report.md").read_text()
    assert "myocardium" in md and "blood pool" in md and "FSL" in md and "Pearson" in md
    assert "quality control" in md and "| discriminator-n1 - random-n1 | 50% |" in md
    for name in ("dice_by_budget.png", "correlation.png", "discriminator.png", "report.html"):
        assert (out / name).exists(), name
    (out / "report.md").unlink()
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0 and (out / "report.md").exists()


def test_bad_collaborative_configs():
    with pytest.raises(ConfigError, match="did you mean 'random'"):
        CollaborativeConfig.from_dict({**TINY, "strategies": ["randon"]})
    with pytest.raises(ConfigError, match="synthetic input"):
        CollaborativeConfig.from_dict({**TINY, "strategies": ["generative"]})
    with pytest.raises(ConfigError, match="balances predicted image classes"):
        CollaborativeConfig.from_dict({**TINY, "strategies": ["class_balanced"]})
    with pytest.raises(ConfigError, match="budgets"):
        CollaborativeConfig.from_dict({**TINY, "budgets": [1.5]})
    with pytest.raises(ConfigError, match="unknown key 'budget'"):
        CollaborativeConfig.from_dict({**TINY, "budget": 0.5})


def test_experiment_files_pick_their_config_class(tmp_path):
    from medloop.loop import ExperimentConfig, load_experiment_config

    path = tmp_path / "e.yaml"
    path.write_text("method: ravanbakhsh2018\nbudgets: [0.3]\n")
    cfg = load_experiment_config(path, {"pix2pix.epochs": 2})
    assert isinstance(cfg, CollaborativeConfig) and cfg.budgets == (0.3,) and cfg.pix2pix["epochs"] == 2
    path.write_text("name: plain\n")
    assert isinstance(load_experiment_config(path), ExperimentConfig)
    path.write_text("method: foo\n")
    with pytest.raises(ConfigError, match="unknown method 'foo'"):
        load_experiment_config(path)


def test_reads_per_image_is_refused_by_the_simulated_protocol(tmp_path):
    cfg = CollaborativeConfig.from_dict({**TINY, "reads_per_image": 2})
    with pytest.raises(ConfigError, match="reads_per_image: 1"):
        run_collaborative(cfg, tmp_path / "run", progress=False)
