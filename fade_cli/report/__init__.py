"""Review pages in the browser: `build_report` for a `fade segment --out` run, `write_eval_report`
for a `fade eval --out` folder. Pages are self-contained HTML (inline script, styles and data)
with thumbnails in a folder beside them; they open from disk with no network."""

from .eval_page import rebuild_eval_report, write_eval_report
from .results import ReportError, ReportStats, build_report, read_run

__all__ = ["ReportError", "ReportStats", "build_report", "read_run", "rebuild_eval_report", "write_eval_report"]
