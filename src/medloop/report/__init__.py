"""Reports: console tables, plots and galleries."""

from medloop.report.console import layout_tables, summary_table

__all__ = ["summary_table", "layout_tables", "build_any_report"]


def build_any_report(run_dir):
    """Rebuild the report of a run of either method from its results.json."""
    from medloop.report.html import read_results

    if read_results(run_dir).get("method") == "ravanbakhsh2018":
        from medloop.report.collaborative import build_collaborative_report

        return build_collaborative_report(run_dir)
    from medloop.report.experiment import build_report

    return build_report(run_dir)
