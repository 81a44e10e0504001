"""The `fade` command as a user runs it: outputs, exit codes, error lines, help."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fade_cli.cli import main

from conftest import TINY_CONFIG, random_image
from helpers import FAST, rows, run


def test_segment_writes_maps_overlays_masks_and_reports_bad_files(capsys, monkeypatch, image_dir, tmp_path):
    (image_dir / "empty.png").write_bytes(b"")
    (image_dir / "notes.png").write_text("not an image")
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, monkeypatch, "segment", str(image_dir), str(tmp_path / "missing.png"),
                               "--out", str(out), "--pixel-threshold", "0.6", *FAST, cache=tmp_path / "cache")
    assert code == 1
    results = rows(stdout)
    assert [Path(r["path"]).name for r in results] == ["img0.png", "img1.png", "img2.png"]
    bad_lines = [l for l in stderr.splitlines() if l.startswith("fade: ") and l.endswith(("(0 bytes)", "unsupported format", "directory"))]
    assert any("empty.png: empty file" in l for l in bad_lines)
    assert any("notes.png: not an image" in l for l in bad_lines)
    assert any("missing.png: no such file" in l for l in stderr.splitlines())
    assert "3 ok, 3 failed" in stderr and "Traceback" not in stderr
    for r in results:
        w, h = Image.open(r["path"]).size
        m = np.load(r["outputs"]["map"], allow_pickle=False)
        assert m.dtype == np.float32 and m.shape == (h, w)
        assert 0.0 <= m.min() and m.max() <= 1.0 and r["map_max"] == pytest.approx(float(m.max()), abs=1e-6)
        mask = np.asarray(Image.open(r["outputs"]["mask"]))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, m >= 0.6)
        ov = Image.open(r["outputs"]["overlay"])
        assert ov.mode == "RGB" and ov.size == (w, h)
        assert 0.0 <= r["score"] <= 1.0 and r["anomalous"] == (r["score"] >= 0.5)
    assert not list(out.rglob("*.tmp"))


def test_detect_prints_one_json_line_per_image(capsys, monkeypatch, image_dir, tmp_path):
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir / "img0.png"), str(image_dir / "img1.png"),
                               "--class", "metal_nut", "--threshold", "0", "-q", *FAST, cache=tmp_path)
    assert code == 0 and stderr == ""
    results = rows(stdout)
    assert len(results) == 2
    for r in results:
        assert set(r) == {"path", "class", "score", "anomalous", "threshold", "threshold_source", "ms", "method", "shots", "banks"}
        assert r["banks"] == ["winclip@1.0.0"] and r["shots"] == 0 and r["method"] == "fade"
        assert r["class"] == "metal_nut" and r["anomalous"] is True and r["ms"] > 0


def test_few_shot_with_reference_folder(capsys, monkeypatch, image_dir, tmp_path):
    refs = tmp_path / "good"
    refs.mkdir()
    for i in range(3):
        random_image(20 + i).save(refs / f"{i}.png")
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "--refs", str(refs), "--shots", "2",
                               *FAST, cache=tmp_path)
    assert code == 0, stderr
    assert "2-shot" in stderr and len(rows(stdout)) == 3
    code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "--refs", str(refs), "--shots", "5", *FAST)
    assert code == 2 and "only 3 reference images" in stderr


def test_shell_expanded_refs_glob_is_caught(capsys, monkeypatch, tmp_path):
    for i in range(3):
        random_image(i).save(tmp_path / f"{i}.png")
    args = ["detect", str(tmp_path / "1.png"), str(tmp_path / "2.png"), "--refs", str(tmp_path / "0.png"), *FAST]
    code, _, stderr = run(capsys, monkeypatch, *args)
    assert code == 2 and "did the shell expand a glob" in stderr


def test_same_basenames_get_distinct_outputs(capsys, monkeypatch, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        random_image(ord(d)).save(tmp_path / d / "part.png")
    code, stdout, _ = run(capsys, monkeypatch, "segment", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                          str(tmp_path / "out"), "-q", *FAST)
    assert code == 0
    maps = [r["outputs"]["map"] for r in rows(stdout)]
    assert len(set(maps)) == 2 and all(Path(m).is_file() for m in maps)


@pytest.mark.parametrize("args, message", [
    (["--scales", "abc"], "expected comma-separated integers"),
    (["--scales", "250"], "not a positive multiple of the patch size"),
    (["--seg-prompts", "no-such-bank"], "no such prompt bank"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--vision-feature", "pixels"], "vision_feature must be clip or gem"),
])
def test_usage_errors_exit_2_with_one_line(capsys, monkeypatch, image_dir, args, message):
    base = [a for a in FAST]
    for opt in args[::2]:
        if opt in base:
            i = base.index(opt)
            del base[i : i + 2]
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir / "img0.png"), *base, *args, "-q")
    assert code == 2 and stdout == ""
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in stderr


def test_help_explains_every_option(capsys, monkeypatch):
    code, stdout, _ = run(capsys, monkeypatch, "segment", "--help")
    assert code == 0
    for opt in ["--out", "--class", "--refs", "--shots", "--shots-seed", "--threshold", "--pixel-threshold", "--model",
                "--pretrained", "--device", "--precision", "--scales", "--cls-scale", "--cls-prompts", "--seg-prompts",
                "--vision-multiplier", "--vision-weight", "--vision-feature", "--batch-size", "--cache-dir", "--quiet"]:
        assert opt in stdout, opt


def test_offline_pretrained_tag_says_how_to_use_a_local_checkpoint(tmp_path, image_dir):
    """Real entry point, no network: one line, exit 2, no traceback."""
    env = dict(os.environ, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path), HF_HUB_OFFLINE="1",
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9")
    proc = subprocess.run([sys.executable, "-c", "from fade_cli.cli import main; main()", "detect",
                           str(image_dir / "img0.png"), "--pretrained", "laion400m_e31", "-q"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "laion400m_e31" in lines[0] and "--pretrained /path/to/checkpoint.pt" in lines[0]


def test_local_checkpoint_path_loads(tmp_path, tiny_backbone, capsys, monkeypatch, image_dir):
    import torch

    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), ckpt)
    args = [a if a != "none" else str(ckpt) for a in FAST]
    code, stdout, stderr = run(capsys, monkeypatch, "detect", str(image_dir / "img0.png"), *args, cache=tmp_path)
    assert code == 0, stderr
    code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir / "img0.png"),
                          *[a if a != "none" else str(tmp_path / "nope.pt") for a in FAST])
    assert code == 2 and "checkpoint file not found" in stderr


def test_saved_bank_gives_the_same_scores_as_refs(capsys, monkeypatch, image_dir, tmp_path):
    refs = tmp_path / "good"
    refs.mkdir()
    for i in range(2):
        random_image(30 + i).save(refs / f"{i}.png")
    model = FAST[:4] + ["--device", "cpu"]
    bank = tmp_path / "parts.fadebank"
    code, _, stderr = run(capsys, monkeypatch, "bank", "build", str(refs), "-o", str(bank), "--scales", "32,64", *model)
    assert code == 0, stderr
    code, stdout, _ = run(capsys, monkeypatch, "bank", "info", str(bank))
    info = json.loads(stdout)
    assert info["n_images"] == 2 and info["scales"] == [32, 64] and info["feature"] == "clip" and info["format"] == 1
    code, with_bank, _ = run(capsys, monkeypatch, "detect", str(image_dir), "--bank", str(bank), *FAST, cache=tmp_path)
    assert code == 0
    code, with_refs, _ = run(capsys, monkeypatch, "detect", str(image_dir), "--refs", str(refs), *FAST, cache=tmp_path)
    assert [r["score"] for r in rows(with_bank)] == [r["score"] for r in rows(with_refs)]
    base = [a for a in FAST if a not in ("--scales", "32,64")]
    code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "--bank", str(bank), *base, "--scales", "32,48")
    assert code == 2 and "no patches at scale(s) [48]" in stderr
    (tmp_path / "junk.fadebank").write_bytes(b"junk")
    code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "--bank", str(tmp_path / "junk.fadebank"), *FAST)
    assert code == 2 and "not a fade reference bank" in stderr


def test_prompts_commands(capsys, monkeypatch, tmp_path):
    code, stdout, _ = run(capsys, monkeypatch, "prompts", "list", "--json")
    listed = {r["name"]: r for r in rows(stdout)}
    assert code == 0 and (listed["winclip"]["normal"], listed["winclip"]["anomalous"]) == (154, 88)
    assert (listed["alfa"]["version"], listed["alfa@1.0.0"]["version"]) == ("2.0.0", "1.0.0")  # older versions load by name
    code, stdout, _ = run(capsys, monkeypatch, "prompts", "show", "winclip", "--class", "metal_nut", "--state", "normal")
    lines = stdout.splitlines()
    assert code == 0 and len(lines) == 154 and lines[1] == "normal\ta cropped photo of the flawless metal nut"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"schema_version": 1, "name": "x", "version": "1", "description": "d",
                                  "generation": {"method": "llm"}, "placeholders": ["colour"],
                                  "prompts": {"normal": ["ok"], "anomalous": [3]}}))
    code, stdout, stderr = run(capsys, monkeypatch, "prompts", "validate", str(broken))
    assert code == 1
    for path in ("$.version", "$.placeholders[0]", "$.prompts.anomalous[0]"):
        assert f"broken.json: {path}" in stderr
    code, stdout, _ = run(capsys, monkeypatch, "prompts", "embed", "winclip", "--model", str(TINY_CONFIG),
                          "--pretrained", "none", "--device", "cpu", "--cache-dir", str(tmp_path / "c"))
    assert code == 0 and len(list((tmp_path / "c" / "text").glob("*.npy"))) == 1


def test_explain_ranks_descriptions(capsys, monkeypatch, image_dir, tmp_path):
    code, stdout, _ = run(capsys, monkeypatch, "explain", str(image_dir / "img0.png"), "--class", "bottle", "--prompts",
                          "winclip", "--top", "3", "--json", *FAST[:6], cache=tmp_path)
    assert code == 0
    res = json.loads(stdout)
    assert res["banks"] == ["winclip@1.0.0"] and len(res["anomalous"]) == 3 and len(res["normal"]) == 3
    sims = [r["similarity"] for r in res["anomalous"]]
    assert sims == sorted(sims, reverse=True) and all("bottle" in r["text"] for r in res["anomalous"])


def test_resume_skips_finished_images_and_keeps_order(capsys, monkeypatch, image_dir, tmp_path):
    out = tmp_path / "out"
    args = ["segment", str(image_dir), "--out", str(out), "-q", *FAST]
    code, first, _ = run(capsys, monkeypatch, *args, cache=tmp_path)
    assert code == 0
    first_rows = rows(first)
    stamp = {r["path"]: Path(r["outputs"]["map"]).stat().st_mtime_ns for r in first_rows}
    Path(first_rows[1]["outputs"]["overlay"]).unlink()  # image 2's outputs are now incomplete
    code, second, stderr = run(capsys, monkeypatch, *args, "--resume", cache=tmp_path)
    assert code == 0
    second_rows = rows(second)
    assert [r["path"] for r in second_rows] == [r["path"] for r in first_rows]  # input order
    assert [r["score"] for r in second_rows] == [r["score"] for r in first_rows]
    for i, r in enumerate(second_rows):
        changed = Path(r["outputs"]["map"]).stat().st_mtime_ns != stamp[r["path"]]
        assert changed == (i == 1)  # only the incomplete image was redone
    code, _, stderr = run(capsys, monkeypatch, *args, "--resume", "--threshold", "0.9", cache=tmp_path)
    assert code == 2 and "other settings" in stderr


def test_interrupt_discards_the_current_image_and_keeps_the_manifest_consistent(capsys, monkeypatch, image_dir, tmp_path):
    import fade_cli.engines.runner as runner

    out = tmp_path / "out"
    real_save_png, calls = runner.save_png, []

    def interrupted_save_png(path, image):
        calls.append(path)
        if len(calls) == 3:  # the second image's overlay: after its map was written
            raise KeyboardInterrupt
        real_save_png(path, image)

    monkeypatch.setattr(runner, "save_png", interrupted_save_png)
    code, stdout, stderr = run(capsys, monkeypatch, "segment", str(image_dir), "--out", str(out), "-q", *FAST, cache=tmp_path)
    assert code == 130 and "interrupted" in stderr
    assert len(rows(stdout)) == 1
    manifest = (out / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 1 and json.loads(manifest[0])["path"].endswith("img0.png")
    assert not (out / "img1.map.npy").exists()  # no partial set for the interrupted image
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(runner, "save_png", real_save_png)
    code, stdout, _ = run(capsys, monkeypatch, "segment", str(image_dir), "--out", str(out), "-q", "--resume", *FAST, cache=tmp_path)
    assert code == 0 and len(rows(stdout)) == 3
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("args, message", [
    (["detect", "x.png", "--bogus"], "No such option: --bogus"),
    (["detect", "x.png", "--threshold", "abc"], "--threshold"),
    (["detect"], "Missing argument"),
    (["nosuchcmd"], "No such command"),
    (["bank", "build", "x.png", "-o", "b.npz", "--engine", "ray"], "No such option: --engine"),
])
def test_command_line_mistakes_give_one_line_and_exit_2(capsys, monkeypatch, args, message):
    code, stdout, stderr = run(capsys, monkeypatch, *args)
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fade: error: ") and message in lines[0], stderr


def test_unexpected_failures_give_one_line_and_exit_70(capsys, monkeypatch, image_dir, tmp_path):
    import fade_cli.engines.runner as runner

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(runner, "score_chunk", broken)
    code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "-q", *FAST, cache=tmp_path)
    assert code == 70 and stderr.strip() == "fade: internal error: RuntimeError: simulated bug (FADE_DEBUG=1 shows the traceback)"
    monkeypatch.setenv("FADE_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["fade", "detect", str(image_dir), "-q", *FAST])
    with pytest.raises(RuntimeError, match="simulated bug"):
        main()


def test_python_dash_m_runs_the_command():
    proc = subprocess.run([sys.executable, "-m", "fade_cli", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().startswith("fade ")
