"""Reports: console tables, plots and galleries. Each method's report is its own module (``experiment``,
``collaborative``); ``medloop.methods`` says which one a run's results.json gets."""

from medloop.report.console import layout_tables, summary_table

__all__ = ["summary_table", "layout_tables"]
