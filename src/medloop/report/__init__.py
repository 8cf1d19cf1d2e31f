"""Reports: console tables, plots and galleries."""

from medloop.report.console import layout_tables, summary_table

__all__ = ["summary_table", "layout_tables"]
