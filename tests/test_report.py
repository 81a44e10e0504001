"""Review pages without a browser: what the page holds, its links, thumbnails, errors, curves."""

import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from fade_cli.evaluation import metrics
from fade_cli.report import ReportError, build_report, read_run, write_eval_report
from fade_cli.report.page import json_for_script
from fade_cli.report.synthetic import write_synthetic_run

from report_helpers import eval_folder, page_data


def test_page_holds_every_row_sorted_by_score_with_links_that_resolve(tmp_path):
    run = write_synthetic_run(tmp_path / "run", 30, failed=2)
    stats = build_report(run)
    assert stats.page == run / "report.html" and stats.images == 30 and stats.failed == 2
    data = page_data(stats.page)
    manifest = [json.loads(l) for l in (run / "manifest.jsonl").read_text().splitlines()]
    assert [im["score"] for im in data["images"]] == sorted((r["score"] for r in manifest), reverse=True)
    assert {f["error"] for f in data["failed"]} == {"not an image, or an unsupported format"}
    assert data["threshold"] == 0.5 and data["settings"]["model"] == "synthetic"
    for im in data["images"]:
        for key in ("thumb", "thumb_input", "overlay", "input", "mask"):
            target = (run / unquote(im[key])).resolve()
            assert target.is_file(), (key, im[key])
        thumb = Image.open(run / unquote(im["thumb"]))
        assert thumb.format == "JPEG" and max(thumb.size) <= 192
        assert "regions" in im and "score" not in im["fields"] and im["fields"]["method"] == "fade"


def test_page_is_self_contained(tmp_path):
    page = build_report(write_synthetic_run(tmp_path / "run", 3)).page
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=|<link[^>]+stylesheet|@import|https?://(?!www\.w3\.org/2000/svg)", text)
    assert "function openDetail" in text and ".card" in text  # script and styles are inline


def test_thumbnails_are_kept_when_up_to_date_and_remade_when_the_source_changes(tmp_path):
    run = write_synthetic_run(tmp_path / "run", 4)
    first = build_report(run)
    assert first.thumbnails_made == 8 and first.thumbnails_kept == 0
    second = build_report(run)
    assert second.thumbnails_made == 0 and second.thumbnails_kept == 8
    overlay = next(run.glob("*.overlay.png"))
    Image.new("RGB", (64, 64), (255, 0, 0)).save(overlay)
    later = overlay.stat().st_mtime + 5  # coarse file-system clocks: make the change unambiguous
    import os
    os.utime(overlay, (later, later))
    third = build_report(run)
    assert third.thumbnails_made == 1 and third.thumbnails_kept == 7


def test_other_output_path_puts_thumbnails_beside_it(tmp_path):
    run = write_synthetic_run(tmp_path / "run", 2)
    page = tmp_path / "elsewhere" / "review.html"
    stats = build_report(run, page)
    assert stats.page == page and (tmp_path / "elsewhere" / "review_files").is_dir()
    for im in page_data(page)["images"]:
        assert (page.parent / unquote(im["thumb"])).is_file() and (page.parent / unquote(im["input"])).is_file()


def test_latest_row_per_input_wins_and_torn_lines_are_skipped(tmp_path):
    run = write_synthetic_run(tmp_path / "run", 2)
    rows = [json.loads(l) for l in (run / "manifest.jsonl").read_text().splitlines()]
    newer = {**rows[0], "score": 0.987}
    with open(run / "manifest.jsonl", "a") as fh:
        fh.write(json.dumps(newer) + "\n" + '{"path": "/torn')
    got, _ = read_run(run)
    assert len(got) == 2 and {r["score"] for r in got} == {0.987, rows[1]["score"]}


def test_names_with_markup_cannot_break_the_page(tmp_path):
    run = write_synthetic_run(tmp_path / "run", 1)
    record = json.loads((run / "run.json").read_text())
    record["failures"] = [{"input": "</script><script>alert(1)</script>.png", "error": "<b>bad</b>"}]
    (run / "run.json").write_text(json.dumps(record))
    page = build_report(run).page
    assert page_data(page)["failed"][0]["name"] == "</script><script>alert(1)</script>.png"
    assert "</script><script>alert" not in page.read_text()
    assert json.loads(json_for_script({"a": "<!-- </script>"})) == {"a": "<!-- </script>"}


@pytest.mark.parametrize("setup, message", [
    (lambda d: d / "nope", "no such folder"),
    (lambda d: d, "not a results folder"),
    (lambda d: (d / "manifest.jsonl").write_text("") * 0 or d, "no finished images"),
])
def test_bad_results_folders_are_one_line_errors(tmp_path, setup, message):
    target = setup(tmp_path)
    with pytest.raises(ReportError, match=message) as exc:
        build_report(target)
    assert "\n" not in str(exc.value)


def test_broken_run_record_is_named(tmp_path):
    run = write_synthetic_run(tmp_path / "run", 1)
    (run / "run.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"run\.json: not valid JSON"):
        build_report(run)


def test_missing_overlay_is_shown_as_missing_not_as_a_broken_picture(tmp_path):
    run = write_synthetic_run(tmp_path / "run", 2)
    for p in run.glob("*.overlay.png"):
        p.unlink()
    data = page_data(build_report(run).page)
    assert all(im["missing"] == "overlay file missing" and "thumb" not in im for im in data["images"])


# ----------------------------------------------------------------------------- curves


def slow_roc(labels, scores):
    """Every distinct threshold t, high to low: (FPR, TPR) of 'score >= t', from (0, 0)."""
    pts = [(0.0, 0.0)]
    for t in sorted(set(scores), reverse=True):
        pred = scores >= t
        pts.append(((pred & (labels == 0)).sum() / (labels == 0).sum(), (pred & (labels == 1)).sum() / (labels == 1).sum()))
    return pts


def test_image_roc_points_are_the_curve_at_every_threshold():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60), 1)  # ties
    curves = {}
    metrics.evaluate(labels, scores, curves=curves)
    expect = slow_roc(labels, scores)
    assert curves["image_roc"]["fpr"] == pytest.approx([p[0] for p in expect], abs=1e-5)
    assert curves["image_roc"]["tpr"] == pytest.approx([p[1] for p in expect], abs=1e-5)


def trapezoid(x, y):
    x, y = np.asarray(x), np.asarray(y)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def test_pro_and_pixel_curves_give_back_the_metrics():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 24, 24), dtype=bool)
    masks[0, 3:9, 4:12] = masks[1, 10:20, 10:14] = masks[2, 0:3, 0:3] = True
    maps = rng.random((4, 24, 24)) + 0.6 * masks
    curves = {}
    out = metrics.evaluate(np.array([1, 1, 1, 0]), rng.random(4), masks, maps, curves=curves)
    pro = curves["pro"]
    assert pro["fpr"][0] == 0 and pro["fpr"][-1] == pytest.approx(0.3) and np.all(np.diff(pro["fpr"]) >= 0)
    # thinned to a few hundred of 2304 points, the curves still give the metrics' areas
    assert len(pro["fpr"]) < 500 and len(curves["pixel_roc"]["fpr"]) < 500
    assert 100 * trapezoid(pro["fpr"], pro["pro"]) / 0.3 == pytest.approx(out["pro"], abs=0.3)
    assert 100 * trapezoid(curves["pixel_roc"]["fpr"], curves["pixel_roc"]["tpr"]) == pytest.approx(out["pixel_auroc"], abs=0.3)


def test_curve_points_keep_short_curves_and_the_corners_of_long_ones():
    x = np.array([0, 0, 0.5, 1.0])
    assert metrics.curve_points(x, x) == (x.tolist(), x.tolist())
    xs = np.concatenate([np.zeros(500), np.linspace(0, 1, 5000)])  # a vertical run, then a long ramp
    ys = np.concatenate([np.linspace(0, 0.8, 500), np.full(5000, 0.8)])
    tx, ty = metrics.curve_points(xs, ys, n=50)
    assert len(tx) < 300 and (tx[0], ty[0]) == (0, 0) and (tx[-1], ty[-1]) == (1, 0.8)
    assert (0.0, 0.8) in set(zip(tx, ty))  # the corner of the staircase survives


# ----------------------------------------------------------------------------- eval page


@pytest.mark.parametrize("with_curves", [True, False])
def test_eval_report_has_table_curves_and_worst_cases(tmp_path, with_curves):
    summary, crs, settings, images = eval_folder(tmp_path, with_curves)
    page = write_eval_report(tmp_path / "eval", summary, crs, settings, worst=3)
    text = page.read_text()
    assert page == tmp_path / "eval" / "report.html"
    assert f"{summary['classes']['widget']['0']['image_auroc']['mean']:.1f}" in text
    assert text.count("<svg") == 1 and "Image ROC" in text and "<polyline" in text  # image-level data only
    by_score = sorted(images, key=lambda im: im["scores"]["0shot_seed0"])
    worst_fp = [Path(im["path"]).name for im in sorted((i for i in images if i["label"] == 0),
                                                       key=lambda im: -im["scores"]["0shot_seed0"])[:3]]
    worst_fn = [Path(im["path"]).name for im in by_score if im["label"] == 1][:3]
    fp_block = text.split("worst false positives")[1].split("worst false negatives")[0]
    fn_block = text.split("worst false negatives")[1]
    assert re.findall(r'alt="([^"]+)"', fp_block) == worst_fp
    assert re.findall(r'alt="([^"]+)"', fn_block) == worst_fn
    for src in re.findall(r'<img loading="lazy" src="([^"]+)"', text):
        assert (page.parent / unquote(src)).is_file()


def test_eval_report_is_rebuilt_from_an_eval_folder(tmp_path):
    from fade_cli.report import rebuild_eval_report

    summary, crs, settings, _ = eval_folder(tmp_path)
    out = tmp_path / "eval"
    (out / "classes").mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"settings": settings, "summary": summary,
                                                  "classes": [{"class": "widget", "runs": []}]}))
    with pytest.raises(ReportError, match=r"widget\.json: missing"):
        rebuild_eval_report(out)
    (out / "classes" / "widget.json").write_text(json.dumps(crs[0]))
    page = rebuild_eval_report(out, tmp_path / "again.html")
    assert page == tmp_path / "again.html" and "Image ROC" in page.read_text()
    assert (tmp_path / "again_files").is_dir()
