"""`--method alfa` through the command line: detect, segment (zero- and few-shot), eval, explain."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from conftest import TINY_CONFIG, random_image
from helpers import ALFA, rows, run


def test_segment_with_alfa_writes_outputs_and_records_the_method(capsys, monkeypatch, image_dir, tmp_path):
    out = tmp_path / "out"
    (image_dir / "broken.png").write_bytes(b"not an image")
    code, stdout, stderr = run(capsys, monkeypatch, "segment", str(image_dir), "--out", str(out), "-q", *ALFA, cache=tmp_path)
    assert code == 1 and "broken.png" in stderr
    got = rows(stdout)
    assert [r["method"] for r in got] == ["alfa"] * 3 and all(r["banks"] == ["alfa@2.0.0"] for r in got)
    for r in got:
        full = np.load(r["outputs"]["map"])
        w, h = Image.open(r["path"]).size
        assert full.shape == (h, w) and full.dtype == np.float32 and 0 <= full.min() <= full.max() <= 1
        assert 0 <= r["score"] <= 1
    # detect gives the same scores as segment
    code, stdout, _ = run(capsys, monkeypatch, "detect", *[r["path"] for r in got], "-q", *ALFA, cache=tmp_path)
    assert code == 0 and [d["score"] for d in rows(stdout)] == [r["score"] for r in got]


def test_alfa_switches_and_few_shot_change_the_scores(capsys, monkeypatch, image_dir, tmp_path):
    paths = sorted(str(p) for p in image_dir.glob("*.png"))
    ref = tmp_path / "refs" / "good.png"
    ref.parent.mkdir()
    random_image(42).save(ref)
    scores = {}
    for name, extra in {"base": [], "no-aligner": ["--no-aligner"], "no-rtp": ["--no-rtp"], "r2": ["--windows", "2"],
                        "refs": ["--refs", str(ref)]}.items():
        code, stdout, stderr = run(capsys, monkeypatch, "detect", *paths[1:], "-q", *ALFA, *extra, cache=tmp_path)
        assert code == 0, stderr
        got = rows(stdout)
        scores[name] = [r["score"] for r in got]
        assert got[0]["method"] == {"base": "alfa", "no-aligner": "alfa+no-aligner", "no-rtp": "alfa+filter-none",
                                    "r2": "alfa+r2", "refs": "alfa"}[name]
        assert got[0]["shots"] == (1 if name == "refs" else 0)
    for name in ("no-aligner", "no-rtp", "r2", "refs"):
        assert scores[name] != scores["base"], name


def test_alfa_usage_errors(capsys, monkeypatch, image_dir, tmp_path):
    for extra, message in ((["--windows", "x"], "--windows"), (["--windows", "16"], "does not fit"),
                           (["--prompt-filter", "zzz"], "--prompt-filter")):
        code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "-q", *ALFA, *extra, cache=tmp_path)
        assert code == 2 and message in stderr and "Traceback" not in stderr
    code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "--method", "nope", cache=tmp_path)
    assert code == 2 and "--method nope" in stderr


def test_eval_with_alfa(capsys, monkeypatch, tmp_path):
    from fade_cli.data.demo_data import make_demo_dataset

    root = make_demo_dataset(tmp_path / "demo", classes=("tiles",), n_train=3, n_good=2, n_bad=2)
    out = tmp_path / "eval"
    code, stdout, stderr = run(capsys, monkeypatch, "eval", str(root), "--shots", "0,1", "--seeds", "1", "--out", str(out),
                               "-q", "--method", "alfa", "--windows", "2", "--model", str(TINY_CONFIG), "--pretrained", "none",
                               "--device", "cpu", cache=tmp_path)
    assert code == 0, stderr
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["method"] == "alfa+r2"
    assert result["settings"]["config"]["windows"] == [2]
    assert "tiles" in stdout


def test_explain_with_alfa_reports_contextual_scores(capsys, monkeypatch, image_dir, tmp_path, tiny_backbone):
    img = sorted(image_dir.glob("*.png"))[0]
    code, stdout, stderr = run(capsys, monkeypatch, "explain", str(img), "--class", "bottle", "--method", "alfa", "--json",
                               "--top", "3", "--model", str(TINY_CONFIG), "--pretrained", "none", "--device", "cpu",
                               cache=tmp_path)
    assert code == 0, stderr
    res = json.loads(stdout)
    assert res["banks"] == ["alfa@2.0.0"] and res["prompts"] == {"normal": 144, "anomalous": 144}
    for state in ("normal", "anomalous"):
        assert len(res[state]) == 3
        sims = [e["similarity"] for e in res[state]]
        assert sims == sorted(sims, reverse=True)
        assert all(0 <= e["contextual_score"] < 1 for e in res[state])
    # "kept" is what scoring uses for this image: the pipeline's prompt adaptation, fallback included
    from fade_cli.methods import get_method

    alfa = get_method("alfa")
    pipeline = alfa.pipeline(tiny_backbone, alfa.options({}), "bottle")
    _, _, used = pipeline.adapted_prompts(pipeline.embed([Image.open(img).convert("RGB")]).features.cls)
    assert res["kept"] == {"normal": int(used[0, :144].sum()), "anomalous": int(used[0, 144:].sum())}


def test_alfa_few_shot_and_aligner_flags(capsys, monkeypatch, image_dir, tmp_path):
    """--vision-feature window / --vision-multiplier / --ridge reach ALFA's options and its labels;
    a gem bank is refused for ALFA with one line, exit 2."""
    paths = sorted(str(p) for p in image_dir.glob("*.png"))
    ref = tmp_path / "refs" / "good.png"
    ref.parent.mkdir()
    random_image(42).save(ref)
    got = {}
    for name, extra in {"clip": [], "window": ["--vision-feature", "window"], "m1": ["--vision-multiplier", "1"],
                        "ridge": ["--ridge", "1000"]}.items():
        code, stdout, stderr = run(capsys, monkeypatch, "detect", *paths, "-q", *ALFA, "--refs", str(ref), *extra,
                                   cache=tmp_path)
        assert code == 0, stderr
        got[name] = rows(stdout)
    assert got["window"][0]["method"] == "alfa+window-bank" and got["m1"][0]["method"] == "alfa+m=1"
    assert got["ridge"][0]["method"] == "alfa+ridge=1000"
    for name in ("window", "m1", "ridge"):
        assert any(abs(a["score"] - b["score"]) > 1e-6 for a, b in zip(got["clip"], got[name])), name
    code, _, stderr = run(capsys, monkeypatch, "detect", *paths, "-q", *ALFA, "--refs", str(ref), "--vision-feature", "gem",
                          cache=tmp_path)
    assert code == 2 and stderr.strip().count("\n") == 0 and "--vision-feature gem" in stderr
    code, _, stderr = run(capsys, monkeypatch, "detect", *paths, "-q", *ALFA, "--ridge", "0", cache=tmp_path)
    assert code == 2 and "--ridge" in stderr


def test_alfa_window_bank_in_eval(capsys, monkeypatch, tmp_path):
    """fade eval with the window bank: references embedded per image and joined, one run per seed."""
    from fade_cli.data.demo_data import make_demo_dataset

    root = make_demo_dataset(tmp_path / "demo", classes=("tiles",), n_train=2, n_good=1, n_bad=1, size=64)
    code, stdout, stderr = run(capsys, monkeypatch, "eval", str(root), "--dataset", "mvtec", "--shots", "1", "--seeds", "1",
                               "--out", str(tmp_path / "ev"), "-q", *ALFA[:-2], "--vision-feature", "window",
                               cache=tmp_path)
    assert code == 0, stderr
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert result["settings"]["config"]["vision_feature"] == "window"
