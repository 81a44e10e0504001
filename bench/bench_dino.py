"""DINOv2 vision guidance (AnomalyDINO-style, fade_cli/methods/anomalydino.py) speed and memory.

For each backbone (ViT-S/14, ViT-B/14 by default, random init: the same computation as the
released weights) and shot count, in a fresh process (peak RSS only grows): build the reference
bank (with `--augment rotate`, 8 forwards per reference), then score query images (forward,
foreground mask, 1-NN against the bank, top-1 % score, map with σ = 4 smoothing). Prints seconds
for the bank and per image (wall clock, and this process's CPU seconds, which move less on a
shared machine), the bank's size and the peak memory above the loaded model (RSS on
CPU, torch's peak allocation on CUDA). Only the DINOv2 vision part is timed: the CLIP language
part of `--method dino` costs what FADE's language part costs (bench_fade.py).

    python bench/bench_dino.py                                   # S/14 and B/14, 1 and 4 shots
    python bench/bench_dino.py --models vit_small_patch14_dinov2 --shots 1 --augment none
    python bench/bench_dino.py --device cuda --images 20
Results are printed and appended to bench/results.csv with the machine description.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_fade import append_results, images  # noqa: E402

MODELS = "vit_small_patch14_dinov2,vit_base_patch14_dinov2"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(model: str, shots: int, n_images: int, augment: str, size: int, device: str) -> dict:
    import torch

    from fade_cli.methods.anomalydino import build_dino_bank, foreground_pca, score_images
    from fade_cli.model.dino import load_dino_backbone

    t = time.perf_counter()
    backbone = load_dino_backbone(model, "none", device, size=size)
    t_model = time.perf_counter() - t
    refs, queries = images(shots, (640, 640)), images(n_images + 1, (700, 700))
    backbone.weights_id  # fingerprint once, outside the timings (the bank records it)
    base = rss_mb()
    cuda = backbone.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t, c = time.perf_counter(), time.process_time()
    bank = build_dino_bank(backbone, refs, augment)
    if cuda:
        torch.cuda.synchronize()
    t_bank, c_bank = time.perf_counter() - t, time.process_time() - c
    pca = foreground_pca(bank)  # fitted once per bank (a pipeline caches it)
    score_images(backbone, bank, queries[:1], pca, out_grid=56)  # warm-up
    t, c = time.perf_counter(), time.process_time()
    for q in queries[1:]:
        score_images(backbone, bank, [q], pca, out_grid=56)
    if cuda:
        torch.cuda.synchronize()
    per_image, cpu_per_image = (time.perf_counter() - t) / n_images, (time.process_time() - c) / n_images
    bank_bytes = sum(x.numel() * x.element_size() for x in (*bank.patches.values(), *bank.arrays.values()))
    out = {"model": model, "shots": shots, "augment": augment, "model_s": round(t_model, 2),
           "bank_s": round(t_bank, 3), "bank_cpu_s": round(c_bank, 2),
           "per_image_s": round(per_image, 3), "per_image_cpu_s": round(cpu_per_image, 3),
           "bank_patches": int(bank.patches[size].shape[0]), "bank_mb": round(bank_bytes / 2**20, 1),
           "peak_rss_above_model_mb": round(rss_mb() - base), "peak_rss_mb": round(rss_mb())}
    if cuda:
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=MODELS, help="comma-separated timm DINOv2 names")
    ap.add_argument("--shots", default="1,4")
    ap.add_argument("--images", type=int, default=2, help="query images timed (after one warm-up)")
    ap.add_argument("--augment", default="rotate", choices=("none", "rotate"))
    ap.add_argument("--size", type=int, default=448, help="short side of the DINOv2 input")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", default=str(Path(__file__).with_name("results.csv")), help="'' to append nothing")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: "model,shots" measured in this process
    args = ap.parse_args()
    if args.one:
        model, shots = args.one.split(",")
        print(json.dumps(measure(model, int(shots), args.images, args.augment, args.size, args.device)))
        return
    rows = []
    for model in args.models.split(","):
        for shots in (int(s) for s in args.shots.split(",")):
            res = subprocess.run([sys.executable, __file__, "--one", f"{model},{shots}", "--images", str(args.images),
                                  "--augment", args.augment, "--size", str(args.size), "--device", args.device],
                                 capture_output=True, text=True)
            if res.returncode:
                print(f"{model} {shots}-shot failed: {res.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            extra = f", CUDA peak {r['cuda_peak_allocated_mb']} MB" if "cuda_peak_allocated_mb" in r else ""
            print(f"{model} {shots}-shot (refs {args.augment}): bank {r['bank_s']:.2f} s [CPU {r['bank_cpu_s']:.1f} s] "
                  f"({r['bank_patches']} patches, {r['bank_mb']} MB), {r['per_image_s']:.3f} s/image "
                  f"[CPU {r['per_image_cpu_s']:.2f} s], peak RSS +{r['peak_rss_above_model_mb']} MB{extra}", flush=True)
            what = f"dino {model} {shots}-shot {args.augment}"
            peak = {"peak_rss_mb": r["peak_rss_mb"]}
            rows += [{"what": f"{what} bank", "seconds": r["bank_s"], **peak},
                     {"what": f"{what} per image", "seconds": r["per_image_s"], **peak}]
    if args.csv and rows:
        append_results(args.csv, rows, device=args.device, scales=str(args.size), batch=1)


if __name__ == "__main__":
    main()
