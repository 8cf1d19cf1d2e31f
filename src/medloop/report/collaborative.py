"""Report of the collaborative-segmentation experiment from ``results.json`` (Ravanbakhsh et al. Table 1 layout).

Writes ``report.md`` / ``report.html``, ``dice_by_budget.png``, ``correlation.png`` (per-slice discriminator
plausibility against Dice, with Pearson r and p) and ``discriminator.png`` (the paper's Fig. 2: slice, ground
truth, prediction, discriminator map with unreliable areas in red).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


__all__ = ["build_collaborative_report", "case_comparisons", "dice_table"]

from medloop.report.experiment import COLORS
from medloop.storage import save_figure


def _dice(test: dict, names: dict[str, str]) -> dict[str, float | None]:
    per = {names[c]: test["dice"].get(names[c]) for c in names}
    vals = [v for v in per.values() if v is not None]
    per["average"] = float(np.mean(vals)) if vals else None
    return per


def _case_dice(test: dict) -> dict[str, float]:
    """Each test case's Dice averaged over the classes it (or the prediction) has."""
    out = {}
    for case, per in test.get("by_case", {}).items():
        vals = [v for v in per.values() if v is not None]
        if vals:
            out[case] = float(np.mean(vals))
    return out


def case_comparisons(results: dict, reference: str | None = None, seed: int = 0, n_boot: int = 10000) -> dict:
    """``reference`` (default: the first strategy, the method's own) minus each other strategy at every budget and
    the same number of cycles:
    the mean over test cases (patients, every fold's) of the paired difference of their average Dice after the
    last cycle, a bootstrap 95% interval over the cases, a bootstrap p-value adjusted for every comparison made
    (Holm), and the verdict: ``better`` / ``worse`` only when Holm rejects "no difference" and the interval
    agrees, else ``within noise``."""
    from medloop.metrics.bootstrap import holm, paired_mean_diff

    tracks = results["tracks"]
    labels = list(tracks)
    if not labels:
        return {}
    strategy = (reference or labels[0]).rpartition("-n")[0]  # tracks are "<strategy>-n<cycles>"
    pairs = [(f"{strategy}-n{n}", lab) for lab in labels for head, _, n in [lab.rpartition("-n")]
             if head != strategy and f"{strategy}-n{n}" in tracks]  # like with like: the same number of cycles
    out: dict[str, dict] = {}
    for reference, other in pairs:
        for b in sorted(set(tracks[reference]) & set(tracks[other]), key=float):
            diffs = []
            for fold in sorted(set(tracks[reference][b]) & set(tracks[other][b])):
                ra, rb = tracks[reference][b][fold], tracks[other][b][fold]
                if not ra or not rb:
                    continue
                a, o = _case_dice(ra[-1]["test"]), _case_dice(rb[-1]["test"])
                diffs += [a[c] - o[c] for c in sorted(set(a) & set(o))]
            out.setdefault(f"{reference} - {other}", {})[b] = paired_mean_diff(diffs, n_boot, seed)
    for by in out.values():
        for v in by.values():
            if v["p_value"] is None:
                v["verdict"] = f"too few test patients ({v['n']}) for an interval"
    flat = [(k, b) for k, by in out.items() for b, v in by.items() if v["p_value"] is not None]
    adjusted, _ = holm([out[k][b]["p_value"] for k, b in flat]) if flat else ([], None)
    for (k, b), p in zip(flat, adjusted):
        v = out[k][b]
        v["p_holm"] = float(p)
        v["verdict"] = ("better" if p < 0.05 and v["ci"][0] > 0 else "worse" if p < 0.05 and v["ci"][1] < 0
                        else "within noise")
    return out


def dice_table(results: dict) -> tuple[list[str], list[list]]:
    """Rows (budget, then FSL) x columns (strategy: each class and the average), means over folds."""
    names = results["class_names"]
    header = ["budget"]
    labels = list(results["tracks"])
    cls = [*names.values(), "average"]
    header += [f"{lab}: {c}" for lab in labels for c in cls]
    budgets = sorted({b for lab in labels for b in results["tracks"][lab]}, key=float)
    rows = []
    for b in budgets:
        row: list = [f"{float(b) * 100:.0f}%"]
        for lab in labels:
            folds = results["tracks"][lab].get(b, {})
            finals = [_dice(recs[-1]["test"], names) for recs in folds.values() if recs and recs[-1].get("final")]
            for c in cls:
                vals = [f[c] for f in finals if f[c] is not None]
                row.append(float(np.mean(vals)) if vals else None)
        rows.append(row)
    if results.get("fsl"):
        fsl = [_dice(v["test"], names) for v in results["fsl"].values()]
        row = ["FSL (100%)"]
        for _ in labels:
            for c in cls:
                vals = [f[c] for f in fsl if f[c] is not None]
                row.append(float(np.mean(vals)) if vals else None)
        rows.append(row)
    return header, rows


def build_collaborative_report(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    from medloop.report.html import read_results

    results = read_results(run_dir)
    names = results["class_names"]
    header, rows = dice_table(results)
    corr = results["correlation"]
    lines = [f"# {results['experiment']}: human-machine collaborative segmentation", "",
             f"medloop {results['medloop_version']}; data `{results['data']['root']}` ({results['data']['n_slices']} "
             f"slices of {results['data']['n_volumes']} volumes); cross-validation by volume, "
             f"{results['data']['folds_run']} of {results['config']['folds']} folds run; {results['minutes']} min.", "",
             "## Dice by budget (Table 1 layout)", "",
             "Test Dice after Algorithm 1 (mean over folds). Labels: `strategy-nN` = N cycles; FSL = the cGAN trained "
             "on every pool slice with its true labels.", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join([row[0]] + ["n/a" if v is None else f"{v:.3f}" for v in row[1:]]) + " |")
    lines += ["", "![dice](dice_by_budget.png)", "", "## Annotation cost", "",
              "Mean over folds after the last cycle: slices labeled by the expert (base volume + queries), slices "
              "pseudo-labeled by the generator, and annotated (foreground) pixels of the expert's label maps.", "",
              "| strategy | budget | expert slices | pseudo-labeled slices | expert pixels |", "|---|---|---|---|---|"]
    for lab, by_budget in results["tracks"].items():
        for b, folds in sorted(by_budget.items(), key=lambda kv: float(kv[0])):
            last = [recs[-1] for recs in folds.values() if recs]
            mean = lambda key: float(np.mean([r.get(key, 0) for r in last])) if last else float("nan")  # noqa: E731
            lines.append(f"| {lab} | {float(b) * 100:.0f}% | {mean('n_true'):.0f} | {mean('n_pseudo'):.0f} | "
                         f"{mean('expert_pixels'):.0f} |")
    comps = results.get("comparisons") or {}
    if comps:
        lines += ["", "## Is the method's query better than the baselines?", "",
                  "Paired difference of test Dice (average over the structures) after the last cycle, per test "
                  "patient (every fold's), with a bootstrap 95% interval over the patients; p adjusted for every "
                  "comparison in this table (Holm). \"within noise\" unless Holm rejects no difference.", "",
                  "| comparison | budget | difference | 95% interval | Holm p | patients | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for key, by_budget in comps.items():
            for b, v in by_budget.items():
                ci = "n/a" if v["ci"] is None else f"[{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}]"
                diff = "n/a" if v["diff"] is None else f"{v['diff']:+.3f}"
                p = f"{v['p_holm']:.3g}" if v.get("p_holm") is not None else "n/a"
                lines.append(f"| {key} | {float(b) * 100:.0f}% | {diff} | {ci} | {p} | {v['n']} | "
                             f"{v.get('verdict', 'n/a')} |")
    qc = results.get("quality_control") or {}
    if qc:
        thr = next((v["threshold"] for by in qc.values() for v in by.values()), 0.7)
        lines += ["", "## The discriminator as quality control", "",
                  f"Each track calibrates the discriminator's slice plausibility to a predicted Dice on the slices the "
                  f"expert labeled in its first cycle (the model's maps from before it trained on them; no test "
                  f"labels), then predicts the Dice of the base model's maps of the test slices. MAE: mean absolute "
                  f"error of the predicted Dice; AUROC: how well it flags slices whose Dice is below {thr}; "
                  f"precision / recall of flagging at {thr}. The pseudo-labels a track flagged for review are listed "
                  "in its folder, `tracks/fold*/<track>/qc/round_*.json` (`flagged`).", "",
                  "| strategy (calibration slices) | budget | MAE | AUROC | flagged precision | flagged recall | test slices (below) |",
                  "|---|---|---|---|---|---|---|"]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        for lab, by_budget in qc.items():
            for b, v in by_budget.items():
                when = "all budgets" if b == "all" else f"{float(b) * 100:.0f}%"
                lines.append(f"| {lab} | {when} | {fmt(v['mae'])} | {fmt(v['auroc'])} | {fmt(v['flag_precision'])} "
                             f"| {fmt(v['flag_recall'])} | {v['n']} ({v['n_below']}) |")
        lines += ["", "Pseudo-labels flagged for review at the last cycle (predicted Dice below the threshold), mean "
                  "over folds:", "", "| strategy | budget | flagged / pseudo-labeled |", "|---|---|---|"]
        for lab, by_budget in qc.items():
            for b, v in by_budget.items():
                if "flagged_mean" in v:
                    lines.append(f"| {lab} | {float(b) * 100:.0f}% | {v['flagged_mean']:.1f} / {v['pseudo_mean']:.1f} |")
    lines += ["", "## Discriminator score and Dice", ""]
    pairs = [("base model (trained on one volume)", corr), ("fully supervised model", results.get("correlation_fsl"))]
    pairs = [(what, c) for what, c in pairs if c]
    for what, c in pairs:
        if c["pearson_r"] is not None:
            lines.append(f"- Pearson correlation of per-slice discriminator plausibility and per-slice Dice, {what}, test volumes: "
                         f"**r = {c['pearson_r']:.3f}**, p = {c['p_value']:.2g}, n = {c['n_slices']} slices.")
        else:
            lines.append(f"- {what}: correlation undefined (n = {c['n_slices']} slices, or a constant score).")
    lines += ["", "![correlation](correlation.png)", "", "![discriminator](discriminator.png)", ""]
    # figures
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4.2 * (len(names) + 1), 3.5), squeeze=False)
    cls = [*names.values(), "average"]
    labels = list(results["tracks"])
    budgets = [float(r[0].rstrip("%")) for r in rows if r[0].endswith("%")]
    for j, c in enumerate(cls):
        ax = axes[0, j]
        for k, lab in enumerate(labels):
            col = 1 + k * len(cls) + j
            ax.plot(budgets, [r[col] for r in rows if r[0].endswith("%")], "-o", ms=3, color=COLORS[k % len(COLORS)],
                    label=lab)
            if rows and rows[-1][0].startswith("FSL") and rows[-1][col] is not None and k == 0:
                ax.axhline(rows[-1][col], color="black", ls="--", lw=1, label="FSL")
        ax.set_title(c, fontsize=10)
        ax.set_xlabel("budget (% of pool slices)")
        ax.set_ylabel("test Dice")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, run_dir / "dice_by_budget.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 4), squeeze=False)
    for ax, (what, c) in zip(axes[0], pairs):
        ax.scatter(c["plausibility"], c["dice"], s=8, alpha=0.6, color="#0072B2")
        ax.set_xlabel("discriminator plausibility (slice)")
        ax.set_ylabel("Dice (mean over classes)")
        r = "n/a" if c["pearson_r"] is None else f"r = {c['pearson_r']:.3f}, p = {c['p_value']:.2g}"
        ax.set_title(f"{what.split(' (')[0]}: {r}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, run_dir / "correlation.png", dpi=100)
    plt.close(fig)
    figs = sorted((run_dir / "baselines").glob("fold*-figure.npz"))
    if figs:
        d = np.load(figs[0])
        n = len(d["image"])
        fig, axes = plt.subplots(n, 5, figsize=(12.5, 2.6 * n), squeeze=False)
        for r in range(n):
            axes[r, 0].imshow(d["image"][r], cmap="gray")
            axes[r, 1].imshow(d["truth"][r], cmap="viridis", vmin=0, vmax=max(2, int(d["truth"].max())))
            axes[r, 2].imshow(d["pred"][r], cmap="viridis", vmin=0, vmax=max(2, int(d["truth"].max())))
            axes[r, 3].imshow(d["image"][r], cmap="gray")
            bad = np.ma.masked_where(d["plausibility"][r] >= 0.5, 1.0 - d["plausibility"][r])
            axes[r, 3].imshow(bad, cmap="Reds", alpha=0.6, vmin=0, vmax=1)
            axes[r, 4].imshow(d["image"][r], cmap="gray")
            wrong = np.ma.masked_where(d["pred"][r] == d["truth"][r], np.ones_like(d["pred"][r], dtype=float))
            axes[r, 4].imshow(wrong, cmap="Reds", alpha=0.7, vmin=0, vmax=1)
            for c, title in enumerate(("slice", "ground truth", "prediction (pseudo label)",
                                       "discriminator: unreliable in red", "pseudo label wrong (red)")):
                axes[r, c].axis("off")
                if r == 0:
                    axes[r, c].set_title(title, fontsize=9)
        fig.tight_layout()
        save_figure(fig, run_dir / "discriminator.png", dpi=90)
        plt.close(fig)
    from medloop.report.html import write_report

    return write_report(run_dir, "\n".join(lines), results["experiment"])
