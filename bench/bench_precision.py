"""Mixed precision against fp32: max |Δ map|, max |Δ score| and seconds per image, FADE and ALFA.

Full-size ViT-B-16-plus-240 with random weights (identical computation to the real checkpoint),
generated images, 0-shot FADE at the given scales and 0-shot ALFA, batch 1. Each reduced
precision runs a Backbone that shares the fp32 model and autocasts to fp16 / bf16 — what
`--precision` gives (`load_backbone` keeps fp32 weights and autocasts) — so the same
comparison also runs on CPU, where the CLI allows bf16 but refuses fp16.

Random weights put FADE's zero-shot vision distances far above the real checkpoint's, so the
default ×80 vision multiplier clamps every map to 1 and Δ map would read 0; the bench uses ×1
(--vision-multiplier; same computation), and prints how much of the fp32 maps sits at 1.

Text embeddings are encoded in each precision, as the CLI does (its text cache is keyed by
precision). On CPU, fp16 autocast is about 4x slower than fp32 without
AVX512-FP16/AMX-FP16 (~45 GFLOP/s on a 2-core AVX512-BF16 host, where bf16 is 2-3x faster than
fp32): --precisions bf16 skips it.

ALFA's run-time prompt adaptation keeps or drops each prompt per image by comparing cosines
with interval ends: a prompt at an end can flip under any perturbation, and with random weights
few prompts are kept, so one flip moves the map a lot (bf16 images with fp32 text: up to
0.12 here). --prompt-filter none shows the difference without those decisions.

    python bench/bench_precision.py --device cuda                     # 240,448,896; fp16 and bf16
    python bench/bench_precision.py --scales 240 --images 1 --precisions bf16   # a few minutes on CPU
Timings are appended to bench/results.csv (what = "<method> <precision>", seconds per image);
the differences are printed only (--csv '' appends nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_alfa import alfa_flops  # noqa: E402
from bench_fade import append_results, images, peak_rss_mb, vit_flops  # noqa: E402

from fade_cli.methods.alfa import AlfaConfig, AlfaPipeline  # noqa: E402
from fade_cli.model.backbone import load_backbone  # noqa: E402
from fade_cli.methods.fade import FadeConfig, FadePipeline  # noqa: E402
from fade_cli.prompts.text import TextEncoderCache  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def sync(backbone) -> None:
    if backbone.device.type == "cuda":
        torch.cuda.synchronize(backbone.device)


def build(method: str, backbone, args, cache_dir: Path):
    cache = TextEncoderCache(backbone, cache_dir)
    if method == "fade":
        config = FadeConfig(seg_scales=args.scale_list, seg_prompts=tuple(args.seg_prompts.split(",")),
                            vision_multiplier=args.vision_multiplier or None)
        return FadePipeline.from_config(backbone, config, "bottle", None, cache)
    config = AlfaConfig(windows=tuple(int(w) for w in args.windows.split(",")), prompt_filter=args.prompt_filter)
    return AlfaPipeline.from_config(backbone, config, "bottle", None, cache)


def timed_run(pipe, queries, warmup: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(maps (N, G, G), scores (N,), seconds per image), batch 1, after `warmup` images."""
    for im in queries[:warmup]:
        pipe([im])  # warm-up (allocator, thread pools, kernel selection)
    sync(pipe.backbone)
    t = time.perf_counter()
    results = [r for im in queries for r in pipe([im])]
    sync(pipe.backbone)
    per_image = (time.perf_counter() - t) / len(queries)
    return torch.stack([r.map for r in results]), torch.tensor([r.score for r in results]), per_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--scales", default="240,448,896", help="FADE segmentation scales (classification at 240)")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--methods", default="fade,alfa")
    ap.add_argument("--precisions", default="bf16,fp16", help="reduced precisions compared with fp32")
    ap.add_argument("--windows", default="2,3", help="ALFA window sizes")
    ap.add_argument("--prompt-filter", default="alfa", help="ALFA's run-time prompt filter: alfa, filo or none")
    ap.add_argument("--seg-prompts", default="winclip,fade-llm")
    ap.add_argument("--vision-multiplier", type=float, default=1.0, help="FADE's; 0: its default (80, saturates random weights)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up images per method and precision")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")), help="'' to append nothing")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.scale_list = tuple(int(s) for s in args.scales.split(","))
    methods = args.methods.split(",")
    precisions = [p for p in args.precisions.split(",") if p]
    if bad := [p for p in precisions if p not in DTYPES or p == "fp32"] + [m for m in methods if m not in ("fade", "alfa")]:
        ap.error(f"unknown precision or method: {', '.join(bad)}")

    cache_root = Path(tempfile.mkdtemp(prefix="fade-bench-cache-"))
    t0 = time.perf_counter()
    fp32 = load_backbone(args.model, "none", args.device, "fp32")
    print(f"model: {time.perf_counter() - t0:.1f} s, device {fp32.device}, {torch.get_num_threads()} threads", flush=True)
    v = fp32.model.visual
    width, layers = v.conv1.out_channels, len(v.transformer.resblocks)
    flops = {
        "fade": sum(vit_flops(width, layers, (s // 16) ** 2 + 1, 6) for s in sorted(set(args.scale_list) | {240})),
        "alfa": alfa_flops(width, layers, 240 // fp32.patch_size, tuple(int(w) for w in args.windows.split(","))),
    }
    queries = images(args.images)
    rows = []
    for method in methods:
        base = None
        for precision in ["fp32", *precisions]:
            backbone = dataclasses.replace(fp32, dtype=DTYPES[precision])  # same model object, autocast
            t = time.perf_counter()
            pipe = build(method, backbone, args, cache_root)
            setup = time.perf_counter() - t
            if backbone.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(backbone.device)
            maps, scores, per_image = timed_run(pipe, queries, args.warmup)
            memory = (f"peak GPU {torch.cuda.max_memory_allocated(backbone.device) / 2**20:.0f} MiB"
                      if backbone.device.type == "cuda" else f"peak RSS {peak_rss_mb():.0f} MB")
            line = f"{method} {precision}: {per_image:.3f} s/image, {flops[method] / per_image / 1e9:.0f} GFLOP/s, setup {setup:.1f} s, {memory}"
            if base is None:
                base = (maps, scores, per_image)
                line += f", map range [{maps.min():.3f}, {maps.max():.3f}], {float((maps >= 1).float().mean()) * 100:.0f}% at 1"
            else:
                d_map = float((maps - base[0]).abs().max())
                d_score = float((scores - base[1]).abs().max())
                mean_map = float((maps - base[0]).abs().mean())
                line += (f", max |Δ map| {d_map:.2e} (mean {mean_map:.1e}), max |Δ score| {d_score:.2e}, "
                         f"{base[2] / per_image:.2f}× fp32 speed")
            print(line, flush=True)
            rows.append({"what": f"{method} {precision}", "seconds": round(per_image, 3),
                         "gflops": round(flops[method] / per_image / 1e9, 1),
                         "scales": args.scales if method == "fade" else "240"})

    if args.csv:
        append_results(args.csv, rows, device=args.device, scales=args.scales, batch=1)


if __name__ == "__main__":
    main()
