"""Assembling a self-contained HTML page from the package's template, styles and script.

Nothing is fetched at view time: CSS and JavaScript are inlined from `fade_cli/report/assets`
and the page's data is one inline JSON block, so a page opens from disk with no network.
"""

from __future__ import annotations

import html
import json
import os
import re
from importlib import resources
from pathlib import Path
from urllib.parse import quote


def asset(name: str) -> str:
    """Text of a packaged asset file (assets/NAME)."""
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def file_url(target: Path, page_dir: Path) -> str:
    """A link from a page in `page_dir` to `target`: relative when possible (the folder can be
    moved or served as a whole), else an absolute file:// URL."""
    target = Path(target).absolute()
    try:
        rel = os.path.relpath(target, page_dir)
    except ValueError:  # another drive on Windows
        return target.as_uri()
    return quote(Path(rel).as_posix())


def json_for_script(data) -> str:
    """JSON safe inside <script>: '<' escaped so no '</script>' or '<!--' can end the block."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def render_page(kind: str, title: str, data, body: str = "") -> str:
    """The page `kind` (template assets/KIND.html with KIND.js, common.css and KIND.css) filled in."""
    parts = {
        "{{title}}": html.escape(title),
        "{{css}}": asset("common.css") + _optional(f"{kind}.css"),
        "{{js}}": _optional(f"{kind}.js"),
        "{{data}}": json_for_script(data),
        "{{body}}": body,
    }
    # one pass over the template only: text put in (file names, JSON) is never scanned for markers
    return re.sub(r"\{\{\w+\}\}", lambda m: parts.get(m.group(0), m.group(0)), asset(f"{kind}.html"))


def _optional(name: str) -> str:
    try:
        return asset(name)
    except FileNotFoundError:
        return ""
