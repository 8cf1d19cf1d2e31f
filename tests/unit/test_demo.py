"""The full demo's configs (only `make demo` runs them): valid, two seeds, the conspicuous-nodule phantom in both
the preview and the experiment."""

from __future__ import annotations

from medloop.data import load_dataset
from medloop.demo import DEMO_CHEST_OPTIONS, demo_collaborative, demo_experiment, demo_phantoms
from medloop.loop import CollaborativeConfig, ExperimentConfig


def test_full_demo_configs_are_valid_and_compare_two_seeds():
    experiment = ExperimentConfig.from_dict(demo_experiment(64, seed=5))
    assert experiment.seeds == (5, 6) and experiment.data["options"] == DEMO_CHEST_OPTIONS
    assert experiment.classifier_config.schedule == "cosine"
    assert experiment.strategy_specs[-1]["name"] == "random"
    CollaborativeConfig.from_dict(demo_collaborative(5))
    preview = demo_phantoms(64, seed=5)["chest-xray"]  # what the demo inspects is what it learns
    assert preview.options == experiment.data["options"] and preview.size == experiment.data["size"]


def test_demo_phantom_draws_the_same_cases_with_brighter_nodules():
    options = {"n_normal": 0, "n_nodule": 2}
    default = load_dataset("builtin:chest-xray", size=48, options=options, progress=False)
    demo = load_dataset("builtin:chest-xray", size=48, options={**options, **DEMO_CHEST_OPTIONS}, progress=False)
    for a, b in zip(default, demo):
        diff = (b.image - a.image)[0].numpy()
        assert diff.max() > 0.05  # brighter where the nodules are...
        for cx, cy in b.meta["nodule_centres"]:
            assert diff[cy, cx] > 0.05
        assert (abs(diff) > 0.02).mean() < 0.1  # ...and the same anatomy, pose and noise elsewhere (up to scaling)
