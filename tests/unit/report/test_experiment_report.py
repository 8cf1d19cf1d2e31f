"""The experiment report built from a small hand-made results.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medloop.errors import DataError
from medloop.report.console import experiment_summary
from medloop.report.experiment import build_report, curve, savings_summary, stage_table


def rnd(i: int, frac: float, auc: float, stages=(), dice=None) -> dict:
    seg = None if dice is None else {"dice_mean": dice, "dice": {"lung": dice}, "hd95": {"lung": 3.0}, "hd_max": {"lung": 6.0}}
    return {"round": i, "n_labeled": int(frac * 100), "fraction": frac, "n_synthetic": 0,
            "cost": {"images": int(frac * 100), "pixels": int(frac * 1000), "pixel_fraction": frac},
            "val": {"auc": auc}, "test": {"auc": auc, "sensitivity": 0.5, "specificity": 0.6}, "seg": seg,
            "stages": list(stages), "queried": [], "stop": None}


def results() -> dict:
    al = {"0": [rnd(0, 0.1, 0.70, [0.1], 0.8), rnd(1, 0.2, 0.85, [0.2], 0.85), rnd(2, 0.3, 0.90)],
          "1": [rnd(0, 0.1, 0.60, [0.1], 0.7), rnd(1, 0.2, 0.80, [0.2], 0.8), rnd(2, 0.3, 0.92)]}
    rand = {"0": [rnd(0, 0.1, 0.70, [0.1], 0.8), rnd(1, 0.2, 0.75, [0.2], 0.8)],
            "1": [rnd(0, 0.1, 0.60, [0.1], 0.7), rnd(1, 0.2, 0.65, [0.2], 0.7)]}
    fsl = {"test": {"auc": 0.9, "sensitivity": 0.8, "specificity": 0.9},
           "seg": {"dice_mean": 0.9, "hd95": {"lung": 2.0}, "hd_max": {"lung": 4.0}}}
    return {"experiment": "toy", "medloop_version": "0", "minutes": 1.0, "stopping": "validation split",
            "config": {"record_at": [0.1, 0.2], "seeds": [0, 1],
                       "strategies": [{"name": "combined"}, {"name": "random"}]},
            "data": {"root": "builtin:x", "n_samples": 10, "pool_size": {}, "val_size": {}, "test_size": {}},
            "tracks": {"combined": al, "random": rand},
            "baselines": {"fsl": {"0": fsl, "1": fsl}, "random_subset": [{"fraction": 0.35, **fsl}], "fsl_cv": None}}


def test_stage_table_has_the_papers_rows_and_columns():
    columns, rows = stage_table(results(), "combined")
    assert columns == ["10%", "20%", "FSL", "FSL 35% random"]
    assert rows["AUC"][:3] == [pytest.approx(0.65), pytest.approx(0.825), pytest.approx(0.9)]
    assert rows["Dice"][0] == pytest.approx(0.75) and rows["HD95 (px)"][0] == pytest.approx(3.0)
    assert set(rows) == {"Sensitivity", "Specificity", "AUC", "Dice", "HD95 (px)", "HD max (px)"}


def test_curve_is_mean_and_std_over_seeds():
    x, m, s = curve(results()["tracks"]["combined"])
    assert x.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert m.tolist() == pytest.approx([0.65, 0.825, 0.91]) and s[0] == pytest.approx(0.05)


def test_report_files_from_results_json(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(results()))
    path = build_report(tmp_path)
    md = path.read_text()
    assert "| AUC | 0.650 | 0.825 | 0.900 |" in md
    # an old results.json (no per-image test probabilities): the point estimate, no interval, no claim
    assert "| combined | +0.062 (interval unavailable: run predates per-image test probabilities) | 30.0% (2/2) |" in md
    assert "- **combined**: no saving claimed: interval unavailable" in md
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    html = (tmp_path / "report.html").read_text()
    assert "<table>" in html and "curves.png" in html


def with_probs(fsl_strength: float, al_step: float, random_step: float, n: int = 80) -> dict:
    """``results()`` with per-image test probabilities: FSL separates the classes by ``fsl_strength`` (0: chance),
    each AL / random round by ``step`` more than the last."""
    labels = np.arange(n) % 2
    res = results()

    def scored(strength: float, seed: int) -> dict:
        probs = np.round(strength * labels + np.random.default_rng(seed).random(n), 5)
        return {"test_probs": probs.tolist(), "auc": float(roc_auc_score(labels, probs))}

    for k, (label, step) in enumerate((("combined", al_step), ("random", random_step))):
        for seed in ("0", "1", "2"):
            res["tracks"][label][seed] = []
            for i in range(4):
                s = scored(0.2 + step * i, 100 * k + 10 * int(seed) + i)
                res["tracks"][label][seed].append({**rnd(i, 0.1 * (i + 1), s["auc"]), "test_probs": s["test_probs"]})
    fsl = {seed: scored(fsl_strength, 1000 + int(seed)) for seed in ("0", "1", "2")}
    res["baselines"]["fsl"] = {seed: {"test": {"auc": v["auc"]}, "test_probs": v["test_probs"]} for seed, v in fsl.items()}
    res["config"]["seeds"] = [0, 1, 2]
    res["data"]["test_labels"] = {seed: labels.tolist() for seed in ("0", "1", "2")}
    return res


def test_report_claims_no_saving_when_fsl_is_at_chance(tmp_path):
    res = with_probs(fsl_strength=0.0, al_step=0.5, random_step=0.0)  # AL far above random, FSL a coin flip
    summary = savings_summary(res, n_boot=300)
    assert summary["fsl"]["ci"][0] < 0.5 and summary["strategies"]["combined"]["ci"][0] > 0
    (tmp_path / "results.json").write_text(json.dumps(res))
    md = build_report(tmp_path).read_text()
    assert "no saving claimed: the fully supervised classifier is not above chance" in md
    assert "- **combined**: saving" not in md


def test_report_claims_a_saving_only_when_fsl_is_above_chance_and_the_difference_above_zero(tmp_path):
    good = savings_summary(with_probs(fsl_strength=1.0, al_step=0.5, random_step=0.0), n_boot=300)
    assert good["fsl"]["ci"][0] > 0.5 and good["strategies"]["combined"]["verdict"] == "saving"
    assert good["to_fsl"]["combined"]["reached"] == "3/3" and good["to_fsl"]["random"]["reached"] == "0/3"
    noise = savings_summary(with_probs(fsl_strength=1.0, al_step=0.01, random_step=0.0), n_boot=300)
    combined = noise["strategies"]["combined"]
    assert combined["verdict"] == "no saving shown" and "within noise" in combined["reason"]
    assert combined["ci"][0] < 0 < combined["ci"][1]
    (tmp_path / "results.json").write_text(json.dumps(with_probs(fsl_strength=1.0, al_step=0.5, random_step=0.0)))
    md = build_report(tmp_path).read_text()
    assert "- **combined**: saving: FSL is above chance" in md and "| random | reference |" in md


def test_terminal_summary_gives_the_verdict_and_its_reason():
    table = experiment_summary(with_probs(fsl_strength=0.0, al_step=0.5, random_step=0.0))
    assert "combined: no saving shown: the fully supervised classifier is not above chance" in table.caption


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="results.json"):
        build_report(tmp_path)


def test_censored_median_counts_the_seeds_that_never_reach():
    from medloop.report.experiment import censored_median
    from medloop.report.regimes import median_ratio

    limits = {str(s): 0.1 for s in range(4)}
    assert censored_median({"0": 0.02, "1": 0.04, "2": 0.06, "3": 0.08}, limits) == (0.04, False)
    # two seeds never reach it: the mean over the other two (0.03) flatters; the median is 0.04
    assert censored_median({"0": 0.02, "1": 0.04, "2": None, "3": None}, limits) == (0.04, False)
    assert censored_median({"0": 0.02, "1": None, "2": None, "3": None}, limits) == (0.1, True)  # beyond the budget
    # a seed censored early leaves the risk set: 0.02 (1 - 1/4), 0.06 (1 - 1/2) -> 0.375 at 0.06
    assert censored_median({"0": 0.02, "1": None, "2": 0.06, "3": None}, {**limits, "1": 0.03}) == (0.06, False)
    al = {"median": 0.05, "median_censored": False}
    assert median_ratio(al, {"median": 0.1, "median_censored": False}) == (0.5, "exact")
    assert median_ratio(al, {"median": 0.1, "median_censored": True}) == (0.5, "upper bound")
    assert median_ratio({"median": 0.1, "median_censored": True}, al) == (None, "undefined")


def test_collaborative_comparisons_pair_tracks_with_the_same_number_of_cycles():
    from medloop.report.collaborative import case_comparisons

    def rec(dice):  # one fold, five test patients
        return [{"test": {"by_case": {f"p{i}": {"myo": d, "bp": None} for i, d in enumerate(dice)}}}]

    tracks = {"discriminator-n1": {"0.30": {"0": rec([0.8, 0.7, 0.9, 0.6, 0.8])}},
              "random-n1": {"0.30": {"0": rec([0.7, 0.6, 0.8, 0.5, 0.7])}},
              "discriminator-n3": {"0.30": {"0": rec([0.5, 0.5, 0.5, 0.5, 0.5])}},
              "random-n3": {"0.30": {"0": rec([0.5, 0.6, 0.5, 0.6, 0.55])}}}
    out = case_comparisons({"tracks": tracks}, n_boot=500)
    assert set(out) == {"discriminator-n1 - random-n1", "discriminator-n3 - random-n3"}
    one = out["discriminator-n1 - random-n1"]["0.30"]
    assert one["diff"] == pytest.approx(0.1) and one["n"] == 5 and one["ci"] == pytest.approx([0.1, 0.1])
    assert one["verdict"] == "better"
    assert out["discriminator-n3 - random-n3"]["0.30"]["diff"] == pytest.approx(-0.05)
    two = case_comparisons({"tracks": {k: {"0.30": {"0": [{"test": {"by_case": dict(list(
        v["0.30"]["0"][0]["test"]["by_case"].items())[:2])}}]}} for k, v in tracks.items()}}, n_boot=500)
    assert two["discriminator-n1 - random-n1"]["0.30"]["verdict"].startswith("too few test patients")
