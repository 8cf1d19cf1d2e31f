"""Reports: console tables, plots and galleries."""

from medloop.report.console import layout_tables, summary_table

__all__ = ["summary_table", "layout_tables", "build_any_report"]


def build_any_report(run_dir):
    """Rebuild the report of a run of either method from its results.json."""
    import json
    from pathlib import Path

    from medloop.errors import DataError

    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise DataError("no results.json here; give the --out folder of a finished `medloop run`", path, "missing")
    try:
        method = json.loads(path.read_text()).get("method", "mahapatra2018")
    except json.JSONDecodeError as exc:
        raise DataError(f"results.json is not valid JSON ({exc}); rerun `medloop run` to rewrite it", path, "corrupt") from None
    if method == "ravanbakhsh2018":
        from medloop.report.collaborative import build_collaborative_report

        return build_collaborative_report(run_dir)
    from medloop.report.experiment import build_report

    return build_report(run_dir)
