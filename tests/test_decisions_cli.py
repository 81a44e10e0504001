"""Calibrated thresholds, regions and CSV rows as a user runs `fade detect` / `fade segment`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fade_cli.decisions.calibration import NormalScores, quantile_threshold
from fade_cli.decisions.formats import SEGMENT_COLUMNS
from fade_cli.decisions.regions import find_regions

from conftest import random_image
from helpers import FAST, rows, run


@pytest.fixture()
def refs(tmp_path: Path) -> Path:
    d = tmp_path / "refs"
    d.mkdir()
    for i in range(4):
        random_image(60 + i, (64, 56)).save(d / f"ref{i}.png")
    return d


def test_threshold_auto_is_the_quantile_of_leave_one_out_scores(capsys, monkeypatch, image_dir, refs, tmp_path):
    cache = tmp_path / "cache"
    loo = []
    ref_files = sorted(refs.iterdir())
    for i, ref in enumerate(ref_files):  # each reference scored against the others, one run each
        others = tmp_path / f"others{i}"
        others.mkdir()
        for other in ref_files:
            if other != ref:
                (others / other.name).write_bytes(other.read_bytes())
        code, out, _ = run(capsys, monkeypatch, "detect", str(ref), "--refs", str(others), "-q", *FAST, cache=cache)
        assert code == 0
        loo.append(rows(out)[0]["score"])
    expected = quantile_threshold(loo, 0.05, upper=1.0)
    code, out, err = run(capsys, monkeypatch, "detect", str(image_dir), "--refs", str(refs), "--threshold", "auto",
                         "--false-alarm-rate", "0.05", "--normalised-score", *FAST, cache=cache)
    assert code == 0, err
    results = rows(out)
    assert len(results) == 3
    for r in results:
        assert r["threshold"] == pytest.approx(expected.value, abs=2e-6)
        assert r["threshold_source"] == "refs:leave-one-out" and r["false_alarm_rate"] == 0.05
        assert r["anomalous"] == (r["score"] >= r["threshold"])
        assert (r["normalised_score"] >= 0.5) == r["anomalous"]
    assert err.count("warning:") == 1 and "too few for a false-alarm rate of 0.05" in err
    assert "exponential-tail estimate from 4 normal images" in err


def test_fixed_thresholds_still_work_and_say_so(capsys, monkeypatch, image_dir, tmp_path):
    code, out, _ = run(capsys, monkeypatch, "detect", str(image_dir), "--threshold", "0.2", "-q", *FAST, cache=tmp_path)
    assert code == 0
    for r in rows(out):
        assert r["threshold"] == 0.2 and r["threshold_source"] == "fixed" and "false_alarm_rate" not in r
        assert r["anomalous"] == (r["score"] >= 0.2)


def test_segment_pixel_threshold_auto_masks_and_regions(capsys, monkeypatch, image_dir, refs, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, monkeypatch, "segment", str(image_dir), "--out", str(out_dir), "--refs", str(refs),
                         "--pixel-threshold", "auto", "--false-alarm-rate", "0.2", "--min-region-area", "3", *FAST,
                         cache=tmp_path / "cache")
    assert code == 0, err
    results = rows(out)
    assert {r["pixel_threshold_source"] for r in results} == {"refs:leave-one-out"}
    assert {r["threshold_source"] for r in results} == {"fixed"}
    assert "pixel threshold" in err and "empirical estimate from" in err
    listed = 0
    for r in results:
        full = np.load(r["outputs"]["map"], allow_pickle=False)
        mask = np.asarray(Image.open(r["outputs"]["mask"])) == 255
        np.testing.assert_array_equal(mask, full >= r["pixel_threshold"])
        assert r["regions"] == [g.as_dict() for g in find_regions(mask, full, min_area=3)]
        assert all(g["area"] >= 3 for g in r["regions"])
        listed += len(r["regions"])
    assert listed > 0  # at a 20 % pixel false-alarm rate the random test images have regions


def test_csv_rows_match_the_jsonl_rows(capsys, monkeypatch, image_dir, tmp_path):
    args = ["segment", str(image_dir), "--pixel-threshold", "0.3", "-q", *FAST]
    code, jsonl, _ = run(capsys, monkeypatch, *args, "--out", str(tmp_path / "a"), cache=tmp_path / "cache")
    assert code == 0
    code, table, _ = run(capsys, monkeypatch, *args, "--out", str(tmp_path / "b"), "--format", "csv", cache=tmp_path / "cache")
    assert code == 0
    parsed = list(csv.reader(io.StringIO(table)))
    assert parsed[0] == list(SEGMENT_COLUMNS) and all(len(r) == len(SEGMENT_COLUMNS) for r in parsed)
    records = list(csv.DictReader(io.StringIO(table)))
    for rec, row in zip(records, rows(jsonl), strict=True):
        assert rec["path"] == row["path"] and float(rec["score"]) == row["score"]
        assert rec["anomalous"] == str(row["anomalous"]).lower() and float(rec["pixel_threshold"]) == 0.3
        assert int(rec["regions"]) == len(row["regions"])
        if row["regions"]:
            big = max(row["regions"], key=lambda g: g["area"])
            assert [int(rec[c]) for c in ("largest_x0", "largest_y0", "largest_x1", "largest_y1")] == big["bbox"]
        assert Path(rec["mask"]).name == Path(row["outputs"]["mask"]).name


@pytest.mark.parametrize("args, message", [
    (["--threshold", "abc"], "--threshold abc: expected a number or auto"),
    (["--threshold", "nan"], "--threshold nan: expected a finite number"),
    (["--false-alarm-rate", "0.05"], "--false-alarm-rate applies to --threshold auto"),
    (["--normalised-score"], "--normalised-score applies to --threshold auto"),
    (["--threshold", "auto", "--false-alarm-rate", "2"], "--false-alarm-rate 2.0: expected a number between 0 and 1"),
    (["--threshold", "auto"], "--threshold auto needs normal scores"),
    (["--format", "xml"], "--format xml: expected jsonl or csv"),
])
def test_decision_flag_mistakes_give_one_line_and_exit_2(capsys, monkeypatch, image_dir, tmp_path, args, message):
    code, out, err = run(capsys, monkeypatch, "detect", str(image_dir), *args, *FAST, cache=tmp_path)
    assert code == 2 and out == ""
    lines = [l for l in err.splitlines() if l.startswith("fade: error")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_bank_build_calibrates_by_leave_one_out_and_detect_uses_it(capsys, monkeypatch, image_dir, refs, tmp_path):
    import json

    from fade_cli.methods.memory import MemoryBank

    cache, bank = tmp_path / "cache", tmp_path / "good.fadebank"
    code, _, err = run(capsys, monkeypatch, "bank", "build", str(refs), "-o", str(bank), *FAST, cache=cache)
    assert code == 0, err
    assert "4 normal image scores (leave-one-out)" in err
    stored = NormalScores.of_bank(MemoryBank.load(bank))
    assert stored is not None and stored.image.shape == (4,) and stored.pixels.shape[0] == 4
    code, out, _ = run(capsys, monkeypatch, "bank", "info", str(bank), cache=cache)
    assert json.loads(out)["calibration"]["image_scores"] == 4
    args = ["detect", str(image_dir), "--threshold", "auto", "--false-alarm-rate", "0.1", "-q", *FAST]
    code, from_bank, _ = run(capsys, monkeypatch, *args, "--bank", str(bank), cache=cache)
    assert code == 0
    code, from_refs, _ = run(capsys, monkeypatch, *args, "--refs", str(refs), cache=cache)
    assert code == 0
    for a, b in zip(rows(from_bank), rows(from_refs), strict=True):
        assert a["threshold_source"] == f"bank:{bank}" and b["threshold_source"] == "refs:leave-one-out"
        assert a["threshold"] == pytest.approx(b["threshold"], abs=2e-6)
        assert a["threshold"] == round(quantile_threshold(stored.image, 0.1, upper=1.0).value, 6)
    code, _, _ = run(capsys, monkeypatch, "bank", "build", str(refs), "-o", str(tmp_path / "plain.npz"), "--no-calibrate",
                     "-q", *FAST, cache=cache)
    assert code == 0 and NormalScores.of_bank(MemoryBank.load(tmp_path / "plain.npz")) is None
    code, _, err = run(capsys, monkeypatch, *args, "--bank", str(tmp_path / "plain.npz"), cache=cache)
    assert code == 2 and "holds no normal scores" in err


def test_calibrate_writes_zero_shot_normal_scores_for_detect(capsys, monkeypatch, image_dir, refs, tmp_path):
    import json

    cache, cal = tmp_path / "cache", tmp_path / "good.json"
    code, _, err = run(capsys, monkeypatch, "calibrate", str(refs), "-o", str(cal), *FAST, cache=cache)
    assert code == 0, err
    data = json.loads(cal.read_text())
    assert data["kind"] == "fade-calibration" and data["how"] == "zero-shot" and len(data["pixel_scores"]) == 4
    code, out, _ = run(capsys, monkeypatch, "detect", str(refs), "-q", *FAST, cache=cache)
    assert data["image_scores"] == pytest.approx([r["score"] for r in rows(out)], abs=2e-6)
    code, out, err = run(capsys, monkeypatch, "detect", str(image_dir), "--threshold", "auto", "--calibration", str(cal),
                         "-q", *FAST, cache=cache)
    assert code == 0, err
    expected = round(quantile_threshold(data["image_scores"], 0.01, upper=1.0).value, 6)
    assert {r["threshold"] for r in rows(out)} == {expected}
    assert {r["threshold_source"] for r in rows(out)} == {f"calibration:{cal}"}
    assert err.count("warning:") == 1  # 4 images are too few for 1 %: said once by the run, even with -q
    # zero-shot scores are refused for a few-shot run; references are refused as calibration images
    code, _, err = run(capsys, monkeypatch, "detect", str(image_dir), "--threshold", "auto", "--calibration", str(cal),
                       "--refs", str(refs), "-q", *FAST, cache=cache)
    assert code == 2 and "zero-shot normal scores for a few-shot run" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, monkeypatch, "calibrate", str(refs), "--refs", str(refs), "-o", str(tmp_path / "x.json"),
                       "-q", *FAST, cache=cache)
    assert code == 2 and "is one of the references" in err and not (tmp_path / "x.json").exists()


def test_eval_reports_the_operating_point_of_thresholds_from_train_good(capsys, monkeypatch, tmp_path):
    import json

    from fade_cli.data.demo_data import make_demo_dataset

    demo = make_demo_dataset(tmp_path / "demo", classes=("tiles",), n_train=5, n_good=4, n_bad=3, size=64)
    out = tmp_path / "ev"
    code, table, err = run(capsys, monkeypatch, "eval", str(demo), "--shots", "0,1", "--seeds", "2", "--out", str(out),
                           "--eval-size", "32", "--false-alarm-rate", "0.2", "--calibration-images", "4", "-q", *FAST,
                           cache=tmp_path / "cache")
    assert code == 0, err
    assert table.splitlines()[0].endswith("| PRO | FAR | Miss |")
    runs_ = json.loads((out / "results.json").read_text())["classes"][0]["runs"]
    per_image = list(csv.DictReader(open(out / "per_image.csv")))
    for r in runs_:
        op = r["operating_point"]
        assert op["false_alarm_rate_asked"] == 0.2
        sampled = {"000.png", "001.png", "003.png", "004.png"}  # 4 of 5, spread evenly; a run's references left out
        assert op["image"]["normal"] == 4 - sum(Path(p).name in sampled for p in r["references"])
        label = f"{r['shots']}shot_seed{r['seed']}"
        sel = [(int(x["label"]), float(x["score"])) for x in per_image if x["run"] == label]
        t = op["image"]["threshold"]
        good = [s for y, s in sel if y == 0]
        bad = [s for y, s in sel if y == 1]
        assert op["image"]["false_alarm_rate"] == pytest.approx(np.mean([s >= t for s in good]), abs=1e-6)
        assert op["image"]["miss_rate"] == pytest.approx(np.mean([s < t for s in bad]), abs=1e-6)
        assert r["metrics"]["far"] == pytest.approx(100 * op["image"]["false_alarm_rate"], abs=1e-3)
        assert "pixel" in op and 0.0 <= op["pixel"]["false_alarm_rate"] <= 1.0
    code, _, _ = run(capsys, monkeypatch, "eval", str(demo), "--shots", "0", "--out", str(tmp_path / "off"),
                     "--eval-size", "32", "--calibration-images", "0", "-q", *FAST, cache=tmp_path / "cache")
    off = json.loads((tmp_path / "off" / "results.json").read_text())["classes"][0]["runs"][0]
    assert code == 0 and "operating_point" not in off and "far" not in off["metrics"]
