"""report.md and its HTML twin (tables rendered, figures linked), shared by every report."""

from __future__ import annotations

from pathlib import Path

from medloop.storage import write_text

__all__ = ["write_report", "read_results"]

_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
          "img{max-width:100%}")


def write_report(run_dir: Path, markdown_text: str, title: str) -> Path:
    """Write ``report.md`` and ``report.html`` in ``run_dir``; returns the markdown path."""
    import html

    import markdown

    write_text(run_dir / "report.md", markdown_text)
    body = markdown.markdown(markdown_text, extensions=["tables"])
    write_text(run_dir / "report.html", f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                                        f"</title><style>{_STYLE}</style></head><body>{body}</body></html>")
    return run_dir / "report.md"


def read_results(run_dir: Path) -> dict:
    """``run_dir/results.json``; a missing or broken file is a DataError saying what to do."""
    import json

    from medloop.errors import DataError

    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise DataError("no results.json here; give the --out folder of a finished `medloop run`", path, "missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"results.json is not valid JSON ({exc}); rerun `medloop run` to rewrite it", path, "corrupt") from None
