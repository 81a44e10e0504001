"""`--engine ray`: the same rows, files, error lines, exit codes and --resume as `--engine local`.

The tests marked `ray` start a local Ray (about 20 s each run on 2 cores) and are run by
`.ci/run` with `python -m pytest -m ray`; they skip when Ray is not installed. The others
(missing Ray, option checks, actor sizing) are part of the default suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fade_cli.engines.ray import INSTALL_HINT, actor_resources

from conftest import random_image
from helpers import ALFA, FAST, rows
from helpers import run as run_inprocess
TIMING = ("ms",)


# ---- without a cluster (default suite) ------------------------------------------------------

def test_engine_ray_without_ray_installed_says_how_to_install(capsys, monkeypatch, image_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code, stdout, stderr = run_inprocess(capsys, monkeypatch, "segment", str(image_dir), "--out",
                                         str(image_dir.parent / "out"), "--engine", "ray", *FAST)
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert code == 2 and stdout == ""
    assert lines == [f"fade: error: {INSTALL_HINT}"], stderr
    assert 'pip install "fade-cli[ray]"' in lines[0]
    assert not (image_dir.parent / "out").exists()  # stopped before any work


@pytest.mark.parametrize("args, message", [
    (["--engine", "spark"], "--engine spark: expected local or ray"),
    (["--actors", "2"], "--ray-address and --actors need --engine ray"),
    (["--ray-address", "auto"], "--ray-address and --actors need --engine ray"),
])
def test_engine_option_errors_exit_2(capsys, monkeypatch, image_dir, args, message):
    code, stdout, stderr = run_inprocess(capsys, monkeypatch, "detect", str(image_dir), *FAST, *args, "-q")
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert code == 2 and stdout == "" and len(lines) == 1 and message in lines[0]


def test_unreachable_ray_address_fails_fast_with_one_line(capsys, monkeypatch, image_dir):
    pytest.importorskip("ray.data", exc_type=ImportError)
    code, stdout, stderr = run_inprocess(capsys, monkeypatch, "detect", str(image_dir), *FAST, "--engine", "ray",
                                         "--ray-address", "127.0.0.1:1", "-q")
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert code == 2 and stdout == "" and len(lines) == 1
    assert "--ray-address 127.0.0.1:1: no Ray cluster answers there" in lines[0] and "ray start --head" in lines[0]
    import ray

    assert not ray.is_initialized()


def test_actor_sizing():
    one_node = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    # CPU only: one actor per node by default, CPUs split between actors, a little left for reading
    assert actor_resources({"CPU": 2.0}, one_node, None, "auto") == (1, 1.5, 0.0, 2)
    assert actor_resources({"CPU": 2.0}, one_node, 2, "auto") == (2, 0.75, 0.0, 1)
    two_nodes = [{"Alive": True, "Resources": {"CPU": 16.0}}] * 2 + [{"Alive": False, "Resources": {"CPU": 64.0}}]
    assert actor_resources({"CPU": 32.0}, two_nodes, None, "cpu") == (2, 15.0, 0.0, 15)
    # GPUs: one per actor, by default one actor per GPU; --device cpu ignores them
    assert actor_resources({"CPU": 32.0, "GPU": 4.0}, two_nodes, None, "auto") == (4, 1.0, 1.0, None)
    assert actor_resources({"CPU": 32.0, "GPU": 4.0}, two_nodes, 2, "cuda") == (2, 1.0, 1.0, None)
    assert actor_resources({"CPU": 32.0, "GPU": 4.0}, two_nodes, None, "cpu")[2] == 0.0


def test_an_actor_answers_alfas_prompts_from_the_drivers_text_cache(tiny_backbone, tmp_path, monkeypatch):
    """The driver builds ALFA's pipeline through its one text cache; that cache (memo included,
    model left behind) is what an actor gets, and the actor's ALFA pipeline then encodes nothing."""
    import pickle
    import types

    from fade_cli.engines import ray as ray_engine
    from fade_cli.engines.runner import OutputSpec, ScorerSpec, build_pipeline
    from fade_cli.methods import get_method
    from fade_cli.methods.alfa import ALFA_FRAME
    from fade_cli.model.backbone import Backbone
    from fade_cli.prompts.text import TextEncoderCache

    alfa = get_method("alfa")
    spec = ScorerSpec(method="alfa", class_name="bottle", options=alfa.options({"windows": "2"}), model="fade-tiny",
                      pretrained="none", device="cpu")
    cache = TextEncoderCache(tiny_backbone, tmp_path, enabled=False)  # memory only: no disk copy to fall back on
    driver = build_pipeline(spec, tiny_backbone, text_cache=cache)
    (prompts,) = alfa.prompt_sets(spec.options, "bottle")
    assert cache.key(list(prompts.texts), ALFA_FRAME) in cache.memo  # the driver's cache saw ALFA's prompts

    payload = pickle.loads(pickle.dumps({"bank": None, "text_cache": cache, "model_config_text": None}))
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get=lambda ref: ref))  # the object store, no cluster

    def no_text_encoder(self, texts):
        raise AssertionError("an actor encoded prompts the driver had already encoded")

    monkeypatch.setattr(Backbone, "encode_texts", no_text_encoder)
    actor = ray_engine._Scorer(spec, OutputSpec(threshold=0.5, base=tmp_path), [payload], str(tmp_path), None)
    images = [random_image(1), random_image(2)]
    for mine, theirs in zip(driver(images), actor.pipeline(images)):
        assert mine.score == theirs.score and np.array_equal(mine.map.numpy(), theirs.map.numpy())


# ---- on a local Ray (pytest -m ray) ---------------------------------------------------------

def _fade(cwd: Path, cache: Path, *args) -> tuple[int, str, str]:
    """The real entry point in a fresh process (it starts and stops its own local Ray).

    One torch thread per model replica in both engines (here 2 actors on 2 CPUs get 1 each): the
    thread count changes float rounding (~1e-7), which could flip a score's 6th decimal."""
    env = dict(os.environ, FADE_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", "from fade_cli.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """One folder (8 good images in two sub-folders + 1 corrupt) and a missing file, few-shot
    segmentation through both engines, then an interrupted-and-resumed Ray run."""
    pytest.importorskip("ray.data", reason="Ray is not installed (pip install 'fade-cli[ray]')", exc_type=ImportError)
    root = tmp_path_factory.mktemp("engines")
    cache = root / "cache"
    for i in range(8):
        folder = root / "imgs" / ("a" if i < 5 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        random_image(100 + i, (64 + 8 * (i % 3), 56 + 8 * (i % 2))).save(folder / f"part{i}.png")
    good = root / "good"
    good.mkdir()
    for i in range(2):
        random_image(200 + i).save(good / f"g{i}.png")
    png = (root / "imgs" / "a" / "part0.png").read_bytes()
    (root / "imgs" / "a" / "part0b_corrupt.png").write_bytes(png[: len(png) // 2])  # truncated PNG
    common = ["segment", "imgs", "missing.png", "--refs", "good", "--batch-size", "2", *FAST]
    local = _fade(root, cache, *common, "--out", "out_local")
    ray = _fade(root, cache, *common, "--out", "out_ray", "--engine", "ray", "--actors", "2")
    # resume: one image's outputs incomplete, another never recorded
    ray_rows = rows(ray[1])
    stamps = {r["path"]: Path(root / r["outputs"]["map"]).stat().st_mtime_ns for r in ray_rows}
    (root / ray_rows[2]["outputs"]["overlay"]).unlink()
    manifest = root / "out_ray" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-1]) + "\n")  # as if stopped before the last image was recorded
    resumed = _fade(root, cache, *common, "--out", "out_ray", "--engine", "ray", "--resume", "-q")
    return {"root": root, "local": local, "ray": ray, "resumed": resumed, "stamps": stamps}


def _error_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith(("fade: missing.png:", "fade: imgs/"))]


@pytest.mark.ray
def test_ray_engine_same_exit_code_and_error_lines(engines):
    (lcode, _, lerr), (rcode, _, rerr) = engines["local"], engines["ray"]
    assert lcode == rcode == 1, (lerr, rerr)
    assert _error_lines(rerr) == _error_lines(lerr) == [
        "fade: missing.png: no such file or directory",
        _error_lines(lerr)[1],
    ]
    assert _error_lines(lerr)[1].startswith("fade: imgs/a/part0b_corrupt.png: truncated or corrupt image data")
    assert "fade: ray: 2 actor(s)" in rerr and "fade: 8 ok, 2 failed" in rerr
    # nothing from Ray itself on stderr, and stdout is only JSON rows
    assert all(l.startswith("fade: ") for l in rerr.splitlines() if l.strip()), rerr
    assert "Traceback" not in rerr


@pytest.mark.ray
def test_ray_engine_same_rows_maps_and_files(engines):
    root = engines["root"]
    local, ray = rows(engines["local"][1]), rows(engines["ray"][1])
    assert [r["path"] for r in ray] == [r["path"] for r in local] == \
        [f"imgs/a/part{i}.png" for i in range(5)] + [f"imgs/b/part{i}.png" for i in range(5, 8)]
    for lr, rr in zip(local, ray):
        assert rr["score"] == lr["score"] and rr["shots"] == lr["shots"] == 2
        same = {k: v for k, v in lr.items() if k not in TIMING + ("outputs",)}
        assert {k: v for k, v in rr.items() if k not in TIMING + ("outputs",)} == same
        assert {k: v.replace("out_ray/", "out_local/", 1) for k, v in rr["outputs"].items()} == lr["outputs"]
        lmap, rmap = (np.load(root / r["outputs"]["map"], allow_pickle=False) for r in (lr, rr))
        assert rmap.dtype == lmap.dtype == np.float32 and rmap.shape == lmap.shape
        assert np.abs(rmap - lmap).max() <= 1e-6
        assert lmap.std() > 1e-3  # a real map, not a constant: the comparison means something
        lmask, rmask = (np.asarray(Image.open(root / r["outputs"]["mask"])) for r in (lr, rr))
        decided = np.abs(lmap - 0.5) > 1e-6
        np.testing.assert_array_equal(rmask[decided], lmask[decided])
        lov, rov = (np.asarray(Image.open(root / r["outputs"]["overlay"])).astype(int) for r in (lr, rr))
        assert np.abs(rov - lov).max() <= 1
    assert _files(root / "out_ray") == _files(root / "out_local")  # same files, no temporaries
    manifest = [json.loads(l) for l in (root / "out_local" / "manifest.jsonl").read_text().splitlines()]
    assert [m["path"] for m in manifest] == [r["path"] for r in local]


@pytest.mark.ray
def test_ray_engine_resume_redoes_only_unfinished_images(engines):
    root = engines["root"]
    first = rows(engines["ray"][1])
    code, stdout, stderr = engines["resumed"]
    assert code == 1 and _error_lines(stderr) == _error_lines(engines["ray"][2])
    assert [l for l in stderr.splitlines() if l.strip()] == _error_lines(stderr)  # -q: only the error lines
    again = rows(stdout)
    assert [r["path"] for r in again] == [r["path"] for r in first]  # complete, input order
    assert [r["score"] for r in again] == [r["score"] for r in first]
    redone = [i for i, r in enumerate(again)
              if (root / r["outputs"]["map"]).stat().st_mtime_ns != engines["stamps"][r["path"]]]
    assert redone == [2, len(first) - 1]
    manifest = [json.loads(l) for l in (root / "out_ray" / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == len(first) + 1 and not list((root / "out_ray").rglob("*.tmp"))


@pytest.mark.ray
def test_ray_engine_with_alfa_gives_the_local_rows(tmp_path):
    pytest.importorskip("ray.data", reason="Ray is not installed (pip install 'fade-cli[ray]')", exc_type=ImportError)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        random_image(300 + i).save(tmp_path / "imgs" / f"p{i}.png")
    random_image(400).save(tmp_path / "good.png")
    common = ["detect", "imgs", "--refs", "good.png", "--windows", "2", *ALFA]
    local = _fade(tmp_path, tmp_path / "cache", *common)
    ray = _fade(tmp_path, tmp_path / "cache-ray", *common, "--engine", "ray", "--actors", "1", "--no-cache")
    assert local[0] == ray[0] == 0, (local[2], ray[2])
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in rows(local[1])]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in rows(ray[1])]
    assert strip[0]["method"] == "alfa+r2" and strip[0]["shots"] == 1
    assert not (tmp_path / "cache-ray").exists()  # --no-cache: the actor's prompts came with the driver's cache
