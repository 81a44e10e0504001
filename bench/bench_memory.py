"""Peak memory per scale and batch size, for docs/limits.md.

Each measurement runs in a fresh process (peak RSS only grows): load the full-size model, then
embed a batch at one scale on the GEM + CLIP paths, and report the peak RSS above the
model-loaded baseline (CPU) or torch's peak allocated memory (CUDA).

    python bench/bench_memory.py                     # scales 240, 448, 896; batches 1 and 8
    python bench/bench_memory.py --device cuda --batches 1,8,32 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def measure(model: str, scale: int, batch: int, device: str, precision: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from fade_cli.model.backbone import load_backbone, preprocess_batch

    backbone = load_backbone(model, "none", device, precision)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (700, 700, 3), dtype=np.uint8)) for _ in range(batch)]
    pixels = preprocess_batch(imgs, scale)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    backbone.encode_images(pixels, want_cls=True, want_clip=True, want_gem=True)
    out = {"scale": scale, "batch": batch, "device": str(backbone.device),
           "peak_rss_above_model_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)}
    if backbone.device.type == "cuda":
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--scales", default="240,448,896")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16, or fp16 (CUDA only)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: "scale,batch" measured in this process
    args = ap.parse_args()
    if args.one:
        scale, batch = (int(x) for x in args.one.split(","))
        print(json.dumps(measure(args.model, scale, batch, args.device, args.precision)))
        return
    print("scale  batch  peak memory above the loaded model")
    for scale in (int(s) for s in args.scales.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            res = subprocess.run([sys.executable, __file__, "--model", args.model, "--device", args.device, "--precision", args.precision,
                                  "--one", f"{scale},{batch}"], capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            extra = f", CUDA peak {r['cuda_peak_allocated_mb']} MB" if "cuda_peak_allocated_mb" in r else ""
            print(f"{scale:5d}  {batch:5d}  {r['peak_rss_above_model_mb']} MB RSS{extra}", flush=True)


if __name__ == "__main__":
    main()
