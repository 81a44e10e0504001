"""Helpers shared by the test modules (test modules never import from each other)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import pytest

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
