"""Throughput of `fade segment` with --engine local vs --engine ray (1 and 2 actors).

Runs the real command in fresh processes on generated images (full-size ViT-B-16-plus-240 with
random weights: the same computation as the real checkpoint) and times when each image's map file
is written (by the actors, with Ray: stdout rows are held back to keep input order). Prints a
Markdown table:

  start-up s        from launch to the first finished image (model load; with Ray also starting
                    Ray and loading the model in every actor)
  steady img/s      images finished per second after the first `--warmup` ones (the rate a long
                    batch runs at)
  end-to-end img/s  images / total wall time of the command

    python bench/bench_ray.py                                  # 48 images, --scales 240
    python bench/bench_ray.py --images 96 --scales 240,448,896 --batch-size 2

The Ray runs start their own local Ray (all CPUs of this machine). By default fade's actors run
as many torch threads as their CPU share (2 actors on 2 cores: 1 each) and the local engine
torch's default (one per core); `--threads 1` gives every model replica one thread, which is
steadier on a machine shared with other jobs (OpenMP threads that wait for a busy core slow a
2-thread forward several times over).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def make_images(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        base = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        img.save(folder / f"img{i:04d}.png")


def fade_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fade_cli.cli import main; main()", *args]


def timed_run(cmd: list[str], cwd: Path, env: dict, out: Path) -> tuple[float, list[float], int, str]:
    """(wall seconds, seconds from launch to each map file's writing, sorted; exit code, stderr)."""
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    done = sorted(p.stat().st_mtime - t0 for p in out.rglob("*.map.npy"))
    return wall, done, proc.returncode, proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", type=int, default=512, help="generated image side in pixels")
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--scales", default="240")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=4, help="rows left out of the steady rate")
    ap.add_argument("--actors", default="1,2", help="Ray actor counts to time, comma-separated")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads per model replica in every engine (sets OMP_NUM_THREADS); 0: each engine's default")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fade-bench-ray-"))
    env = dict(os.environ, FADE_CACHE_DIR=str(work / "cache"), PYTHONPATH=str(ROOT))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    elif "OMP_NUM_THREADS" in env:
        print(f"note: OMP_NUM_THREADS={env['OMP_NUM_THREADS']} is set; it fixes every engine's torch threads", file=sys.stderr)
    threads = f"{args.threads} torch thread(s) per model" if args.threads else "default torch threads"
    make_images(work / "imgs", args.images, args.size)
    common = ["--model", args.model, "--pretrained", "none", "--device", "cpu", "--scales", args.scales,
              "--cls-scale", "240", "--batch-size", str(args.batch_size), "-q"]
    # fill the text-embedding cache first, so that no engine pays for the prompts
    subprocess.run(fade_cmd("segment", "imgs/img0000.png", "--out", "warm", *common), cwd=work, env=env, check=True,
                   capture_output=True)

    configs = [("local", [])] + [(f"ray, {a} actor{'s' if a != '1' else ''}", ["--engine", "ray", "--actors", a])
                                 for a in args.actors.split(",") if a.strip()]
    print(f"fade segment, {args.images} images of {args.size}×{args.size}, {args.model} (random weights), "
          f"--scales {args.scales}, --batch-size {args.batch_size}, {threads}; {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, load average before: {os.getloadavg()[0]:.1f}")
    print()
    print("| engine | start-up s | steady img/s | end-to-end img/s | wall s |")
    print("|---|---:|---:|---:|---:|")
    for name, extra in configs:
        out = work / f"out-{len(extra)}-{extra[-1] if extra else 'local'}"
        wall, arrivals, code, err = timed_run(fade_cmd("segment", "imgs", "--out", str(out), *common, *extra), work,
                                              env, out)
        if code != 0 or len(arrivals) != args.images:
            print(f"| {name} | failed (exit {code}, {len(arrivals)} maps): {err.strip().splitlines()[-1:]} |||")
            continue
        w = min(args.warmup, len(arrivals) - 2)
        steady = (len(arrivals) - 1 - w) / (arrivals[-1] - arrivals[w])
        print(f"| {name} | {arrivals[0]:.1f} | {steady:.2f} | {args.images / wall:.2f} | {wall:.1f} |", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
