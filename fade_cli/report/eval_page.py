"""`report.html` of a `fade eval --out DIR` folder: the per-class table, ROC and PRO curves as
inline SVG, and the worst false positives (good images scored highest) and false negatives
(anomalous images scored lowest) of every class as thumbnails.

The curves are the points `metrics.evaluate(..., curves=...)` saved in each run's record; a
folder written before that holds only scores, so the image ROC is then recomputed from them
and the pixel curves are left out.
"""

from __future__ import annotations

import hashlib
import time
from html import escape
from pathlib import Path

import numpy as np

from ..evaluation.metrics import roc_curve
from .page import file_url, render_page
from .results import _thumb, thumbs_dir_for, write_page
from .svg import Series, line_chart

METRIC_NAMES = {"image_auroc": "AUROC", "image_aupr": "AUPR", "image_f1_max": "F1-max",
                "pixel_auroc": "pAUROC", "pixel_f1_max": "pF1-max", "pro": "PRO"}


def run_label(run: dict) -> str:
    return f"{run['shots']}shot_seed{run['seed']}"


def _table(summary: dict) -> str:
    present = [m for m in METRIC_NAMES if any(m in v for c in summary["classes"].values() for v in c.values())]
    head = "".join(f"<th>{METRIC_NAMES[m]}</th>" for m in present)
    rows = []

    def cell(stats: dict, m: str) -> str:
        if m not in stats:
            return '<td class="num">–</td>'
        s = stats[m]
        spread = f' <span class="muted">± {s["std"]:.1f}</span>' if s["n"] > 1 else ""
        return f'<td class="num">{s["mean"]:.1f}{spread}</td>'

    for shots in summary["mean"]:
        for cls, per in summary["classes"].items():
            if shots in per:
                rows.append(f"<tr><td>{shots}</td><td>{escape(cls)}</td>" + "".join(cell(per[shots], m) for m in present) + "</tr>")
        rows.append(f'<tr class="mean"><td>{shots}</td><td>mean</td>' + "".join(cell(summary["mean"][shots], m) for m in present) + "</tr>")
    return f'<table id="metrics"><thead><tr><th>shots</th><th>class</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _image_roc_from_scores(cr: dict, label: str) -> dict | None:
    pairs = [(int(im["label"]), float(im["scores"][label])) for im in cr.get("images", []) if label in im.get("scores", {})]
    if not pairs or len({y for y, _ in pairs}) < 2:
        return None
    return roc_curve(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))


def _first_runs(cr: dict) -> dict[int, dict]:
    """The seed-0 run (else the first) of every shot count: the one plotted and inspected."""
    chosen: dict[int, dict] = {}
    for run in cr["runs"]:
        if run["shots"] not in chosen or run["seed"] == 0 and chosen[run["shots"]]["seed"] != 0:
            chosen[run["shots"]] = run
    return chosen


def _charts(class_results: list[dict], shots: int) -> str:
    specs = [("image_roc", "tpr", "image_auroc", "Image ROC", "false positive rate", "true positive rate", 1.0, True),
             ("pixel_roc", "tpr", "pixel_auroc", "Pixel ROC", "false positive rate", "true positive rate", 1.0, True),
             ("pro", "pro", "pro", "PRO (to 30 % FPR)", "false positive rate", "per-region overlap", 0.3, False)]
    charts = []
    for key, y_key, metric, title, xl, yl, x_max, diagonal in specs:
        series = []
        for cr in class_results:
            run = _first_runs(cr).get(shots)
            if run is None:
                continue
            curve = (run.get("curves") or {}).get(key)
            if curve is None and key == "image_roc":
                curve = _image_roc_from_scores(cr, run_label(run))
            if not curve:
                continue
            value = run.get("metrics", {}).get(metric)
            name = cr["class"] + (f" ({METRIC_NAMES[metric]} {value:.1f})" if isinstance(value, (int, float)) else "")
            series.append(Series(name, curve["fpr"], curve[y_key]))
        if series:
            if key == "pro":
                x_max = max(x_max, max(max(s.x) for s in series))
            charts.append(line_chart(series, title=title, x_label=xl, y_label=yl, x_max=x_max, diagonal=diagonal))
    return "".join(charts)


def _overlay_path(out_dir: Path, cls: str, label: str, image: Path) -> Path:
    return out_dir / "overlays" / cls / label / f"{image.parent.name}_{image.stem}.png"


def _worst(out_dir: Path, page_dir: Path, thumbs: Path, cr: dict, run: dict, n: int, jobs: list) -> str:
    label = run_label(run)
    scored = [im for im in cr.get("images", []) if label in im.get("scores", {})]
    fps = sorted((im for im in scored if int(im["label"]) == 0), key=lambda im: -im["scores"][label])[:n]
    fns = sorted((im for im in scored if int(im["label"]) == 1), key=lambda im: im["scores"][label])[:n]

    def tiles(items: list[dict], kind: str) -> str:
        if not items:
            return '<p class="muted">none</p>'
        out = []
        for im in items:
            path = Path(im["path"])
            overlay = _overlay_path(out_dir, cr["class"], label, path)
            source = overlay if overlay.is_file() else path
            thumb = thumbs / (hashlib.sha1(f"{source}".encode()).hexdigest()[:16] + ".jpg")
            jobs.append((source, thumb, source is path))
            caption = f"{im['scores'][label]:.3f} · {escape(path.parent.name)}/{escape(path.name)}"
            out.append(f'<figure class="tile {kind}"><a href="{file_url(source, page_dir)}">'
                       f'<img loading="lazy" src="{file_url(thumb, page_dir)}" alt="{escape(path.name)}"></a>'
                       f"<figcaption>{caption}</figcaption></figure>")
        return f'<div class="tiles">{"".join(out)}</div>'

    return (f'<h3>{escape(cr["class"])} <span class="muted">({label})</span></h3>'
            f'<h4>worst false positives (good, scored highest)</h4>{tiles(fps, "fp")}'
            f'<h4>worst false negatives (anomalous, scored lowest)</h4>{tiles(fns, "fn")}')


def write_eval_report(out_dir: Path | str, summary: dict, class_results: list[dict], settings: dict | None = None,
                      *, worst: int = 6, page: Path | str | None = None) -> Path:
    """Write OUT_DIR/report.html (and thumbnails in OUT_DIR/report_files/); return the page's path.

    `summary` is `evaluation.summarize(...)`, `class_results` the per-class records (with
    `runs` and `images`), `settings` the run's settings as results.json holds them."""
    out_dir = Path(out_dir)
    page = Path(page) if page is not None else out_dir / "report.html"
    page_dir = page.absolute().parent
    thumbs = thumbs_dir_for(page.absolute())
    settings = settings or {}
    shot_counts = sorted({run["shots"] for cr in class_results for run in cr["runs"]})
    jobs: list = []
    sections = [f'<section><h2>Per-class results</h2><p class="muted">values in percent, mean ± std over seeds</p>{_table(summary)}</section>']
    for shots in shot_counts:
        charts = _charts(class_results, shots)
        worst_html = "".join(_worst(out_dir, page_dir, thumbs, cr, run, worst, jobs)
                             for cr in class_results if (run := _first_runs(cr).get(shots)) is not None)
        sections.append(f'<section class="shots" id="shots-{shots}"><h2>{shots}-shot</h2>'
                        f'<div class="charts">{charts}</div>{worst_html}</section>')
    shown = {k: settings[k] for k in ("dataset", "root", "method", "model", "pretrained", "banks", "shots", "seeds",
                                       "eval_size", "fade_version") if k in settings}
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in shown.items())
    sections.append(f'<details id="settings"><summary>Settings</summary><table>{rows}</table></details>')
    for job in dict.fromkeys(jobs):  # a picture shown twice is made once
        _thumb(*job)
    title = f"fade eval: {settings.get('method', '?')} on {settings.get('dataset', out_dir.name)}"
    body = (f'<header><h1>{escape(title)}</h1><p class="muted">{escape(str(out_dir.absolute()))} · written '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")}</p></header><main>{"".join(sections)}</main>')
    write_page(page, render_page("eval", title, {"kind": "eval"}, body))
    return page


def rebuild_eval_report(eval_dir: Path | str, page: Path | str | None = None) -> Path:
    """report.html again from a finished `fade eval --out DIR` folder (results.json and classes/*.json)."""
    import json

    from .results import ReportError

    eval_dir = Path(eval_dir)
    try:
        results = json.loads((eval_dir / "results.json").read_text(encoding="utf-8"))
        records = [json.loads((eval_dir / "classes" / f"{c['class']}.json").read_text(encoding="utf-8"))
                   for c in results["classes"]]
    except FileNotFoundError as exc:
        raise ReportError(f"{exc.filename}: missing; is {eval_dir} a complete `fade eval --out` folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ReportError(f"{eval_dir}: results.json or a class record is not what `fade eval` writes ({exc})") from None
    return write_eval_report(eval_dir, results["summary"], records, results.get("settings"), page=page)
