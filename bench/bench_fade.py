"""FADE speed on this machine: seconds per image, setup seconds, peak memory, GFLOP/s.

Builds the full-size ViT-B-16-plus-240 with random weights (identical computation to the real
checkpoint), generates images, and runs 0-shot and 1-shot FADE at the default three scales.
Setup is timed twice: a cold text-embedding cache, then a warm one.

    python bench/bench_fade.py                       # defaults: 2 images, 0- and 1-shot
    python bench/bench_fade.py --scales 240 --images 4 --shots 0
Results are printed and appended to bench/results.csv with the machine description.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fade_cli.model.backbone import load_backbone
from fade_cli.methods.fade import FadeConfig
from fade_cli.methods.fade import FadePipeline
from fade_cli.methods.base import build_reference_bank
from fade_cli.prompts.text import TextEncoderCache


def vit_flops(width: int, layers: int, tokens: int, gem_layers: int, mlp_ratio: float = 4.0) -> float:
    """Multiply-adds ×2 of the image tower at one scale, plus the GEM path's extra products."""
    per_block = 2 * tokens * width * (3 * width + width + 2 * mlp_ratio * width) + 2 * 2 * tokens * tokens * width
    # per GEM block: 3 paths × 2 self-self attentions, each 4·N²·d (scores and weighted sum), + out-proj
    gem_extra = gem_layers * (6 * 4 * tokens * tokens * width + 2 * tokens * width * width)
    return layers * per_block + gem_extra


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def images(n: int, size=(700, 700)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def append_results(csv_path: str, rows: list[dict], **fields) -> None:
    """Append result rows to the bench CSV with the date and the machine description."""
    machine = f"{platform.processor() or platform.machine()} x{os.cpu_count()} torch{torch.__version__} threads{torch.get_num_threads()}"
    path = Path(csv_path)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["date", "machine", "device", "scales", "batch", "what", "seconds", "gflops", "peak_rss_mb"])
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine, "peak_rss_mb": round(peak_rss_mb()), **fields, **r})
    print(f"appended {len(rows)} rows to {path}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--scales", default="240,448,896")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--shots", default="0,1", help="comma-separated shot counts to time")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seg-prompts", default="winclip,fade-llm")
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scales = tuple(int(s) for s in args.scales.split(","))
    seg_prompts = tuple(args.seg_prompts.split(","))

    cache_dir = Path(tempfile.mkdtemp(prefix="fade-bench-cache-"))
    rows = []
    t0 = time.perf_counter()
    backbone = load_backbone(args.model, "none", args.device, args.precision)
    t_model = time.perf_counter() - t0
    for attempt in ("cold", "warm"):
        t = time.perf_counter()
        cache = TextEncoderCache(backbone, cache_dir)
        config = FadeConfig(seg_scales=scales, seg_prompts=seg_prompts)
        FadePipeline.from_config(backbone, config, "bottle", None, cache)
        print(f"setup ({attempt} text cache): model {t_model:.1f} s + prompts {time.perf_counter() - t:.2f} s "
              f"[{cache.hits} hit(s), {cache.misses} miss(es)]", flush=True)
        rows.append({"what": f"setup_prompts_{attempt}", "seconds": round(time.perf_counter() - t, 3)})

    v = backbone.model.visual
    width, layers = v.conv1.out_channels, len(v.transformer.resblocks)
    flops = sum(vit_flops(width, layers, (s // 16) ** 2 + 1, 6) for s in sorted(set(scales) | {240}))
    queries = images(args.images)
    for shots in (int(s) for s in args.shots.split(",")):
        refs = images(shots, (640, 640)) if shots else []
        config = FadeConfig(seg_scales=scales, seg_prompts=seg_prompts)
        bank = None
        if refs:
            few = config.resolved(True)
            t = time.perf_counter()
            bank = build_reference_bank(backbone, refs, few.seg_scales, few.vision_feature)
            print(f"{shots}-shot reference bank: {time.perf_counter() - t:.1f} s", flush=True)
        pipe = FadePipeline.from_config(backbone, config, "bottle", bank, TextEncoderCache(backbone, cache_dir))
        pipe(queries[:1])  # warm-up (allocator, thread pools)
        t = time.perf_counter()
        for i in range(0, len(queries), args.batch_size):
            pipe(queries[i : i + args.batch_size])
        per_image = (time.perf_counter() - t) / len(queries)
        gflops = flops / per_image / 1e9
        print(f"{shots}-shot, scales {args.scales}, batch {args.batch_size}: {per_image:.2f} s/image, "
              f"~{flops / 1e12:.2f} TFLOP/image, {gflops:.0f} GFLOP/s, peak RSS {peak_rss_mb():.0f} MB", flush=True)
        rows.append({"what": f"{shots}-shot", "seconds": round(per_image, 3), "gflops": round(gflops, 1)})

    append_results(args.csv, rows, device=args.device, scales=args.scales, batch=args.batch_size)


if __name__ == "__main__":
    main()
