"""Where active learning pays: one report over the runs of several regimes (``benchmarks/label_efficiency.py
--regime all``).

``regime_summary`` turns one run's ``results.json`` into the benchmark's JSON line (written as the run's
``summary.json``); ``build_regimes_report`` puts the runs of every regime side by side: one table of regimes x
strategies (curve-area difference from random with its Holm-corrected interval, labels to 98% of the fully
supervised AUC with the ratio to random's, the verdict), the mean learning curves per regime (``regimes.png``),
and a sentence per regime that says which strategy to use there, or that random sampling is as good.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medloop.metrics.bootstrap import area_weights, pairwise_curve_areas, saving_verdict
from medloop.report.experiment import COLORS, curve, savings_summary
from medloop.storage import write_json, write_text

__all__ = ["regime_summary", "regime_sentence", "build_regimes_report"]


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def _auc_at(by_seed: dict, grid: list[float]) -> dict:
    at = {}
    for f in grid:
        vals = []
        for rounds in by_seed.values():
            hit = [r for r in rounds if r["fraction"] + 1e-9 >= f]
            if hit and hit[0]["test"].get("auc") is not None:
                vals.append(hit[0]["test"]["auc"])
        at[f"{f:.2f}"] = round(float(np.mean(vals)), 4) if vals else None
    return at


def _ratio(al: float | None, random: float | None) -> float | None:
    return None if al is None or random is None or random <= 0 else round(al / random, 4)


def median_ratio(al: dict, random: dict) -> tuple[float | None, str]:
    """AL's censored median fraction to 98% FSL over random's, and what it is: ``exact`` (both medians
    observed), ``upper bound`` (random's median lies beyond its last fraction, AL's does not: the ratio is below
    the value) or ``undefined`` (AL's median not observed)."""
    if al["median"] is None or al["median_censored"] or not random["median"]:
        return None, "undefined"
    return round(al["median"] / random["median"], 4), ("upper bound" if random["median_censored"] else "exact")


def regime_summary(results: dict, names: list[str], regime: str, recipe: str, grid: list[float]) -> dict:
    """The JSON line of one regime's run (see the module docstring)."""
    fsl = {s: v["test"]["auc"] for s, v in results["baselines"]["fsl"].items()}
    summary = savings_summary(results)
    pairwise = pairwise_curve_areas(results["tracks"], results["data"]["test_labels"])
    out: dict = {"regime": regime, "recipe": recipe, "data": results["config"]["data"]["source"],
                 "strategy": ",".join(names), "seeds": len(fsl),
                 "pool_size": results["data"]["pool_size"][next(iter(fsl))],
                 "fsl_auc": _round(np.mean(list(fsl.values()))), "fsl_auc_per_seed": {k: _round(v) for k, v in fsl.items()}}
    ci = summary["fsl"]["ci"]
    out["fsl_auc_ci"] = None if ci is None else [_round(v) for v in ci]
    to_fsl = {label: summary["to_fsl"][label] for label in results["tracks"]}
    x_rand, m_rand, _ = curve(results["tracks"]["random"])
    lo = max(curve(t)[0].min() for t in results["tracks"].values())
    hi = min(curve(t)[0].max() for t in results["tracks"].values())
    out["fraction_range"] = [_round(lo), _round(hi)]

    def one(label: str) -> dict:
        x, m, _ = curve(results["tracks"][label])
        reach, reach_random = to_fsl[label], to_fsl["random"]
        diff = summary["strategies"][label]
        row = {"auc_at": _auc_at(results["tracks"][label], grid),
               "curve_area": _round(area_weights(x, lo, hi) @ m),
               "curve_area_diff": _round(diff["diff"]),
               "curve_area_diff_ci": None if diff.get("ci") is None else [_round(v) for v in diff["ci"]],
               "fraction_to_98pct_fsl": _round(reach["mean"]), "reached_98pct_fsl": reach["reached"],
               "fraction_to_98pct_fsl_per_seed": {s: _round(f) for s, f in reach["per_seed"].items()},
               "fraction_to_98pct_ratio": _ratio(reach["mean"], reach_random["mean"]),
               "fraction_to_98pct_median": _round(reach["median"]),
               "fraction_to_98pct_median_censored": reach["median_censored"]}
        row["fraction_to_98pct_median_ratio"], row["fraction_to_98pct_median_ratio_kind"] = median_ratio(reach,
                                                                                                      reach_random)
        return row

    first = one(names[0])
    out["al_auc_at"], out["random_auc_at"] = first["auc_at"], _auc_at(results["tracks"]["random"], grid)
    for key in ("fraction_to_98pct_fsl", "reached_98pct_fsl", "fraction_to_98pct_fsl_per_seed"):
        out[f"{key}_al"] = first[key]
        out[f"{key}_random"] = ({s: _round(f) for s, f in to_fsl["random"]["per_seed"].items()}
                                if key.endswith("per_seed") else
                                _round(to_fsl["random"]["mean"]) if key == "fraction_to_98pct_fsl"
                                else to_fsl["random"]["reached"])
    out["fraction_to_98pct_ratio"] = first["fraction_to_98pct_ratio"]
    out["fraction_to_98pct_median_random"] = _round(to_fsl["random"]["median"])
    out["fraction_to_98pct_median_random_censored"] = to_fsl["random"]["median_censored"]
    for key in ("fraction_to_98pct_median", "fraction_to_98pct_median_ratio", "fraction_to_98pct_median_ratio_kind"):
        out[f"{key}_al" if key == "fraction_to_98pct_median" else key] = first[key]
    out["curve_area_al"] = first["curve_area"]
    out["curve_area_random"] = _round(area_weights(x_rand, lo, hi) @ m_rand)
    out["curve_area_diff"], out["curve_area_diff_ci"] = first["curve_area_diff"], first["curve_area_diff_ci"]
    ci_al = first["curve_area_diff_ci"]
    out["curve_area_diff_ci_width"] = None if ci_al is None else _round(ci_al[1] - ci_al[0])
    out["compared"] = {n: {k: v for k, v in one(n).items() if k != "auc_at"} for n in names}
    set_pairwise(out, pairwise)
    return out


def _against_random(pairwise: dict | None, label: str) -> dict | None:
    """The pair (label, random) of ``pairwise_curve_areas``, as ``label - random`` whichever way it is stored."""
    pairs = (pairwise or {}).get("pairs", {})
    if f"{label} - random" in pairs:
        return pairs[f"{label} - random"]
    pair = pairs.get(f"random - {label}")
    return None if pair is None else {**pair, "diff": -pair["diff"], "ci": [-pair["ci"][1], -pair["ci"][0]]}


def set_pairwise(line: dict, pairwise: dict | None) -> None:
    """Put the Holm-corrected comparisons into a regime's line: ``pairwise``, and per strategy ``holm_diff`` /
    ``holm_ci`` against random (over the fraction range every track covers) and the verdict, which needs Holm's
    rejection and an FSL above chance (``saving_verdict``)."""
    line["pairwise"] = None if pairwise is None else {
        k: {"diff": _round(v["diff"]), "ci": [_round(c) for c in v["ci"]], "level": _round(v["level"]),
            "p_holm": _round(v["p_holm"]), "significant": v["significant"]} for k, v in pairwise["pairs"].items()}
    for name, row in line["compared"].items():
        pair = _against_random(pairwise, name)
        row["holm_diff"] = None if pair is None else _round(pair["diff"])
        row["holm_ci"] = None if pair is None else [_round(v) for v in pair["ci"]]
        row["verdict"], row["verdict_reason"] = saving_verdict(line["fsl_auc_ci"], pair["ci"] if pair else None)
        if row["verdict"] == "saving" and not pair["significant"]:
            row["verdict"], row["verdict_reason"] = "no saving shown", (
                f"Holm's adjusted p-value ({pair['p_holm']:.3f}) is not below {pairwise['alpha']}: the difference from "
                "random is within noise once every pair compared is accounted for")
    first = line["strategy"].split(",")[0]
    line["verdict"], line["verdict_reason"] = line["compared"][first]["verdict"], line["compared"][first]["verdict_reason"]




def regime_sentence(line: dict) -> str:
    """One sentence a clinician can read: which strategy to use in this regime, or that random is as good."""
    regime = line["regime"]
    rows = line["compared"]
    saving = {n: r for n, r in rows.items() if r["verdict"] == "saving"}
    worse = [n for n, r in rows.items() if r.get("holm_ci") and r["holm_ci"][1] < 0]
    if saving:
        best = max(saving, key=lambda n: saving[n]["holm_diff"])
        r = saving[best]
        reach = (f"; it reached 98% of the fully supervised AUC with {r['fraction_to_98pct_ratio']:.2f} times the "
                 "labels random sampling needed" if r.get("fraction_to_98pct_ratio") is not None else
                 "; 98% of the fully supervised AUC was not reached by both within the budget")
        text = (f"In the {regime} regime, use {best}: its learning curve lies above random sampling's by "
                f"{r['holm_diff']:+.3f} AUC on average (Holm-corrected interval [{r['holm_ci'][0]:+.3f}, "
                f"{r['holm_ci'][1]:+.3f}], {line['seeds']} seeds){reach}.")
    else:
        top = max(rows, key=lambda n: rows[n]["holm_diff"] if rows[n].get("holm_diff") is not None else -1)
        r = rows[top]
        why = ("the fully supervised model is not above chance" if "not above chance" in r["verdict_reason"]
               else "no strategy's difference from random lies beyond noise")
        interval = f" [{r['holm_ci'][0]:+.3f}, {r['holm_ci'][1]:+.3f}]" if r.get("holm_ci") else ""
        text = (f"In the {regime} regime, random sampling is as good as any strategy tried: {why} (the best, "
                f"{top}, {_fmt(r.get('holm_diff'), signed=True)}{interval}, {line['seeds']} seeds).")
    if worse:
        text += f" Avoid {', '.join(worse)}: worse than random beyond noise."
    return text


def _fmt(v, digits: int = 3, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _merge(parts: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Several runs of one regime (e.g. the generative strategy run apart) as one: tracks and rows of every run, the
    random track and FSL of the first (runs of one regime share seeds, split and random track)."""
    results, line = parts[0]
    results = {**results, "tracks": dict(results["tracks"])}
    line = {**line, "compared": dict(line["compared"])}
    for other_results, other_line in parts[1:]:
        if other_line["seeds"] != line["seeds"] or other_line["pool_size"] != line["pool_size"]:
            raise ValueError(f"runs of the {line['regime']} regime differ in seeds or pool ({other_line['seeds']} vs "
                             f"{line['seeds']} seeds, pool {other_line['pool_size']} vs {line['pool_size']}); "
                             "join only runs of the same protocol")
        for name, row in other_line["compared"].items():
            line["compared"][name] = dict(row)
            results["tracks"][name] = other_results["tracks"][name]
    if len(parts) > 1:  # Holm's correction over every pair of the joined tracks
        line["strategy"] = ",".join(line["compared"])
        set_pairwise(line, pairwise_curve_areas(results["tracks"], results["data"]["test_labels"]))
    return results, line


def _plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False)
    for ax, (regime, (results, line)) in zip(axes[0], runs.items()):
        labels = [*line["compared"], "random"]
        for i, label in enumerate(labels):
            x, m, sd = curve(results["tracks"][label])
            style = {"color": "#555555", "linestyle": "--"} if label == "random" else {"color": COLORS[i % len(COLORS)]}
            ax.plot(100 * x, m, label=label, lw=1.6, **style)
            ax.fill_between(100 * x, m - sd, m + sd, alpha=0.08, **{"color": style["color"]})
        if line.get("fsl_auc") is not None:
            ax.axhline(line["fsl_auc"], color="black", lw=0.8, label="fully supervised")
            ax.axhline(0.98 * line["fsl_auc"], color="black", lw=0.6, linestyle=":", label="98% of it")
        ax.set_title(f"{regime} ({line['seeds']} seeds, pool {line['pool_size']})")
        ax.set_xlabel("labeled images (% of the pool)")
        ax.set_ylabel("test AUC (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_regimes_report(folders: dict[str, str | Path | list], out: str | Path) -> Path:
    """``regimes.md`` (+ ``regimes.png``, ``regimes.json``) in ``out`` from each regime's run folder, or folders (runs
    of the same seeds and pool with other strategies, joined), each with ``results.json`` and ``summary.json``."""
    out = Path(out)
    runs = {}
    for regime, given in folders.items():
        parts = [(json.loads((Path(f) / "results.json").read_text()), json.loads((Path(f) / "summary.json").read_text()))
                 for f in (given if isinstance(given, (list, tuple)) else [given])]
        runs[regime] = _merge(parts)
    out.mkdir(parents=True, exist_ok=True)
    _plot(runs, out / "regimes.png")
    lines = ["# Where active learning pays", "",
             "Each regime's strategies against random sampling on the same seeds, test split and fully supervised "
             "baseline (FSL). Difference: the mean over seeds of (strategy - random) in the area under the test-AUC "
             "curve over the labeled fractions every track covers, with its 95% interval corrected for the number "
             "of pairs compared (Holm; seeds and test images resampled). Labels to 98% FSL: the labeled fraction at "
             "which the test AUC first reaches 98% of the seed's FSL AUC (mean over the seeds that reach it), and "
             "its ratio to random's.", "",
             "| regime | strategy | difference from random [corrected 95%] | labels to 98% FSL (seeds) | ratio to "
             "random | verdict |", "|---|---|---|---|---|---|"]
    for regime, (_, line) in runs.items():
        for name, r in line["compared"].items():
            ci = r.get("holm_ci")
            interval = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
            reach = f"{100 * r['fraction_to_98pct_fsl']:.1f}% ({r['reached_98pct_fsl']})" \
                if r["fraction_to_98pct_fsl"] is not None else f"never ({r['reached_98pct_fsl']})"
            lines.append(f"| {regime} | {name} | {_fmt(r.get('holm_diff'), signed=True)}{interval} | {reach} | "
                         f"{_fmt(r['fraction_to_98pct_ratio'], 2)} | {r['verdict']} |")
        rnd = line["fraction_to_98pct_fsl_random"]
        lines.append(f"| {regime} | random | | {'never' if rnd is None else f'{100 * rnd:.1f}%'} "
                     f"({line['reached_98pct_fsl_random']}) | 1 | |")
    lines += ["", "![learning curves per regime](regimes.png)", "", "## What to do in each regime", ""]
    for regime, (_, line) in runs.items():
        fsl_ci = line.get("fsl_auc_ci")
        fsl = f"FSL AUC {line['fsl_auc']:.3f}" + (f" [{fsl_ci[0]:.3f}, {fsl_ci[1]:.3f}]" if fsl_ci else "")
        lines.append(f"- {regime_sentence(line)} ({fsl}; pool of {line['pool_size']} images.)")
    write_text(out / "regimes.md", "\n".join(lines) + "\n")
    write_json(out / "regimes.json", {regime: line for regime, (_, line) in runs.items()})
    return out / "regimes.md"
