"""`fade report`: the review page of a `fade segment --out` folder, or the report of a
`fade eval --out` folder again, as HTML that opens from disk."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import QuietOpt, log


def report(
    results_dir: Annotated[Path, typer.Argument(help="A `fade segment --out` folder (manifest.jsonl, run.json) or a `fade eval --out` folder.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The page to write. Default: RESULTS_DIR/report.html; thumbnails go beside it in PAGE_files/.", show_default=False)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Write a review page: thumbnails sorted by score, a live threshold slider, filters (anomalous,
    normal, failed inputs with their error), an overlay / original toggle and a detail view per
    image. For an eval folder: the per-class table, ROC and PRO curves, worst false positives and
    negatives. Prints the page's path."""
    from ..report import build_report, rebuild_eval_report
    from ..report.results import MANIFEST

    if (results_dir / "results.json").is_file() and not (results_dir / MANIFEST).is_file():
        page = rebuild_eval_report(results_dir, out)
        log(quiet, f"wrote {page} (evaluation report)")
    else:
        stats = build_report(results_dir, out)
        page = stats.page
        log(quiet, f"wrote {page}: {stats.images} image(s), {stats.failed} failed input(s); "
                   f"{stats.thumbnails_made} thumbnail(s) made, {stats.thumbnails_kept} kept, {stats.seconds:.1f} s")
    print(page)
