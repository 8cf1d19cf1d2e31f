"""Rich tables for the terminal."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from medloop.data.inspect import DatasetSummary
from medloop.data.layouts.base import BUILTINS, LAYOUTS, Layout

__all__ = ["summary_table", "layout_tables", "experiment_summary", "collaborative_summary"]


def _options_text(cls: type[Layout]) -> str:
    return "\n".join(f"{k}={o.default!r}: {o.help}" for k, o in cls.options.items()) or "-"


def layout_tables() -> list[Table]:
    """Tables of built-in datasets and supported file layouts (for `medloop data list`)."""
    builtin = Table(title="Built-in datasets (SOURCE = builtin:NAME)", show_lines=True)
    for col in ("name", "what", "options (--option key=value)"):
        builtin.add_column(col)
    for name in BUILTINS:
        cls = BUILTINS.get(name)
        builtin.add_row(f"builtin:{name}", escape(cls.summary), escape(_options_text(cls)))
    layouts = Table(title="Folder layouts (SOURCE = a folder; detected in this order, or --layout NAME)", show_lines=True)
    for col in ("layout", "what", "tree", "options"):
        layouts.add_column(col)
    for cls in sorted((LAYOUTS.get(n) for n in LAYOUTS), key=lambda c: c.priority):
        layouts.add_row(cls.name, escape(cls.summary), escape(cls.tree), escape(_options_text(cls)))
    return [builtin, layouts]


def summary_table(summary: DatasetSummary) -> Table:
    """One table with everything `medloop data inspect` reports."""
    t = Table(title=escape(f"{summary.root}  [{summary.name}]"), show_header=False, show_lines=False)
    t.add_column("what", style="bold")
    t.add_column("value")

    def row(what: str, value: str) -> None:
        t.add_row(what, escape(value))  # values hold file names and paths: never rich markup

    unit = "volumes" if summary.volumetric else "images"
    row("samples", f"{summary.n_samples} 2D samples from {summary.n_entries} {unit}, {summary.n_cases} cases")
    row("classes", ", ".join(f"{k}: {v}" for k, v in summary.class_counts.items()))
    if summary.label_values:
        rows = [f"{v} {d['name']}: in {d['samples']} samples, {100 * d['pixel_fraction']:.2f}% of mask pixels"
                for v, d in summary.label_values.items()]
        row("mask labels", "\n".join(rows))
    row("native sizes", ", ".join(f"{k} ({v})" for k, v in list(summary.native_sizes.items())[:6])
              + (" ..." if len(summary.native_sizes) > 6 else ""))
    if summary.working_size:
        row("working size", "x".join(map(str, summary.working_size)))
    row("intensity (native)", f"{summary.native_range[0]:g} .. {summary.native_range[1]:g}  "
              f"({', '.join(summary.native_dtypes)}); normalized: {summary.normalized['method']}, mean {summary.normalized['mean']}")
    cov = summary.mask_coverage
    if cov["samples_with_mask"]:
        row("mask coverage", f"foreground {100 * cov['mean']:.1f}% mean (min {100 * cov['min']:.1f}%, "
                  f"max {100 * cov['max']:.1f}%) over {cov['samples_with_mask']} samples")
    missing = summary.cases_without_mask
    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    row("without mask", f"{summary.samples_without_mask} samples; {len(missing)} cases" + (f" ({shown})" if missing else ""))
    if summary.skipped:
        t.add_row("[red]skipped[/red]", ", ".join(f"{k}: {v}" for k, v in summary.skipped.items()))
    for note, count in summary.notes.items():
        row("note", f"{note}: {count}")
    return t


def collaborative_summary(results: dict) -> Table:
    """Terminal summary of a collaborative-segmentation experiment: the mean test Dice per budget and the
    discriminator-Dice correlation."""
    from medloop.report.collaborative import dice_table

    header, rows = dice_table(results)
    table = Table(title=f"{escape(results['experiment'])}: test Dice (mean over folds)")
    keep = [0] + [i for i, h in enumerate(header) if h.endswith(": average")]
    for i in keep:
        table.add_column(escape(header[i]), justify="right")
    for row in rows:
        table.add_row(*[str(row[0])] + ["n/a" if row[i] is None else f"{row[i]:.3f}" for i in keep[1:]])
    r = results["correlation"]["pearson_r"]
    table.caption = "discriminator-Dice Pearson r " + ("n/a" if r is None else f"{r:.3f} (p {results['correlation']['p_value']:.2g})")
    return table


def experiment_summary(results: dict) -> Table:
    """Terminal summary of a generative active-learning experiment: per strategy, test AUC (mean over seeds) at
    the first round reaching each recorded stage (with the fraction actually labeled) and at the last round,
    FSL's with its 95% interval, and the savings verdict against random (the report's, with its curve-area
    interval)."""
    import numpy as np

    from medloop.report.experiment import savings_summary

    summary = savings_summary(results)
    stages = results["config"]["record_at"]
    table = Table(title=f"{escape(results['experiment'])}: test AUC (mean over seeds) @ labeled fraction")
    table.add_column("strategy")
    reached = {}
    for label, by_seed in results["tracks"].items():
        for f in stages:
            hits = [next((r for r in rounds if f in r.get("stages", [])), None) for rounds in by_seed.values()]
            hits = [h for h in hits if h is not None and h["test"].get("auc") is not None]
            if hits:
                reached[(label, f)] = (float(np.mean([h["test"]["auc"] for h in hits])),
                                       float(np.mean([h["fraction"] for h in hits])))
    shown = [f for f in stages if any((label, f) in reached for label in results["tracks"])]
    for f in shown:
        table.add_column(f">= {f * 100:.0f}%", justify="right")
    table.add_column("last round", justify="right")
    table.add_column("FSL", justify="right")
    ref = summary["reference"]
    if ref is not None:
        table.add_column(f"curve area - {ref} [95% CI]", justify="right")
    fsl = [v["test"].get("auc") for v in results["baselines"]["fsl"].values()]
    fsl = [v for v in fsl if v is not None]
    ci = summary["fsl"]["ci"]
    ci = ci if ci is not None and np.isfinite(ci).all() else None
    for label, by_seed in results["tracks"].items():
        cells = [f"{reached[(label, f)][0]:.3f} @{reached[(label, f)][1] * 100:.0f}%" if (label, f) in reached else "n/a"
                 for f in shown]
        last = [rounds[-1] for rounds in by_seed.values() if rounds and rounds[-1]["test"].get("auc") is not None]
        cells.append(f"{np.mean([r['test']['auc'] for r in last]):.3f} @{np.mean([r['fraction'] for r in last]) * 100:.0f}%"
                     if last else "n/a")
        cells.append((f"{np.mean(fsl):.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")) if fsl else "n/a")
        st = summary["strategies"].get(label)
        if label == ref:
            cells.append("reference")
        elif st is not None:
            area = "n/a" if st["diff"] is None else f"{st['diff']:+.3f}"
            have = st["ci"] is not None and np.isfinite(st["ci"]).all()
            cells.append(area + (f" [{st['ci'][0]:+.3f}, {st['ci'][1]:+.3f}]" if have else " (no interval)"))
        table.add_row(escape(label), *cells)
    notes = [f"{label}: {st['verdict']}: {st['reason']}" for label, st in summary["strategies"].items()]
    if notes:
        table.caption = escape("\n".join(notes))
        table.caption_justify = "left"
    return table
