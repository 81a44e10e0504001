"""Helpers shared by the test modules (test modules never import from each other)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_CONFIG

# the tiny model at small scales: every CLI test runs in a second or two
FAST = ["--model", str(TINY_CONFIG), "--pretrained", "none", "--device", "cpu", "--scales", "32,64", "--cls-scale", "32",
        "--seg-prompts", "winclip"]
ALFA = ["--method", "alfa", "--model", str(TINY_CONFIG), "--pretrained", "none", "--device", "cpu", "--class", "bottle"]


def run(capsys, monkeypatch, *args, cache=None):
    """`fade ARGS` in this process (pytest capture): (exit code, stdout, stderr)."""
    from fade_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["fade", *args])
    if cache is not None:
        monkeypatch.setenv("FADE_CACHE_DIR", str(cache))
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def invoke(*args, cache: Path | None = None) -> tuple[int, str, str]:
    """`fade ARGS` in this process without pytest fixtures (scripts): (exit code, stdout, stderr)."""
    from fade_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cache = sys.argv, os.environ.get("FADE_CACHE_DIR")
    sys.argv = ["fade", *args]
    if cache is not None:
        os.environ["FADE_CACHE_DIR"] = str(cache)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code
    finally:
        sys.argv = saved_argv
        if saved_cache is None:
            os.environ.pop("FADE_CACHE_DIR", None)
        else:
            os.environ["FADE_CACHE_DIR"] = saved_cache
    return code, out.getvalue(), err.getvalue()


def rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_corpus(d):
    """The image corpus of bad and unusual files, generated in folder `d` (no committed binaries):
    name -> (file name, expected error substring, or None for a readable image)."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    c = {}
    (d / "empty.png").write_bytes(b""); c["empty"] = ("empty.png", "empty file")
    (d / "text.png").write_text("just text"); c["text"] = ("text.png", "not an image")
    good = _png_bytes(rgb)
    (d / "truncated.png").write_bytes(good[: len(good) // 2]); c["truncated_png"] = ("truncated.png", "truncated or corrupt")
    buf = io.BytesIO(); rgb.save(buf, format="JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[:200]); c["truncated_jpg"] = ("truncated.jpg", "truncated or corrupt")
    Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 20).astype(np.uint16)).save(d / "16bit.png"); c["16bit"] = ("16bit.png", None)
    Image.fromarray(np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)).save(d / "float.tif"); c["float_tiff"] = ("float.tif", None)
    rgb.convert("L").save(d / "gray.png"); c["gray"] = ("gray.png", None)
    rgb.convert("P").save(d / "palette.png"); c["palette"] = ("palette.png", None)
    rgba = rgb.convert("RGBA"); rgba.putalpha(0); rgba.save(d / "rgba.png"); c["rgba"] = ("rgba.png", None)
    rgb.convert("CMYK").save(d / "cmyk.jpg"); c["cmyk"] = ("cmyk.jpg", None)
    exif = Image.Exif(); exif[0x0112] = 6  # rotate 90° on display
    rgb.save(d / "rotated.jpg", exif=exif); c["exif"] = ("rotated.jpg", None)
    Image.new("RGB", (8, 8)).save(d / "tiny.png"); c["tiny"] = ("tiny.png", "smaller than one 16-pixel patch")
    Image.new("L", (3000, 3000)).save(d / "bomb.png"); c["bomb"] = ("bomb.png", "too large")
    (d / "locked.png").write_bytes(good); os.chmod(d / "locked.png", 0); c["locked"] = ("locked.png", "permission denied")
    return c
