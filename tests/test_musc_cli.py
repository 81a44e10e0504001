"""`--method musc` through the CLI: detect, segment, eval, refusals, bad files, resume, chunk sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_CONFIG
from helpers import run
from musc_images import product_images

MUSC = ["--method", "musc", "--model", str(TINY_CONFIG), "--pretrained", "none", "--device", "cpu",
        "--musc-scale", "64", "-q"]


@pytest.fixture()
def line(tmp_path: Path) -> Path:
    d = tmp_path / "line"
    d.mkdir()
    for i, img in enumerate(product_images(6, defect=4)):
        img.save(d / f"img{i}.png")
    return d


def _rows(stdout: str) -> list[dict]:
    return [json.loads(l) for l in stdout.splitlines() if l.strip()]


def _scores(stdout: str) -> dict[str, float]:
    return {Path(r["path"]).name: r["score"] for r in _rows(stdout)}


def test_detect_rows_in_input_order(capsys, monkeypatch, line, tmp_path):
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(line), *MUSC, cache=tmp_path / "c")
    assert code == 0, stderr
    rows = _rows(stdout)
    assert [Path(r["path"]).name for r in rows] == [f"img{i}.png" for i in range(6)]
    assert all(r["method"] == "musc" and r["shots"] == 0 and r["banks"] == [] for r in rows)
    assert max(rows, key=lambda r: r["score"])["path"].endswith("img4.png")


def test_same_scores_for_batch_sizes_and_equivalent_subset_sizes(capsys, monkeypatch, line, tmp_path):
    outs = []
    for extra in (["--batch-size", "1", "--subset-size", "3"], ["--batch-size", "4", "--subset-size", "4"],
                  ["--batch-size", "2", "--subset-size", "5"]):
        code, stdout, stderr = run(capsys, monkeypatch, "detect", str(line), *MUSC, *extra, cache=tmp_path / "c")
        assert code == 0, stderr
        outs.append(_scores(stdout))
    assert outs[0] == outs[1] == outs[2]
    code, stdout, _ = run(capsys, monkeypatch, "detect", str(line), *MUSC, "--subset-size", "6", cache=tmp_path / "c")
    assert _scores(stdout) != outs[0]  # one subset of six is another computation


@pytest.mark.parametrize("flag", [["--refs", "REFS"], ["--refs", "MISSING"], ["--bank", "BANK"], ["--shots", "1"]])
def test_reference_flags_are_refused_with_one_line(capsys, monkeypatch, line, tmp_path, flag):
    args = [a.replace("REFS", str(line)).replace("MISSING", str(tmp_path / "nothing")).replace("BANK", str(tmp_path / "b.npz"))
            for a in flag]
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(line), *MUSC, *args, cache=tmp_path / "c")
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert code == 2 and stdout == "" and len(lines) == 1, stderr
    assert flag[0] in lines[0] and "musc" in lines[0]


@pytest.mark.parametrize("flag", [["--subset-size", "10"], ["--language-weight", "0.5"], ["--r-values", "1,3"]])
def test_musc_flags_are_refused_for_other_methods(capsys, monkeypatch, line, tmp_path, flag):
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(line), "--model", str(TINY_CONFIG), "--pretrained",
                               "none", "--device", "cpu", "--scales", "32", "--cls-scale", "32", *flag, "-q",
                               cache=tmp_path / "c")
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert code == 2 and stdout == "" and len(lines) == 1, stderr
    assert lines[0] == f"fade: error: {flag[0]} does not apply to --method fade"


def test_bad_option_values_exit_2(capsys, monkeypatch, line, tmp_path):
    for flag in (["--r-values", "2"], ["--lowest-fraction", "0"], ["--layers", "1,9"], ["--subset-size", "1"]):
        code, stdout, stderr = run(capsys, monkeypatch, "detect", str(line), *MUSC, *flag, cache=tmp_path / "c")
        assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1, (flag, stderr)


def test_segment_corrupt_file_and_resume(capsys, monkeypatch, line, tmp_path):
    (line / "img2b.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, monkeypatch, "segment", str(line), "--out", str(out), *MUSC, "--subset-size", "4",
                               cache=tmp_path / "c")
    errors = [l for l in stderr.splitlines() if l.strip()]
    assert code == 1 and len(errors) == 1 and "img2b.png" in errors[0]
    rows = _rows(stdout)
    assert len(rows) == 6 and all(Path(f).is_file() for r in rows for f in r["outputs"].values())
    # resume: the last image never recorded
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-1]) + "\n")
    code, stdout2, stderr2 = run(capsys, monkeypatch, "segment", str(line), "--out", str(out), *MUSC,
                                 "--subset-size", "4", "--resume", cache=tmp_path / "c")
    assert code == 1 and _scores(stdout2) == _scores(stdout)


def test_language_weight_fuses_fade_language(capsys, monkeypatch, line, tmp_path):
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(line), *MUSC, "--language-weight", "0.3",
                               "--scales", "32,64", "--cls-scale", "32", "--seg-prompts", "winclip",
                               cache=tmp_path / "c")
    assert code == 0, stderr
    rows = _rows(stdout)
    assert rows[0]["banks"] and all(0.0 <= r["score"] <= 1.0 for r in rows)


def test_eval_zero_shot_and_refuses_shots(capsys, monkeypatch, tmp_path):
    from fade_cli.data.demo_data import make_demo_dataset

    demo = make_demo_dataset(tmp_path / "demo", n_train=2)
    args = ["eval", str(demo), "--dataset", "mvtec", "--classes", "tiles", "--eval-size", "64", "--out",
            str(tmp_path / "eval"), *MUSC]
    code, stdout, stderr = run(capsys, monkeypatch, *args, cache=tmp_path / "c")
    assert code == 0, stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["settings"]["method"] == "musc"
    assert all(0.0 <= v <= 100.0 for v in results["classes"][0]["runs"][0]["metrics"].values())
    code, stdout, stderr = run(capsys, monkeypatch, *args, "--shots", "0,1", "--overwrite", cache=tmp_path / "c")
    assert code == 2 and "--shots" in stderr and "musc" in stderr


# ---- on a local Ray (pytest -m ray) ---------------------------------------------------------

def _fade_process(cwd: Path, cache: Path, *args) -> tuple[int, str, str]:
    """The real entry point in a fresh process; one torch thread as the Ray actors have."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, FADE_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "fade_cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.ray
def test_ray_engine_same_rows_files_and_errors(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'fade-cli[ray]')", exc_type=ImportError)
    d = tmp_path / "line"
    d.mkdir()
    for i, img in enumerate(product_images(7, defect=3)):
        img.save(d / f"img{i}.png")
    (d / "img5b.png").write_bytes(b"\x89PNG broken")
    common = ["segment", "line", *MUSC[:-1], "--subset-size", "4", "--batch-size", "2"]
    local = _fade_process(tmp_path, tmp_path / "c", *common, "--out", "out_local")
    ray = _fade_process(tmp_path, tmp_path / "c", *common, "--out", "out_ray", "--engine", "ray", "--actors", "2")
    assert local[0] == ray[0] == 1, (local[2], ray[2])
    strip = lambda out: [{k: v for k, v in r.items() if k not in ("ms", "outputs")} for r in _rows(out)]  # noqa: E731
    assert strip(ray[1]) == strip(local[1]) and len(strip(local[1])) == 7
    errors = lambda err: [l for l in err.splitlines() if l.startswith("fade: line/")]  # noqa: E731
    assert errors(ray[2]) == errors(local[2]) and len(errors(local[2])) == 1
    import numpy as np

    for r in _rows(local[1]):
        other = Path(r["outputs"]["map"].replace("out_local", "out_ray"))
        assert np.allclose(np.load(tmp_path / r["outputs"]["map"]), np.load(tmp_path / other), atol=1e-6)
