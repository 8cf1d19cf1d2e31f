"""Experiment report from ``results.json``: the paper's Table 1 layout, learning curves, savings, galleries.

Savings are claimed only with their uncertainty (issue 17): per strategy, the paired bootstrap interval of its
curve area minus random's (:func:`medloop.metrics.bootstrap.curve_area_diff_ci`), and the FSL AUC interval; a
saving needs both above their null (0.5, 0). See :func:`savings_summary`.

``build_report(run_dir)`` writes ``report.md``, ``report.html``, ``curves.png``, ``gallery.png`` (most and
least informative synthetic samples) and ``overlays.png`` (segmentations at several stages, the paper's
Fig. 3). It reads only ``results.json`` and the arrays the tracks saved, so ``medloop report`` can rebuild it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from medloop.metrics.bootstrap import (
    UNAVAILABLE,
    auc_ci,
    curve_area,
    curve_area_diff_ci,
    fraction_range,
    mean_auc_ci,
    saving_verdict,
)
from medloop.storage import save_figure

__all__ = ["build_report", "censored_median", "curve", "fraction_reaching", "savings_summary", "stage_table"]

COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _row_values(test: dict | None, seg: dict | None) -> dict[str, float | None]:
    test = test or {}
    out = {"Sensitivity": test.get("sensitivity"), "Specificity": test.get("specificity"), "AUC": test.get("auc")}
    if seg is not None:
        out["Dice"] = seg.get("dice_mean")
        hd95 = [v for v in (seg.get("hd95") or {}).values() if v is not None]
        hdm = [v for v in (seg.get("hd_max") or {}).values() if v is not None]
        out["HD95 (px)"] = float(np.mean(hd95)) if hd95 else None
        out["HD max (px)"] = float(np.mean(hdm)) if hdm else None
    return out


def stage_table(results: dict, label: str) -> tuple[list[str], dict[str, list[float | None]]]:
    """Columns (recorded stages reached, then baselines) and rows (metric -> values), means over seeds."""
    stages = results["config"]["record_at"]
    by_seed = results["tracks"][label]
    columns, rows, seen = [], {}, set()
    for f in stages:
        per_seed, fractions, rounds_hit = [], [], []
        for rounds in by_seed.values():
            hit = [r for r in rounds if f in r.get("stages", [])]
            if hit:
                per_seed.append(_row_values(hit[0]["test"], hit[0].get("seg")))
                fractions.append(hit[0]["fraction"])
                rounds_hit.append(hit[0]["round"])
        if not per_seed or tuple(rounds_hit) in seen:
            continue  # stage not reached, or reached by the same round as the previous stage
        seen.add(tuple(rounds_hit))
        # the column says the labeled fraction actually used (the first round at or beyond the stage)
        columns.append(f"{np.mean(fractions) * 100:.0f}%")
        for key in per_seed[0]:
            rows.setdefault(key, []).append(_mean([p.get(key) for p in per_seed]))
    base = results["baselines"]
    fsl = [_row_values(v["test"], v.get("seg")) for v in base["fsl"].values()]
    extra = [("FSL", fsl)]
    if base.get("random_subset"):
        frac = base["random_subset"][0]["fraction"]
        extra.append((f"FSL {frac * 100:.0f}% random", [_row_values(v["test"], v.get("seg")) for v in base["random_subset"]]))
    if base.get("fsl_cv"):
        folds = base["fsl_cv"]["folds"]
        extra.append((f"FSL {len(folds)}-fold CV", [_row_values(v["test"], v.get("seg")) for v in folds]))
    for name, vals in extra:
        columns.append(name)
        keys = set(rows) | set(vals[0])
        for key in keys:
            rows.setdefault(key, [None] * (len(columns) - 1))
            rows[key].append(_mean([v.get(key) for v in vals]))
    return columns, rows


def curve(rounds_by_seed: dict[str, list[dict]], metric: str = "auc") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per round index: mean labeled fraction, mean and std of the test metric over seeds."""
    n = max(len(r) for r in rounds_by_seed.values())
    xs, ms, ss = [], [], []
    for i in range(n):
        pts = [(r[i]["fraction"], r[i]["test"].get(metric)) for r in rounds_by_seed.values() if i < len(r)]
        vals = [v for _, v in pts if v is not None]
        if not vals:
            continue
        xs.append(np.mean([f for f, _ in pts]))
        ms.append(np.mean(vals))
        ss.append(np.std(vals))
    return np.array(xs), np.array(ms), np.array(ss)


def fraction_reaching(rounds: list[dict], target: float) -> float | None:
    """The labeled fraction of the first round whose test AUC reaches ``target`` (None if none does)."""
    for r in rounds:
        if r["test"].get("auc") is not None and r["test"]["auc"] >= target:
            return r["fraction"]
    return None


def censored_median(reached: dict[str, float | None], limits: dict[str, float]) -> tuple[float | None, bool]:
    """The Kaplan-Meier median of "labeled fraction at which a seed first reaches the target": a seed that never
    reaches it is right-censored at its last labeled fraction (``limits``), so seeds that stop short still count
    (a mean over the seeds that reach it counts only the lucky ones). Returns ``(median, censored)``: when fewer
    than half the seeds' survival has fallen by the last fraction, ``(the largest limit, True)``: the median lies
    beyond it."""
    times = sorted((f if f is not None else limits[s], f is None) for s, f in reached.items())  # events first at ties
    at_risk, survival = len(times), 1.0
    for t, censored in times:
        event = not censored
        if event:
            survival *= 1 - 1 / at_risk
            if survival <= 0.5 + 1e-12:
                return float(t), False
        at_risk -= 1
    return (float(max(limits.values())) if limits else None), True


def _reference(results: dict) -> str | None:
    """The label of the random-sampling track, the reference every other strategy is compared with."""
    for spec in results["config"]["strategies"]:
        spec = {"name": spec} if isinstance(spec, str) else spec
        if spec["name"] == "random" and spec.get("label", "random") in results["tracks"]:
            return spec.get("label", "random")
    return None


def _area_diff(tracks: dict[str, list[dict]], reference: dict[str, list[dict]]) -> dict:
    """The curve-area difference from the recorded AUCs alone (runs without ``test_probs``): no interval."""
    pairs = [([r for r in tracks[s] if r["test"].get("auc") is not None],
              [r for r in reference[s] if r["test"].get("auc") is not None]) for s in tracks if s in reference]
    pairs = [p for p in pairs if p[0] and p[1]]
    if not pairs:
        return {"diff": None, "ci": None, "range": None, "n_seeds": 0}
    lo, hi = fraction_range([t for p in pairs for t in p])
    diff = float(np.mean([curve_area(a, lo, hi) - curve_area(b, lo, hi) for a, b in pairs]))
    return {"diff": diff, "ci": None, "range": [float(lo), float(hi)], "n_seeds": len(pairs)}


def savings_summary(results: dict, share: float = 0.98, n_boot: int = 1000, seed: int = 0) -> dict:
    """Annotation savings with their uncertainty, from ``results.json``.

    Returns:
        ``fsl``: mean test AUC of the fully supervised baselines over seeds, ``ci`` its two-level bootstrap
        95% interval (seeds and test images resampled), ``per_seed`` each seed's AUC and interval (test
        images resampled); intervals are None for runs without per-image test probabilities.
        ``to_fsl``: per track, the labeled fraction at which the test AUC first reaches ``share`` x that seed's
        FSL AUC (``per_seed``, None where never), ``mean`` over the seeds that reached it, ``reached`` "k/n",
        ``median`` the Kaplan-Meier median with the seeds that never reach it censored (``censored_median``;
        ``median_censored``: the median lies beyond ``median``, the last fraction).
        ``reference``: the random track's label (None without one). ``strategies``: per other track, ``diff``
        (mean over seeds of its curve area minus random's; curve area = mean test AUC over the labeled fractions
        every track covers), ``ci`` (paired two-level bootstrap 95% interval), ``range``, ``n_seeds``, and
        ``verdict`` ("saving" or "no saving shown") with its ``reason``.
    """
    base = results["baselines"]["fsl"]
    labels = results["data"].get("test_labels")
    fsl_auc = {s: v["test"].get("auc") for s, v in base.items()}
    have_probs = labels is not None and all(v.get("test_probs") is not None and s in labels for s, v in base.items())
    fsl: dict[str, Any] = {"auc": _mean(list(fsl_auc.values())), "ci": None,
                           "per_seed": {s: {"auc": a, "ci": None} for s, a in fsl_auc.items()}}
    if have_probs:
        pooled = mean_auc_ci({s: v["test_probs"] for s, v in base.items()}, labels, n_boot, seed)
        fsl["ci"] = pooled["ci"]
        for s, v in base.items():
            fsl["per_seed"][s]["ci"] = list(auc_ci(v["test_probs"], labels[s], n_boot, seed))
    to_fsl = {}
    for label, by_seed in results["tracks"].items():
        per_seed = {s: fraction_reaching(rounds, share * fsl_auc[s]) if fsl_auc.get(s) is not None else None
                    for s, rounds in by_seed.items()}
        got = [f for f in per_seed.values() if f is not None]
        median, censored = censored_median(per_seed, {s: rounds[-1]["fraction"] for s, rounds in by_seed.items()
                                                      if rounds})
        to_fsl[label] = {"per_seed": per_seed, "mean": float(np.mean(got)) if got else None,
                         "reached": f"{len(got)}/{len(per_seed)}", "median": median, "median_censored": censored}
    reference = _reference(results)
    strategies = {}
    for label, by_seed in results["tracks"].items():
        if reference is None or label == reference:
            continue
        diff = curve_area_diff_ci(by_seed, results["tracks"][reference], labels, n_boot, seed) if labels else None
        verdict, reason = saving_verdict(fsl["ci"], diff["ci"] if diff else None)
        strategies[label] = {**(diff or _area_diff(by_seed, results["tracks"][reference])), "verdict": verdict,
                             "reason": reason}
    return {"share": share, "fsl": fsl, "to_fsl": to_fsl, "reference": reference, "strategies": strategies}


def _plot_curves(results: dict, path: Path, fsl_ci: list[float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_seg = any(r.get("seg") for t in results["tracks"].values() for rs in t.values() for r in rs)
    fig, axes = plt.subplots(1, 2 if has_seg else 1, figsize=(11 if has_seg else 6, 4), squeeze=False)
    ax = axes[0, 0]
    for k, (label, by_seed) in enumerate(results["tracks"].items()):
        color = COLORS[k % len(COLORS)]
        x, m, s = curve(by_seed)
        ax.plot(x * 100, m, "-o", ms=3, color=color, label=f"{label} (n={len(by_seed)} seeds)")
        ax.fill_between(x * 100, m - s, m + s, color=color, alpha=0.15)
        for rounds in by_seed.values():  # each seed, thin: the spread the mean hides
            pts = [(r["fraction"] * 100, r["test"]["auc"]) for r in rounds if r["test"].get("auc") is not None]
            if pts:
                ax.plot(*zip(*pts), "-", lw=0.6, alpha=0.45, color=color)
    fsl = _mean([v["test"].get("auc") for v in results["baselines"]["fsl"].values()])
    if fsl is not None:
        ax.axhline(fsl, color="black", ls="--", lw=1, label="FSL (100% labeled)")
        if fsl_ci is not None and all(np.isfinite(fsl_ci)):
            ax.axhspan(fsl_ci[0], fsl_ci[1], color="gray", alpha=0.12, label="FSL 95% interval")
    ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
    rs = results["baselines"].get("random_subset")
    if rs:
        vals = [v["test"].get("auc") for v in rs if v["test"].get("auc") is not None]
        if vals:
            ax.errorbar([rs[0]["fraction"] * 100], [np.mean(vals)], yerr=[np.std(vals)], fmt="s", color="gray",
                        label=f"FSL random {rs[0]['fraction'] * 100:.0f}% ({len(vals)} draws)")
    ax.set_xlabel("% of training pool labeled")
    ax.set_ylabel("test ROC AUC")
    ax.set_title("classification: mean ± std over seeds (thin: each seed)", fontsize=10)
    ax.legend(fontsize=7)
    if has_seg:
        ax = axes[0, 1]
        for k, (label, by_seed) in enumerate(results["tracks"].items()):
            pts = {}
            for rounds in by_seed.values():
                for r in rounds:
                    if r.get("seg") and r["seg"].get("dice_mean") is not None:
                        pts.setdefault(round(r["fraction"], 3), []).append(r["seg"]["dice_mean"])
            if pts:
                xs = sorted(pts)
                ax.errorbar([x * 100 for x in xs], [np.mean(pts[x]) for x in xs], yerr=[np.std(pts[x]) for x in xs],
                            fmt="-o", ms=3, color=COLORS[k % len(COLORS)], label=label, capsize=2)
        fsl_d = _mean([(v.get("seg") or {}).get("dice_mean") for v in results["baselines"]["fsl"].values()])
        if fsl_d is not None:
            ax.axhline(fsl_d, color="black", ls="--", lw=1, label="FSL")
        ax.set_xlabel("% of training pool labeled")
        ax.set_ylabel("test Dice (mean over classes)")
        ax.set_title("segmentation (UNet) at recorded stages", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def _plot_gallery(run_dir: Path, track: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted((run_dir / "tracks" / track).glob("gallery_round_*.npz"))
    if not files:
        return False
    rows = []
    for f in files[:3]:
        d = np.load(f)
        rows.append((f.stem.split("_")[-1], d))
    fig, axes = plt.subplots(len(rows), 8, figsize=(16, 2.3 * len(rows)), squeeze=False)
    for r, (rnd, d) in enumerate(rows):
        imgs = list(zip(d["top_images"], d["top_scores"], ["most"] * 4)) + list(
            zip(d["bottom_images"], d["bottom_scores"], ["least"] * 4))
        for c, (img, score, kind) in enumerate(imgs[:8]):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"r{int(rnd)} {kind} {score:.3g}", fontsize=7)
            ax.axis("off")
    fig.suptitle(f"{track}: most (left) and least (right) informative synthetic samples, combined uncertainty", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)
    return True


def _plot_overlays(run_dir: Path, track: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted((run_dir / "tracks" / track).glob("overlay_round_*.npz"))
    if not files:
        return False
    data = [(f.stem.split("_")[-1], np.load(f)) for f in files[:4]]
    n_img = min(3, len(data[0][1]["image"]))
    fig, axes = plt.subplots(n_img, len(data), figsize=(2.6 * len(data), 2.6 * n_img), squeeze=False)
    for c, (rnd, d) in enumerate(data):
        for r in range(n_img):
            ax = axes[r, c]
            ax.imshow(d["image"][r], cmap="gray")
            ax.contour(d["truth"][r] > 0, levels=[0.5], colors="#009E73", linewidths=0.8)
            ax.contour(d["pred"][r] > 0, levels=[0.5], colors="#D55E00", linewidths=0.8)
            ax.axis("off")
            if r == 0:
                ax.set_title(f"round {int(rnd)}", fontsize=8)
    fig.suptitle(f"{track}: UNet segmentation at recorded stages (green: truth, orange: prediction)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)
    return True


def _ci(ci: list[float] | None, signed: bool = False) -> str:
    if ci is None or not all(np.isfinite(ci)):
        return "no interval"
    fmt = "+.3f" if signed else ".3f"
    return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _savings_lines(summary: dict) -> list[str]:
    """The report's savings section: intervals first, a saving claimed only when they allow it."""
    fsl, share, ref = summary["fsl"], summary["share"], summary["reference"]
    pct = f"{share * 100:.0f}%"
    lines = ["## Annotation savings", ""]
    n = len(fsl["per_seed"])
    if fsl["ci"] is None:
        lines += [f"FSL test AUC {_fmt(fsl['auc'])} (mean over {n} seeds; {UNAVAILABLE}).", ""]
    else:
        per_seed = "; ".join(f"{s}: {_fmt(v['auc'])} {_ci(v['ci'])}" for s, v in fsl["per_seed"].items())
        lines += [(f"FSL test AUC {_fmt(fsl['auc'])} (mean over {n} seeds), 95% interval {_ci(fsl['ci'])} with "
                   f"seeds and test images resampled; per seed, test images resampled: {per_seed}."), ""]
    lines += [("A strategy saves annotation only if the fully supervised classifier (FSL) is above chance (its AUC "
               "interval lies above 0.5) and the strategy's learning curve lies above random sampling's beyond noise: "
               "the curve area is the mean test AUC over the labeled fractions every track covers, and the 95% "
               "interval of (strategy − random) comes from a paired bootstrap over seeds and test images (the same "
               f"image resample for both tracks of a seed). The labeled fraction to reach {pct} of FSL's AUC is "
               "shown with how many seeds reached it."), ""]
    if fsl["ci"] is not None and np.isfinite(fsl["ci"]).all() and fsl["ci"][0] <= 0.5:
        lines += [f"FSL is not above chance here: reaching {pct} of its AUC says nothing about labels saved.", ""]
    lines += [(f"| strategy | curve area − {ref or 'random'} [95% interval] | % labeled to {pct} FSL: mean "
               "(seeds reached) | per seed | verdict |"), "|---|---|---|---|---|"]
    for label, reach in summary["to_fsl"].items():
        seeds = ", ".join(f"{s}: {'—' if f is None else f'{f * 100:.0f}%'}" for s, f in reach["per_seed"].items())
        mean = "not reached" if reach["mean"] is None else f"{reach['mean'] * 100:.1f}%"
        st = summary["strategies"].get(label)
        if st is None:
            area, verdict = ("reference" if label == ref else "no random track to compare with"), ""
        elif st["ci"] is None:
            diff = "n/a" if st["diff"] is None else f"{st['diff']:+.3f}"
            area, verdict = f"{diff} ({UNAVAILABLE})", st["verdict"]
        else:
            area, verdict = f"{st['diff']:+.3f} {_ci(st['ci'], signed=True)}", st["verdict"]
        lines.append(f"| {label} | {area} | {mean} ({reach['reached']}) | {seeds} | {verdict} |")
    lines.append("")
    for label, st in summary["strategies"].items():
        claim = "saving" if st["verdict"] == "saving" else "no saving claimed"
        lines.append(f"- **{label}**: {claim}: {st['reason']}.")
    if ref is None:
        lines.append("- No saving claimed: the experiment has no random-sampling track to compare with.")
    lines.append("")
    return lines


def build_report(run_dir: str | Path) -> Path:
    """Write report.md / report.html and figures next to ``results.json``; returns the report.md path."""
    run_dir = Path(run_dir)
    from medloop.report.html import read_results

    results: dict[str, Any] = read_results(run_dir)
    labels = list(results["tracks"])
    main = labels[0]
    lines = [f"# {results['experiment']}: active learning report", "",
             f"medloop {results['medloop_version']}; data `{results['data']['root']}` ({results['data']['n_samples']} "
             f"samples; pool / val / test per seed {results['data']['pool_size']} / {results['data']['val_size']} / "
             f"{results['data']['test_size']}); seeds {results['config']['seeds']}; {results['minutes']} min.", "",
             f"Stopping uses the {results['stopping']}.", ""]
    for label in labels:
        columns, rows = stage_table(results, label)
        lines += [f"## Table 1 layout: {label}", "", "Means over seeds at the first round reaching each recorded stage "
                  "(columns: % of the training pool labeled in that round), and the fully supervised baselines (FSL).", "",
                  "| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for key, vals in rows.items():
            digits = 1 if key.startswith("HD") else 3
            lines.append(f"| {key} | " + " | ".join(_fmt(v, digits) for v in vals) + " |")
        lines.append("")
    summary = savings_summary(results)
    _plot_curves(results, run_dir / "curves.png", summary["fsl"]["ci"])
    lines += ["## Learning curves", "", "![curves](curves.png)", ""]
    lines += _savings_lines(summary)
    lines += ["## Rounds", "", "| strategy | seed | round | labeled | % | synthetic | test AUC | val AUC | stop |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, by_seed in results["tracks"].items():
        for seed, rounds in by_seed.items():
            for r in rounds:
                lines.append(f"| {label} | {seed} | {r['round']} | {r['n_labeled']} | {r['fraction'] * 100:.1f} | "
                             f"{r['n_synthetic']} | {_fmt(r['test'].get('auc'))} | {_fmt(r['val'].get('auc'))} | "
                             f"{r['stop'] or ''} |")
    lines.append("")
    names = [spec if isinstance(spec, str) else spec["name"] for spec in results["config"]["strategies"]]
    gen = [lab for lab, name in zip(labels, names) if name == "generative"]
    seed0 = str(results["config"]["seeds"][0])
    if gen and _plot_gallery(run_dir, f"{gen[0]}-seed{seed0}", run_dir / "gallery.png"):
        lines += ["## Synthetic samples", "", "![gallery](gallery.png)", ""]
    if _plot_overlays(run_dir, f"{main}-seed{seed0}", run_dir / "overlays.png"):
        lines += ["## Segmentation at several stages", "", "![overlays](overlays.png)", ""]
    from medloop.report.html import write_report

    return write_report(run_dir, "\n".join(lines), results["experiment"])
