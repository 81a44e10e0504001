"""Host-side cost per image: reading the file and resizing it to every scale, without the model.

On a GPU the model needs a few ms per image, so the CPU work around it decides throughput.
Times, over generated photo-like files, the one-at-a-time path (read, then resize each scale
in turn) against what `fade detect/segment` do: files read ahead in threads
(`runner.score_paths`) and all (image, scale) resizes of a batch in a thread pool
(`backbone.preprocess_scales`). Both give bit-identical tensors (tests/test_host.py).

    python bench/bench_host.py                          # 32 PNGs of 1024 px, batch 8
    python bench/bench_host.py --format jpg --size 700 --batch-size 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_fade import append_results  # noqa: E402

from fade_cli.model.backbone import preprocess, preprocess_scales  # noqa: E402
from fade_cli.data.io import load_image  # noqa: E402
from fade_cli.engines.runner import _read  # noqa: E402


def photo_like(seed: int, size: int) -> Image.Image:
    """Smooth colour fields with mild noise: compresses like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    noise = rng.integers(-6, 7, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(base).astype(int) + noise, 0, 255).astype(np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=1024, help="side of the generated files in pixels")
    ap.add_argument("--format", default="png", choices=["png", "jpg"])
    ap.add_argument("--scales", default="240,448,896")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")))
    args = ap.parse_args()
    scales = [int(s) for s in args.scales.split(",")]

    with tempfile.TemporaryDirectory(prefix="fade-bench-host-") as tmp:
        paths = []
        for i in range(args.images):
            p = Path(tmp) / f"img{i:04d}.{args.format}"
            photo_like(i, args.size).save(p)
            paths.append(p)

        t = time.perf_counter()
        for p in paths:
            im = load_image(p)
            for s in scales:
                preprocess(im, s)
        serial = (time.perf_counter() - t) / len(paths)

        from concurrent.futures import ThreadPoolExecutor

        workers = min(8, os.cpu_count() or 1)  # as runner.score_paths
        t = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(_read, p, 100_000_000) for p in paths]
            for start in range(0, len(paths), args.batch_size):
                batch = [f.result() for f in futures[start : start + args.batch_size]]
                preprocess_scales(batch, scales)
        threaded = (time.perf_counter() - t) / len(paths)

    print(f"{args.images} {args.format} files of {args.size} px, scales {args.scales}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}")
    print(f"one at a time:            {serial * 1e3:6.1f} ms/image  ({1 / serial:5.1f} images/s)")
    print(f"read-ahead + thread pool: {threaded * 1e3:6.1f} ms/image  ({1 / threaded:5.1f} images/s), "
          f"batch {args.batch_size}")
    append_results(args.csv, [{"what": f"host_serial_{args.format}{args.size}", "seconds": round(serial, 4)},
                              {"what": f"host_threaded_{args.format}{args.size}", "seconds": round(threaded, 4)}],
                   device="cpu", scales=args.scales, batch=args.batch_size)


if __name__ == "__main__":
    main()
