"""`fade eval` end to end on the synthetic MVTec-layout set with the tiny model."""

import csv
import json

import numpy as np
import pytest

from fade_cli.data.demo_data import make_demo_dataset
from fade_cli.evaluation.metrics import image_auroc

from conftest import TINY_CONFIG
from helpers import run

FAST = ["--model", str(TINY_CONFIG), "--pretrained", "none", "--device", "cpu", "--scales", "32,64", "--cls-scale", "32",
        "--seg-prompts", "winclip", "--eval-size", "64", "-q"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("d") / "demo", n_train=6)


def test_eval_tables_files_and_resume(capsys, monkeypatch, demo, tmp_path):
    monkeypatch.setenv("FADE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    code, stdout, stderr = run(capsys, monkeypatch, "eval", str(demo), "--dataset", "mvtec", "--shots", "0,1,2",
                               "--seeds", "3", "--out", str(out), "--save-maps", *FAST)
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].startswith("| shots | class | AUROC | AUPR | F1-max | pAUROC | pF1-max | PRO |")
    assert sum("**mean**" in l for l in lines) == 3 and sum("| tiles |" in l for l in lines) == 3
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["shots"] == [0, 1, 2] and results["settings"]["banks"] == ["winclip@1.0.0"]
    by_class = {c["class"]: c for c in results["classes"]}
    assert len(by_class["tiles"]["runs"]) == 1 + 3 + 3  # 0-shot once, 3 seeds for 1 and 2 shots
    for run_ in by_class["tiles"]["runs"]:
        assert len(run_["references"]) == run_["shots"]
        for v in run_["metrics"].values():
            assert 0.0 <= v <= 100.0
    # image AUROC in the table equals the AUROC of the per-image scores
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 2 * 9 * 7
    for run_ in by_class["weave"]["runs"]:
        label = f"{run_['shots']}shot_seed{run_['seed']}"
        sel = [r for r in rows if r["class"] == "weave" and r["run"] == label]
        auroc = 100 * image_auroc(np.array([int(r["label"]) for r in sel]), np.array([float(r["score"]) for r in sel]))
        assert auroc == pytest.approx(run_["metrics"]["image_auroc"], abs=1e-3)
    # the mean row: classes averaged per seed first, then mean and std over the seeds
    per_seed = [np.mean([r["metrics"]["pixel_auroc"] for c in results["classes"] for r in c["runs"]
                         if r["shots"] == 1 and r["seed"] == seed]) for seed in range(3)]
    mean = results["summary"]["mean"]["1"]["pixel_auroc"]
    assert mean["n"] == 3
    assert mean["mean"] == pytest.approx(np.mean(per_seed), abs=1e-4) and mean["std"] == pytest.approx(np.std(per_seed), abs=1e-4)
    assert len({r["metrics"]["pixel_auroc"] for r in by_class["tiles"]["runs"] if r["shots"] == 1}) > 1  # seeds differ
    # report.html: the table's values, curves from the class records, worst cases as thumbnails
    page = (out / "report.html").read_text()
    assert f"{by_class['tiles']['runs'][0]['metrics']['pro']:.1f}" in page
    assert page.count("<svg") == 3 * 3 and "Pixel ROC" in page and "PRO (to 30 % FPR)" in page  # 3 shot counts
    assert len(list((out / "report_files").glob("*.jpg"))) > 0
    assert all("curves" not in r for r in by_class["tiles"]["runs"])  # results.json stays small
    ckpt = json.loads((out / "classes" / "tiles.json").read_text())
    assert set(ckpt["runs"][0]["curves"]) == {"image_roc", "pixel_roc", "pro"}
    saved = list((out / "maps").rglob("*.npy"))
    assert len(saved) == 2 * 9 * 7 and np.load(saved[0]).shape == (64, 64)
    # --resume keeps finished classes
    stamp = (out / "classes" / "tiles.json").stat().st_mtime_ns
    code, stdout2, stderr = run(capsys, monkeypatch, "eval", str(demo), "--shots", "0,1,2", "--seeds", "3",
                                "--out", str(out), "--resume", *FAST[:-1])
    assert code == 0 and "tiles: finished earlier, kept" in stderr and stdout2 == stdout
    assert (out / "classes" / "tiles.json").stat().st_mtime_ns == stamp


def test_eval_errors(capsys, monkeypatch, demo, tmp_path):
    code, _, stderr = run(capsys, monkeypatch, "eval", str(demo), "--classes", "bottle", "--out", str(tmp_path), *FAST)
    assert code == 2 and "unknown class(es) bottle" in stderr and "tiles" in stderr
    broken = tmp_path / "broken"
    make_demo_dataset(broken, classes=("tiles",))
    next((broken / "tiles" / "ground_truth" / "scratch").glob("*.png")).unlink()
    code, _, stderr = run(capsys, monkeypatch, "eval", str(broken), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2 and "mask" in stderr and "Traceback" not in stderr
    code, _, stderr = run(capsys, monkeypatch, "eval", str(demo), "--shots", "0,x", "--out", str(tmp_path), *FAST)
    assert code == 2 and "--shots" in stderr


def test_eval_reads_ahead_without_changing_results(capsys, monkeypatch, demo, tmp_path):
    """Images and masks are read in threads ahead of the batch being scored: the rows keep their
    order and the scores and metrics do not depend on the batch size (beyond the 1e-6 that
    batched matrix products move embeddings), and a corrupt test image stops the run with one
    line naming it."""
    monkeypatch.setenv("FADE_CACHE_DIR", str(tmp_path / "cache"))
    got = {}
    for batch in (1, 3, 64):
        out = tmp_path / f"eval-b{batch}"
        code, _, stderr = run(capsys, monkeypatch, "eval", str(demo), "--shots", "0,1", "--seeds", "1",
                              "--batch-size", str(batch), "--out", str(out), *FAST)
        assert code == 0, stderr
        classes = json.loads((out / "results.json").read_text())["classes"]
        with open(out / "per_image.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        got[batch] = ([(c["class"], r["metrics"]) for c in classes for r in c["runs"]], rows)
    (runs1, rows1) = got[1]
    assert len(rows1) > 10
    for batch in (3, 64):
        runs, rows = got[batch]
        assert [(r["run"], r["path"]) for r in rows] == [(r["run"], r["path"]) for r in rows1]
        assert max(abs(float(a["score"]) - float(b["score"])) for a, b in zip(rows, rows1)) <= 1e-5
        for (cls, m), (cls1, m1) in zip(runs, runs1):
            assert cls == cls1 and m.keys() == m1.keys()
            assert all(abs(m[k] - m1[k]) <= 0.01 for k in m)  # percent
    broken = tmp_path / "corrupt"
    make_demo_dataset(broken, classes=("tiles",))
    victim = sorted((broken / "tiles" / "test").rglob("*.png"))[-1]
    victim.write_bytes(victim.read_bytes()[:60])
    code, stdout, stderr = run(capsys, monkeypatch, "eval", str(broken), "--out", str(tmp_path / "o"), *FAST)
    assert code == 2 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if "error" in line] == [
        f"fade: error: {victim}: truncated or corrupt image data " + stderr.split("truncated or corrupt image data ")[1].splitlines()[0]]


def test_run_benchmark_is_a_library_call_with_the_clis_numbers(capsys, monkeypatch, demo, tmp_path, tiny_backbone):
    from fade_cli.engines.runner import ScorerSpec
    from fade_cli.evaluation.benchmark import run_benchmark
    from fade_cli.methods import get_method

    fade = get_method("fade")
    options = fade.options({"scales": "32,64", "cls_scale": 32, "seg_prompts": ["winclip"]}, map_size=64)
    spec = ScorerSpec(method="fade", class_name="object", options=options, model="fade-tiny", pretrained="none")
    lines = []
    report = run_benchmark(spec, demo, shots=[0, 1], seeds=2, out=tmp_path / "lib", eval_size=64, backbone=tiny_backbone,
                           cache_dir=tmp_path / "cache", log=lines.append)
    assert capsys.readouterr().out == ""  # a library call prints nothing; progress goes to `log`
    assert any(line.startswith("tiles: ") for line in lines)
    assert json.loads(json.dumps(report)) == json.loads((tmp_path / "lib" / "results.json").read_text())
    code, _, stderr = run(capsys, monkeypatch, "eval", str(demo), "--shots", "0,1", "--seeds", "2", "--out",
                          str(tmp_path / "cli"), *FAST, cache=tmp_path / "cache")
    assert code == 0, stderr
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["summary"] == report["summary"]


# FiLo's smoothing is measured on the evaluation map (--eval-size) and detect's 448 px map: off here
@pytest.mark.parametrize("method", [[], ["--method", "filo", "--smooth", "0"]])
def test_eval_few_shot_runs_score_as_detect_with_those_references(capsys, monkeypatch, demo, tmp_path, method):
    """A k-shot eval run is FADE's few-shot preset (clip patches, m = 3.5, w = 0.85), exactly as
    `detect --refs` with the run's references: not the zero-shot settings carried over."""
    monkeypatch.setenv("FADE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    code, _, err = run(capsys, monkeypatch, "eval", str(demo), "--dataset", "mvtec", "--classes", "tiles", "--shots", "1",
                       "--seeds", "1", "--calibration-images", "0", "--out", str(out), *FAST, *method)
    assert code == 0, err
    tiles = json.loads((out / "classes" / "tiles.json").read_text())  # per-image scores of every run
    (run_,) = [r for r in tiles["runs"] if r["shots"] == 1]
    expected = {img["path"]: img["scores"][next(iter(img["scores"]))] for img in tiles["images"]}
    detect_flags = [f for f in FAST if f not in ("--eval-size", "64", "-q")]
    code, stdout, err = run(capsys, monkeypatch, "detect", *expected, "--refs", *run_["references"], "--class", "tiles",
                            "-q", *detect_flags, *method)
    assert code == 0, err
    got = {r["path"]: r["score"] for r in map(json.loads, stdout.splitlines())}
    assert got.keys() == expected.keys()
    for path, score in expected.items():
        assert got[path] == pytest.approx(score, abs=1e-5), path  # rounded to 6 decimals, batched products


def test_eval_never_replaces_an_earlier_evaluation_silently(capsys, monkeypatch, demo, tmp_path):
    monkeypatch.setenv("FADE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    args = ["eval", str(demo), "--dataset", "mvtec", "--classes", "tiles", "--shots", "0", "--seeds", "1",
            "--calibration-images", "0", "--out", str(out), *FAST]
    assert run(capsys, monkeypatch, *args)[0] == 0
    first = (out / "results.json").read_bytes()
    code, stdout, err = run(capsys, monkeypatch, *args)
    lines = [l for l in err.splitlines() if l.startswith("fade: error")]
    assert code == 2 and stdout == "" and len(lines) == 1 and "--resume" in lines[0] and "--overwrite" in lines[0]
    assert (out / "results.json").read_bytes() == first  # untouched
    assert run(capsys, monkeypatch, *args, "--resume")[0] == 0
    assert run(capsys, monkeypatch, *args, "--overwrite")[0] == 0
