"""The frozen-trunk recipe and the data regimes (screening pool, random and label-free starts) in the loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medloop.errors import ConfigError, DataError
from medloop.loop import ExperimentConfig, GroundTruthOracle, Interrupt, prepare, run_experiment
from medloop.loop.mahapatra import initial_set, screening_pool
from medloop.query import build_strategy

from tests.integration.test_loop import TINY, strip

pytestmark = pytest.mark.integration

FROZEN = {**TINY, "recipe": "frozen", "segmenter": None, "classifier": {**TINY["classifier"], "epochs": 5},
          "data": {**TINY["data"], "options": {"n_normal": 20, "n_nodule": 20}}, "budget": 0.8}


def frozen(**changes) -> ExperimentConfig:
    base = dict(FROZEN)
    if changes.get("initial", "per_class") != "per_class":
        base.pop("initial_per_class")  # applies only to a per-class start
    return ExperimentConfig.from_dict({**base, **changes})


def test_frozen_recipe_settings_that_cannot_apply_are_refused():
    with pytest.raises(ConfigError, match="'augment_copies' parameter must be 1 with recipe: frozen"):
        frozen(augment_copies=2)
    with pytest.raises(ConfigError, match="classifier.augment"):
        frozen(classifier={**FROZEN["classifier"], "augment": {"prob": 0.5}})
    with pytest.raises(ConfigError, match="'classifier.fine_tune' parameter must be 'head'"):
        frozen(classifier={**FROZEN["classifier"], "fine_tune": "all"})
    with pytest.raises(ConfigError, match="'classifier.workers' parameter must be 1 with recipe: frozen"):
        frozen(classifier={**FROZEN["classifier"], "workers": 2})
    with pytest.raises(ConfigError, match="needs only embeddings"):
        frozen(initial="label_free", initial_strategy="badge")
    with pytest.raises(ConfigError, match="pool_positive_share"):
        frozen(pool_positive_share=1.0)
    with pytest.raises(ConfigError, match="'initial_size' parameter \\(5\\) applies only with initial: random or "
                                          "label_free, and this experiment has initial: per_class"):
        frozen(initial_size=5)
    with pytest.raises(ConfigError, match="'positive_class' parameter \\(0\\) applies only with a pool_positive_share"):
        frozen(positive_class=0)
    with pytest.raises(ConfigError, match="'initial_per_class' parameter \\(3\\) applies only with initial: per_class"):
        ExperimentConfig.from_dict({**FROZEN, "initial": "random", "initial_per_class": 3})
    with pytest.raises(ConfigError, match="'positive_class' parameter \\(5\\) is not a class"):
        prepare(frozen(pool_positive_share=0.2, positive_class=5), progress=False)


def test_frozen_rounds_train_the_head_on_one_trunk_and_resume_exactly(tmp_path):
    cfg = frozen(strategies=["badge", "random"])
    ref = run_experiment(cfg, tmp_path / "ref", progress=False)
    ctx = prepare(cfg, progress=False)
    trunk = {k: v for k, v in ctx.new_classifier(0).state_dict().items() if not k.startswith("head.")}
    for r in (1, 2):  # the last two rounds' models are kept
        saved = torch.load(tmp_path / "ref" / "tracks" / "badge-seed0" / "models" / f"round_{r:03d}.pt",
                           weights_only=False)["classifier"]
        assert all(torch.equal(v, saved[k]) for k, v in trunk.items())  # the trunk never trains
        assert not torch.equal(saved["head.fc.weight"], ctx.new_classifier(0, "round", r, "classifier").head.fc.weight)
    rounds = ref["tracks"]["badge"]["0"]
    assert [r["n_labeled"] for r in rounds] == [4, 8, 12] and all(r["test_probs"] for r in rounds)
    assert ref["baselines"]["fsl"]["0"]["n_train"] == len(ctx.pool(0))

    def kill(point, round_idx):
        if point == "answered" and round_idx == 1:
            raise Interrupt("killed")

    with pytest.raises(Interrupt):
        run_experiment(cfg, tmp_path / "run", progress=False, interrupt=kill)
    resumed = run_experiment(cfg, tmp_path / "run", resume=True, progress=False)
    assert strip(resumed["tracks"]["badge"]["0"]) == strip(rounds)


def test_the_frozen_recipe_scores_what_the_finetune_code_path_scores_for_the_same_model(tmp_path):
    """Cached features + FeatureHead give the inputs the image path gives for the same classifier."""
    from medloop.loop.mahapatra import Mahapatra
    from medloop.loop.state import RunState

    cfg = frozen(strategies=["badge"])
    ctx = prepare(cfg, progress=False)
    method = Mahapatra(ctx, 0, build_strategy("badge"))
    state = RunState(tmp_path / "t", method.oracle()).restore(method.initial_ids())
    models = method.train(state, None, 0)
    rng = np.random.default_rng(0)
    cand = method.candidates(build_strategy("badge"), state, models, 0, rng)
    assert cand.features is not None
    cached = method.inputs(frozenset({"mc", "embeddings"}), models, cand, 0)
    cand.features = None  # the image path: trunk and head on every candidate image
    images = method.inputs(frozenset({"mc", "embeddings"}), models, cand, 0)
    for key in ("combined", "bald", "prob_1", "embeddings", "labeled_embeddings"):
        np.testing.assert_allclose(cached[key], images[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_screening_pool_holds_the_share_and_leaves_validation_and_test_alone():
    with pytest.raises(DataError, match="holds 0 images of class 1 and 60 of the others"):
        screening_pool(np.arange(63), np.array([0] * 60 + [-1] * 3), 0.1, 1, seed=0)
    labels = np.array([1] * 40 + [0] * 60 + [-1] * 3)
    train = np.arange(103)
    pool = screening_pool(train, labels, 0.1, 1, seed=0)
    assert (labels[pool] == 1).sum() == 7 and (labels[pool] == 0).sum() == 60 and (labels[pool] == -1).sum() == 3
    assert np.array_equal(pool, screening_pool(train, labels, 0.1, 1, seed=0))
    rare = screening_pool(train, labels, 0.8, 1, seed=0)  # too few positives: negatives are dropped instead
    assert (labels[rare] == 1).sum() == 40 and (labels[rare] == 0).sum() == 10
    cfg = frozen(pool_positive_share=0.25, seeds=[0, 1], split_seed=3, initial="random", initial_size=4)
    plain, screened = prepare(frozen(seeds=[0, 1], split_seed=3), progress=False), prepare(cfg, progress=False)
    for seed in (0, 1):
        assert np.array_equal(screened.splits[seed].test, plain.splits[0].test)  # one split for every seed
        assert np.array_equal(screened.splits[seed].val, plain.splits[0].val)
        pool_labels = screened.dataset.labels[screened.splits[seed].train]
        assert (pool_labels == 1).mean() == pytest.approx(0.25, abs=0.05)


def test_random_and_label_free_starts_use_no_label():
    cfg = frozen(initial="label_free", initial_size=5, seeds=[0], split_seed=0)
    ctx = prepare(cfg, progress=False)
    typical = initial_set(ctx, 0, build_strategy("badge"))
    randomly = initial_set(ctx, 0, build_strategy("random"))
    assert len(typical) == len(set(typical)) == 5 and len(randomly) == 5 and typical != randomly
    ctx.dataset.labels[:] = ctx.dataset.labels[::-1].copy()  # other labels: the label-free choice is the same
    assert initial_set(ctx, 0, build_strategy("badge")) == typical
    rnd = prepare(frozen(initial="random", initial_size=6), progress=False)
    assert len(initial_set(rnd, 0)) == 6
    with pytest.raises(ConfigError, match="between the initial set \\(6\\)"):
        prepare(frozen(initial="random", initial_size=6, budget=5), progress=False)


def test_a_cold_start_experiment_runs_every_track_from_its_own_start(tmp_path):
    cfg = frozen(initial="label_free", initial_size=4, query_per_class=1, strategies=["coreset", "random"],
                 max_rounds=2, budget=0.5)
    out = run_experiment(cfg, tmp_path, progress=False)
    assert all([r["n_labeled"] for r in by_seed["0"]] == [4, 6, 8] for by_seed in out["tracks"].values())
    ctx = prepare(cfg, progress=False)
    pool_ids = ctx.pool(0).sample_ids
    starts = {}
    for name in ("coreset", "random"):
        log = tmp_path / "tracks" / f"{name}-seed0" / "answers" / "answers.jsonl"
        answered = {json.loads(line)["sample_id"] for line in log.read_text().splitlines()}
        starts[name] = {pool_ids[i] for i in initial_set(ctx, 0, build_strategy(name))}
        assert starts[name] <= answered  # each track started from its own choice
    assert starts["coreset"] != starts["random"]
    assert (tmp_path / "report.md").exists()


def _row(diff, ci, verdict, ratio=None, reason=""):
    return {"holm_diff": diff, "holm_ci": ci, "verdict": verdict, "verdict_reason": reason,
            "fraction_to_98pct_ratio": ratio}


def test_the_regime_sentence_names_the_strategy_to_use_or_says_random_is_as_good():
    from medloop.report.regimes import regime_sentence

    line = {"regime": "screening", "seeds": 10, "compared": {
        "badge": _row(0.04, [0.01, 0.07], "saving", 0.5), "coreset": _row(0.06, [0.02, 0.1], "saving", None),
        "typiclust": _row(-0.05, [-0.08, -0.02], "no saving shown", reason="the strategy is worse than random")}}
    text = regime_sentence(line)
    assert text.startswith("In the screening regime, use coreset") and "[+0.020, +0.100]" in text
    assert "Avoid typiclust" in text
    line["compared"] = {"badge": _row(0.004, [-0.01, 0.02], "no saving shown", 0.9,
                                      "the difference from random is within noise")}
    assert "random sampling is as good as any strategy tried: no strategy's difference" in regime_sentence(line)


def test_the_regimes_report_puts_every_regime_side_by_side(tmp_path):
    from medloop.report.regimes import build_regimes_report, regime_summary
    from medloop.storage import write_json

    cfg = frozen(seeds=[0, 1], split_seed=0, strategies=["badge", "coreset", "random"], max_rounds=2)
    results = run_experiment(cfg, tmp_path / "run", progress=False)
    line = regime_summary(results, ["badge", "coreset"], "balanced", "frozen", [0.1, 0.5])
    assert set(line["pairwise"]) == {"badge - coreset", "badge - random", "coreset - random"}
    assert line["seeds"] == 2
    pair = line["pairwise"]["coreset - random"]
    assert line["compared"]["coreset"]["holm_ci"] == pair["ci"] and line["compared"]["coreset"]["holm_diff"] == pair["diff"]
    if not pair["significant"]:  # a saving needs Holm's rejection
        assert line["compared"]["coreset"]["verdict"] == "no saving shown"
    assert line["curve_area_diff_ci_width"] == pytest.approx(line["curve_area_diff_ci"][1] - line["curve_area_diff_ci"][0],
                                                             abs=2e-4)
    write_json(tmp_path / "run" / "summary.json", line)
    report = build_regimes_report({"balanced": tmp_path / "run", "again": tmp_path / "run"}, tmp_path)
    text = report.read_text()
    assert text.count("| balanced | ") == 3 and text.count("| again | ") == 3
    assert "- In the balanced regime" in text and (tmp_path / "regimes.png").stat().st_size > 10_000


def test_runs_of_one_regime_with_other_strategies_are_joined_and_others_refused(tmp_path):
    from medloop.report.regimes import build_regimes_report, regime_summary
    from medloop.storage import write_json

    for name, strategies in (("a", ["badge", "random"]), ("b", ["coreset", "random"])):
        results = run_experiment(frozen(seeds=[0, 1], split_seed=0, strategies=strategies, max_rounds=1),
                                 tmp_path / name, progress=False)
        write_json(tmp_path / name / "summary.json", regime_summary(results, strategies[:1], "balanced", "frozen", [0.1]))
    text = build_regimes_report({"balanced": [tmp_path / "a", tmp_path / "b"]}, tmp_path / "new" / "report").read_text()
    assert "| balanced | badge |" in text and "| balanced | coreset |" in text and text.count("| balanced | random |") == 1
    one = run_experiment(frozen(seeds=[0], split_seed=0, strategies=["coreset", "random"], max_rounds=1),
                         tmp_path / "c", progress=False)
    write_json(tmp_path / "c" / "summary.json", regime_summary(one, ["coreset"], "balanced", "frozen", [0.1]))
    with pytest.raises(ValueError, match="differ in seeds or pool"):
        build_regimes_report({"balanced": [tmp_path / "a", tmp_path / "c"]}, tmp_path)
