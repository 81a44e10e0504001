"""`fade report` and segment's run.json as a user runs them: pages written, one-line errors."""

import json
from pathlib import Path

import pytest

from helpers import FAST, rows, run
from report_helpers import page_data


@pytest.fixture(scope="module")
def segment_out(tmp_path_factory):
    """A segment run of three images and three bad inputs (empty, not an image, missing)."""
    from conftest import random_image
    from helpers import invoke

    tmp = tmp_path_factory.mktemp("seg")
    imgs = tmp / "imgs"
    imgs.mkdir()
    for i in range(3):
        random_image(i, (72 + 8 * i, 56)).save(imgs / f"img{i}.png")
    (imgs / "empty.png").write_bytes(b"")
    (imgs / "notes.png").write_text("not an image")
    out = tmp / "out"
    code, stdout, stderr = invoke("segment", str(imgs), str(tmp / "missing.png"), "--out", str(out), "-q", *FAST,
                                  cache=tmp / "cache")
    assert code == 1
    return out, rows(stdout), stderr


def test_segment_records_settings_and_failed_inputs_in_run_json(segment_out):
    out, results, stderr = segment_out
    record = json.loads((out / "run.json").read_text())
    assert record["images"] == 6 and record["settings"]["threshold"] == 0.5
    assert record["fingerprint"] == json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["settings"]
    lines = [f"fade: {f['input']}: {f['error']}" for f in record["failures"]]
    assert len(lines) == 3 and all(line in stderr.splitlines() for line in lines)


def test_report_writes_the_page_and_prints_its_path(capsys, monkeypatch, segment_out, tmp_path):
    out, results, _ = segment_out
    code, stdout, stderr = run(capsys, monkeypatch, "report", str(out))
    assert code == 0 and stdout.strip() == str(out / "report.html")
    assert "3 image(s), 3 failed input(s)" in stderr
    data = page_data(out / "report.html")
    assert sorted(im["score"] for im in data["images"]) == sorted(r["score"] for r in results)
    assert {Path(f["name"]).name for f in data["failed"]} == {"empty.png", "notes.png", "missing.png"}
    assert all(f["error"] for f in data["failed"])
    page = tmp_path / "review" / "line3.html"
    code, stdout, _ = run(capsys, monkeypatch, "report", str(out), "-o", str(page), "-q")
    assert code == 0 and page.is_file() and (tmp_path / "review" / "line3_files").is_dir()


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "absent", "no such folder"),
    (lambda d: d, "not a results folder"),
])
def test_report_errors_are_one_line_with_exit_2(capsys, monkeypatch, tmp_path, make, message):
    code, stdout, stderr = run(capsys, monkeypatch, "report", str(make(tmp_path)))
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("fade: error: ") and message in stderr
    assert "Traceback" not in stderr


def test_report_refuses_a_folder_as_the_page(capsys, monkeypatch, segment_out, tmp_path):
    out, _, _ = segment_out
    code, _, stderr = run(capsys, monkeypatch, "report", str(out), "-o", str(tmp_path))
    assert code == 2 and "is a folder; give the page's file name" in stderr


def test_report_rebuilds_an_eval_folders_page(capsys, monkeypatch, tmp_path):
    from report_helpers import eval_folder

    summary, crs, settings, _ = eval_folder(tmp_path)
    ev = tmp_path / "eval"
    (ev / "classes").mkdir(parents=True)
    (ev / "results.json").write_text(json.dumps({"settings": settings, "summary": summary, "classes": [{"class": "widget"}]}))
    (ev / "classes" / "widget.json").write_text(json.dumps(crs[0]))
    code, stdout, stderr = run(capsys, monkeypatch, "report", str(ev))
    assert code == 0 and stdout.strip() == str(ev / "report.html") and "Image ROC" in (ev / "report.html").read_text()


@pytest.mark.parametrize("with_cwd", [True, False])
def test_relative_output_paths_resolve_from_any_folder(capsys, monkeypatch, tmp_path, with_cwd):
    from urllib.parse import unquote

    from conftest import random_image

    work = tmp_path / "work"
    (work / "imgs").mkdir(parents=True)
    random_image(0).save(work / "imgs" / "a.png")
    monkeypatch.chdir(work)
    code, stdout, _ = run(capsys, monkeypatch, "segment", "imgs", "--out", "res", "-q", *FAST, cache=tmp_path / "cache")
    assert code == 0 and not Path(rows(stdout)[0]["outputs"]["overlay"]).is_absolute()
    if not with_cwd:  # a run.json without `cwd`: the folder is told by the rows' input and path
        record = json.loads((work / "res" / "run.json").read_text())
        del record["cwd"]
        (work / "res" / "run.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run(capsys, monkeypatch, "report", "work/res", "-q")
    assert code == 0
    (image,) = page_data(work / "res" / "report.html")["images"]
    for key in ("overlay", "mask", "input", "thumb"):
        assert (work / "res" / unquote(image[key])).is_file(), key
