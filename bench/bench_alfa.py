"""ALFA speed on this machine: seconds per image for aligner windows r = [2], [2,3], [2,3,4].

Full-size ViT-B-16-plus-240 with random weights (identical computation to the real
checkpoint), generated images, 0-shot and 1-shot, batch 1 (or --batch-size). The paper reports
0.64 / 1.16 / 1.92 s per image on an RTX 3090.

    python bench/bench_alfa.py                      # 2 images, windows 2 / 2,3 / 2,3,4, 0- and 1-shot
    python bench/bench_alfa.py --device cuda --images 16 --batch-size 8
Results are printed and appended to bench/results.csv with the machine description.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_fade import append_results, images, peak_rss_mb, vit_flops  # noqa: E402

from fade_cli.methods.alfa import AlfaConfig, AlfaPipeline  # noqa: E402
from fade_cli.model.backbone import load_backbone  # noqa: E402
from fade_cli.methods.base import build_reference_bank  # noqa: E402
from fade_cli.prompts.text import TextEncoderCache  # noqa: E402


def alfa_flops(width: int, layers: int, grid: int, windows: tuple[int, ...]) -> float:
    total = vit_flops(width, layers, grid * grid + 1, 0)
    for r in windows:
        total += (grid - r + 1) ** 2 * vit_flops(width, layers, r * r + 1, 0)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--windows", default="2;2,3;2,3,4", help="window sets separated by ';'")
    ap.add_argument("--shots", default="0,1")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")))
    args = ap.parse_args()

    cache_dir = Path(tempfile.mkdtemp(prefix="fade-bench-cache-"))
    t0 = time.perf_counter()
    backbone = load_backbone(args.model, "none", args.device, args.precision)
    print(f"model: {time.perf_counter() - t0:.1f} s", flush=True)
    v = backbone.model.visual
    width, layers = v.conv1.out_channels, len(v.transformer.resblocks)
    queries = images(args.images)
    rows = []
    for spec in args.windows.split(";"):
        windows = tuple(int(w) for w in spec.split(","))
        config = AlfaConfig(windows=windows)
        flops = alfa_flops(width, layers, config.image_size // backbone.patch_size, windows)
        for shots in (int(s) for s in args.shots.split(",")):
            bank = build_reference_bank(backbone, images(shots, (640, 640)), (config.image_size,), "clip") if shots else None
            t = time.perf_counter()
            pipe = AlfaPipeline.from_config(backbone, config, "bottle", bank, TextEncoderCache(backbone, cache_dir))
            setup = time.perf_counter() - t
            pipe(queries[:1])  # warm-up
            if backbone.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for i in range(0, len(queries), args.batch_size):
                pipe(queries[i : i + args.batch_size])
            if backbone.device.type == "cuda":
                torch.cuda.synchronize()
            per_image = (time.perf_counter() - t) / len(queries)
            print(f"alfa r={spec} {shots}-shot batch {args.batch_size}: {per_image:.3f} s/image, setup {setup:.2f} s, "
                  f"~{flops / 1e9:.0f} GFLOP/image, {flops / per_image / 1e9:.0f} GFLOP/s, peak RSS {peak_rss_mb():.0f} MB",
                  flush=True)
            rows.append({"what": f"alfa r={spec} {shots}-shot", "seconds": round(per_image, 3),
                         "gflops": round(flops / per_image / 1e9, 1)})

    append_results(args.csv, rows, device=args.device, scales="240", batch=args.batch_size)


if __name__ == "__main__":
    main()
