"""Starting a served run: what it refuses (with the fix named), what it writes, the track it serves."""

from __future__ import annotations

import json
import socket

import pytest

from medloop.errors import ConfigError
from medloop.loop import CollaborativeConfig, ExperimentConfig
from medloop.serve import Runner, serve
from medloop.serve.app import _bind
from tests.serve_support import CARDIAC, CHEST


def test_a_served_run_folder(tmp_path):
    runner = Runner(ExperimentConfig.from_dict({**CHEST, "seeds": [3, 4], "strategies": ["random", "entropy"]}),
                    tmp_path / "run")
    marker = json.loads((tmp_path / "run" / "serve.json").read_text())
    assert marker["strategy"] == "random" and marker["seed"] == 3 and marker["track_folder"] == "tracks/random-seed3"
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "run.json").exists()
    assert len(runner.datastore) == len(runner.plan.images) and runner.plan.budget == 14
    assert runner.plan.class_names == ["normal", "nodule"] and runner.plan.mask_labels == {0: "background", 1: "lung"}
    with pytest.raises(ConfigError, match="--resume"):
        Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run")
    with pytest.raises(ConfigError, match="different config"):
        Runner(ExperimentConfig.from_dict({**CHEST, "budget": 0.5}), tmp_path / "run", resume=True)
    again = Runner(ExperimentConfig.from_dict({**CHEST, "seeds": [3, 4], "strategies": ["random", "entropy"]}),
                   tmp_path / "run", resume=True)
    assert again.run_id == runner.run_id  # the run keeps its id: labels made for it stay valid


def test_method2_serves_the_first_fold_budget_and_cycles(tmp_path):
    runner = Runner(CollaborativeConfig.from_dict({**CARDIAC, "budgets": [0.5, 0.9], "cycles": [2, 3]}), tmp_path / "r")
    assert runner.plan.track["fold"] == 0 and runner.plan.track["budget"] == 0.5 and runner.plan.track["cycles"] == 2
    assert str(runner.plan.folder).endswith("tracks/fold0/discriminator-n2-b050")
    assert runner.plan.class_names == [] and set(runner.plan.mask_labels) == {0, 1, 2}
    method = runner.plan.method
    assert runner.plan.budget == len(method.base) + sum(method.per_cycle)
    assert set(runner.datastore.ids) == {runner.plan.images.sample_ids[i] for i in range(len(runner.plan.images))}


def test_refusals_name_the_fix(tmp_path):
    (tmp_path / "ran").mkdir()  # a `medloop run` folder: config.yaml, no serve.json
    ExperimentConfig.from_dict(CHEST).to_yaml(tmp_path / "ran" / "config.yaml")
    with pytest.raises(ConfigError, match="`medloop run` experiment"):
        Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "ran", resume=True)
    with pytest.raises(ConfigError, match="data.cache"):
        Runner(ExperimentConfig.from_dict({**CHEST, "data": {**CHEST["data"], "cache": False}}), tmp_path / "x")
    for token in ("short", "has space in it", "x" * 200):
        with pytest.raises(ConfigError, match="--token"):
            serve(ExperimentConfig.from_dict(CHEST), tmp_path / "y", token=token)
    with pytest.raises(ConfigError, match="--lease"):
        serve(ExperimentConfig.from_dict(CHEST), tmp_path / "y", lease_seconds=0)


def test_a_busy_port_is_a_clear_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(ConfigError, match="choose another --port"):
            _bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
    sock = _bind("127.0.0.1", 0)
    assert sock.getsockname()[1] > 0
    sock.close()


def test_reads_per_image_is_kept_with_the_run_and_checked(tmp_path):
    runner = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run", reads_per_image=2)
    assert json.loads((tmp_path / "run" / "serve.json").read_text())["reads_per_image"] == 2
    assert runner.oracle.reads_per_image == 2 and runner.oracle.labels == {"lung": 1}
    again = Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run", resume=True)  # the option left out
    assert again.reads_per_image == again.oracle.reads_per_image == 2
    with pytest.raises(ConfigError, match="2 read\\(s\\) per image; it cannot resume with --reads-per-image 3"):
        Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "run", resume=True, reads_per_image=3)
    assert Runner(ExperimentConfig.from_dict(CHEST), tmp_path / "one").reads_per_image == 1
    for bad in (0, -2, 2.5, "2"):
        with pytest.raises(ConfigError, match="'reads_per_image' setting .* must be an integer >= 1"):
            serve(ExperimentConfig.from_dict(CHEST), tmp_path / "y", reads_per_image=bad)
    assert not (tmp_path / "y").exists()  # refused before anything is written
