"""examples/batch_inspect.sh as a user runs it (tiny model): CSV, rejects, unreadable files, resume."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_CONFIG

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_batch_inspect_script(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import make_sample_images
    finally:
        sys.path.pop(0)
    samples = tmp_path / "samples"
    make_sample_images.main(samples)
    (samples / "line3" / "broken.png").write_bytes(b"junk")
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "FADE_OPTS": f"--model {TINY_CONFIG} --pretrained none --device cpu --scales 32,64",
           "FADE_CACHE_DIR": str(tmp_path / "cache")}
    cmd = ["bash", str(EXAMPLES / "batch_inspect.sh"), str(samples / "good"), str(samples / "line3"), str(out), "bottle"]
    for attempt in range(2):  # the second run reuses the bank and resumes every finished image
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 1, res.stderr  # one unreadable file
        with open(out / "scores.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert sorted(Path(r["path"]).name for r in rows) == [f"part_{i:03d}.png" for i in range(4)]
        assert all(Path(r["mask"]).is_file() for r in rows)
        rejects = (out / "rejects.txt").read_text().splitlines()
        assert rejects == [r["path"] for r in rows if r["anomalous"] == "True"]
        unreadable = (out / "unreadable.txt").read_text().splitlines()
        assert len(unreadable) == 1 and "broken.png" in unreadable[0]
    assert (out / "bottle.fadebank").is_file()
    assert len((out / "maps" / "manifest.jsonl").read_text().splitlines()) == 4
