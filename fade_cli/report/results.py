"""Review page for a `fade segment --out DIR` run: reading the run and writing the page.

A run folder holds `manifest.jsonl` (one JSON row per finished image, with its outputs) and,
from `fade segment`, `run.json` (the run's settings and its failed inputs with their error
lines). `build_report` turns these into one HTML file that opens from disk: the rows are
inlined as JSON, the page's script and styles are inlined from package files, and small JPEG
thumbnails go to a folder beside it (`NAME_files/`), loaded only as they scroll into view, so
the page stays light at thousands of images. Full-size overlays, inputs and masks are linked
by relative path, not copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import FadeError
from ..data.io import atomic_write, load_image
from .page import file_url, render_page

MANIFEST = "manifest.jsonl"
RUN_RECORD = "run.json"
THUMB_SIZE = 192  # px, longest side; about 2x the grid's cells on a normal screen, 6-15 kB as JPEG


class ReportError(FadeError):
    """A folder or file cannot be made into a report (CLI exit status 2)."""


@dataclass
class ReportStats:
    """What `build_report` wrote: the page, how many images and failures, thumbnails made."""

    page: Path
    images: int
    failed: int
    thumbnails_made: int
    thumbnails_kept: int
    seconds: float


def read_run(results_dir: Path) -> tuple[list[dict], dict]:
    """(rows, run record) of a segment run folder; rows are the manifest's latest row per input.

    A manifest can hold rows of several runs (a run without --resume appends); the newest row
    of an input wins, as it describes the files now on disk."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ReportError(f"{results_dir}: no such folder")
    manifest = results_dir / MANIFEST
    record_path = results_dir / RUN_RECORD
    if not manifest.is_file() and not record_path.is_file():
        raise ReportError(f"{results_dir}: not a results folder (no {MANIFEST}; write one with `fade segment IMAGES --out {results_dir}`)")
    record: dict = {}
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReportError(f"{record_path}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ReportError(f"{record_path}: expected a JSON object")
    latest: dict[str, dict] = {}
    if manifest.is_file():
        with open(manifest, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by an interrupted run; that image was redone or is missing
                if isinstance(row, dict) and "score" in row and ("input" in row or "path" in row):
                    latest[row.get("input") or row["path"]] = row
    rows = list(latest.values())
    if not rows and not record.get("failures"):
        raise ReportError(f"{manifest}: no finished images recorded")
    return rows, record


def write_page(page: Path, html: str) -> None:
    try:
        atomic_write(page, lambda fh: fh.write(html.encode("utf-8")))
    except OSError as exc:
        raise ReportError(f"{page}: cannot write ({exc.strerror})") from None


def default_page_path(results_dir: Path) -> Path:
    return Path(results_dir) / "report.html"


def thumbs_dir_for(page: Path) -> Path:
    """Thumbnails live beside the page in `STEM_files/`, as browsers save pages."""
    return page.with_name(page.stem + "_files")


def _thumb(source: Path, dest: Path, as_input: bool) -> str:
    """Write a JPEG thumbnail of `source` unless an up-to-date one exists: 'made', 'kept' or 'failed'."""
    try:
        if dest.is_file() and dest.stat().st_mtime >= source.stat().st_mtime:
            return "kept"
        image = load_image(source) if as_input else Image.open(source)
        with image:
            image.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG inputs decode at reduced size
            small = image.convert("RGB")
            small.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
        atomic_write(dest, lambda fh: small.save(fh, format="JPEG", quality=82, optimize=True))
        return "made"
    except Exception:  # noqa: BLE001 - any unreadable picture just shows without its thumbnail
        return "failed"


def _display_names(paths: list[str]) -> list[str]:
    """Paths relative to the inputs' common folder (what users recognise), else as given."""
    if not paths:
        return []
    try:
        base = os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:
        return paths
    return [os.path.relpath(p, base) if base else p for p in paths]


def _run_folder(row: dict, record: dict) -> Path | None:
    """The working folder of the run that wrote `row`: relative output paths are relative to it.

    run.json names it; older runs' rows still tell it, as `input` (absolute) ends with `path`."""
    if record.get("cwd"):
        return Path(record["cwd"])
    given, absolute = Path(row.get("path", "")), Path(row.get("input", ""))
    if given.is_absolute() or not absolute.is_absolute() or len(absolute.parts) <= len(given.parts):
        return None
    base = absolute.parents[len(given.parts) - 1]
    return base if base / given == absolute else None


def _image_entry(row: dict, name: str, page_dir: Path, thumbs: Path, jobs: list, record: dict) -> dict:
    base = _run_folder(row, record)
    outputs = {k: (base / v if base is not None and not Path(v).is_absolute() else Path(v))
               for k, v in (row.get("outputs") or {}).items() if v}
    source = Path(row.get("input") or row["path"])
    key = hashlib.sha1(str(source).encode()).hexdigest()[:16]
    entry = {"name": name, "score": float(row["score"])}
    for kind in ("overlay", "mask", "map"):
        if kind in outputs:
            entry[kind] = file_url(outputs[kind], page_dir)
    entry["input"] = file_url(source, page_dir)
    overlay = outputs.get("overlay")
    if overlay is not None and overlay.is_file():
        jobs.append((overlay, thumbs / f"{key}.o.jpg", False))
        entry["thumb"] = file_url(thumbs / f"{key}.o.jpg", page_dir)
    if source.is_file():
        jobs.append((source, thumbs / f"{key}.i.jpg", True))
        entry["thumb_input"] = file_url(thumbs / f"{key}.i.jpg", page_dir)
    if isinstance(row.get("regions"), list):
        entry["regions"] = row["regions"]
    entry["fields"] = {k: v for k, v in row.items()
                       if k not in ("path", "input", "outputs", "regions", "score", "anomalous", "threshold", "settings")}
    return entry


def build_report(results_dir: Path | str, out: Path | str | None = None, *, title: str | None = None,
                 workers: int | None = None) -> ReportStats:
    """Write the review page of a segment run (default RESULTS_DIR/report.html) and its thumbnails."""
    t0 = time.perf_counter()
    results_dir = Path(results_dir)
    rows, record = read_run(results_dir)
    page = Path(out) if out is not None else default_page_path(results_dir)
    if page.is_dir():
        raise ReportError(f"{page}: is a folder; give the page's file name, e.g. {page / 'report.html'}")
    page_dir = page.absolute().parent
    thumbs = thumbs_dir_for(page.absolute())
    rows.sort(key=lambda r: -float(r["score"]))
    names = _display_names([r.get("input") or r["path"] for r in rows])
    jobs: list = []
    images = [_image_entry(r, n, page_dir, thumbs, jobs, record) for r, n in zip(rows, names)]
    failed = [{"name": f.get("input", "?"), "error": f.get("error", "")} for f in record.get("failures", [])]
    for entry in images:  # outputs moved or deleted since the run: say so instead of a broken picture
        if "thumb" not in entry:
            entry["missing"] = "overlay file missing"
    try:
        thumbs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{thumbs}: cannot create ({exc.strerror})") from None
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2) + 2)) as pool:
        outcomes = list(pool.map(lambda job: _thumb(*job), jobs))  # PIL decodes outside the GIL
    thresholds = [float(r["threshold"]) for r in rows if isinstance(r.get("threshold"), (int, float))]
    settings = record.get("settings") or {}
    data = {
        "kind": "segment",
        "title": title or f"fade review: {results_dir.absolute().name}",
        "source": str(results_dir.absolute()),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "threshold": settings.get("threshold", thresholds[0] if thresholds else 0.5),
        "pixel_threshold": settings.get("pixel_threshold"),
        "settings": settings,
        "runs": sorted({r.get("settings") for r in rows if r.get("settings")}),
        "images": images,
        "failed": failed,
    }
    write_page(page, render_page("results", data["title"], data))
    return ReportStats(page, len(images), len(failed), outcomes.count("made"), outcomes.count("kept"),
                       time.perf_counter() - t0)
