"""MuSc cost: embedding pass vs mutual scoring, and peak memory, for subsets of N images.

Two measurements, each N in a fresh process (peak RSS only grows):

  full      the whole method at full size (random-init ViT-B-16-plus-240, --scale px): N
            synthetic 700×700 images embedded in chunks of --batch, then one subset scored
            (with --queries q < N: the aggregation in full, the MSM of q query images timed
            and scaled by N/q). Prints embedding and scoring seconds and the peak RSS above
            the loaded model.
  scoring   mutual scoring alone on random unit features of the full-size shapes (N images,
            --layers-count layers, (scale/16)² patches, width 896): the LNAMD aggregation of
            every (layer, r) is timed in full; the MSM of --queries query images per (layer, r)
            is timed and multiplied by N/queries (every query image costs the same: one
            product against all N images). Prints measured and extrapolated seconds, and the
            peak RSS of holding the tokens and scoring them.

    python bench/bench_musc.py full --n 16 --queries 4          # CPU here: ~2-3 min
    python bench/bench_musc.py scoring --n 16,64,200 --queries 2
    python bench/bench_musc.py full --n 16,64,200 --device cuda   # on a GPU
    ... --csv bench/results.csv                                     # also append the numbers there
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure_full(n: int, scale: int, batch: int, device: str, queries: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from fade_cli.model.backbone import load_backbone
    from fade_cli.methods import musc
    from fade_cli.methods.musc_batch import MuscEmbeddings, MuscOptions, MuscPipeline

    backbone = load_backbone("ViT-B-16-plus-240", "none", device)
    pipeline = MuscPipeline(backbone, MuscOptions(scale=scale), "object")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (700, 700, 3), dtype=np.uint8)) for _ in range(n)]
    base = _rss_mb()
    if backbone.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    emb = MuscEmbeddings.concat([pipeline.embed(images[i : i + batch]) for i in range(0, n, batch)])
    _sync(backbone.device)
    embed_s = time.perf_counter() - t
    print(json.dumps({"n": n, "embed_s": round(embed_s, 2)}), file=sys.stderr, flush=True)  # survives a timeout
    out = {"mode": "full", "n": n, "scale": scale, "device": str(backbone.device), "layers": list(pipeline.options.layers),
           "embed_s": round(embed_s, 2), "embed_s_per_image": round(embed_s / n, 3)}
    t = time.perf_counter()
    if queries >= n:  # the method's own scoring call, all of it
        pipeline.score(emb)
        _sync(backbone.device)
        out.update(score_s=round(time.perf_counter() - t, 2), score_s_per_image=round((time.perf_counter() - t) / n, 3))
    else:  # every (layer, r) aggregated in full, the MSM of `queries` query images timed and scaled by n/queries
        aggregate_s = msm_s = 0.0
        for k in range(emb.tokens.shape[1]):
            for r in pipeline.options.r_values:
                t = time.perf_counter()
                z = musc.aggregate(emb.tokens[:, k], r)
                _sync(backbone.device)
                aggregate_s += time.perf_counter() - t
                t = time.perf_counter()
                musc.mutual_scores(z, queries=range(queries))
                _sync(backbone.device)
                msm_s += time.perf_counter() - t
        total = aggregate_s + msm_s * n / queries
        out.update(queries_timed=queries, aggregate_s=round(aggregate_s, 2), msm_s_measured=round(msm_s, 2),
                   score_s_extrapolated=round(total, 1), score_s_per_image_extrapolated=round(total / n, 2))
    out["peak_rss_above_model_mb"] = round(_rss_mb() - base)
    if backbone.device.type == "cuda":
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def measure_scoring(n: int, scale: int, layers: int, queries: int, device: str) -> dict:
    import torch

    from fade_cli.methods import musc

    grid = scale // 16
    base = _rss_mb()
    gen = torch.Generator().manual_seed(0)
    tokens = [torch.randn(n, grid * grid, 896, generator=gen).to(device) for _ in range(layers)]
    queries = min(queries, n)
    aggregate_s = msm_s = 0.0
    for layer in tokens:
        for r in musc.DEFAULT_R_VALUES:
            t = time.perf_counter()
            z = musc.aggregate(layer, r)
            _sync(device)
            aggregate_s += time.perf_counter() - t
            t = time.perf_counter()
            musc.mutual_scores(z, queries=range(queries))
            _sync(device)
            msm_s += time.perf_counter() - t
            del z
    runs = layers * len(musc.DEFAULT_R_VALUES)
    total = aggregate_s + msm_s * n / queries
    return {"mode": "scoring", "n": n, "scale": scale, "patches": grid * grid, "layers": layers, "runs": runs,
            "queries_timed": queries, "aggregate_s": round(aggregate_s, 2), "msm_s_measured": round(msm_s, 2),
            "score_s_extrapolated": round(total, 1), "score_s_per_image_extrapolated": round(total / n, 2),
            "gflop_msm": round(2 * n * n * (grid * grid) ** 2 * 896 * runs / 1e9),
            "peak_rss_above_start_mb": round(_rss_mb() - base),
            "token_mb": round(layers * n * grid * grid * 896 * 4 / 2**20)}


def _append_csv(path: str, r: dict, args) -> None:
    """One row per measured quantity, in bench/results.csv's columns."""
    import csv
    import os
    import platform
    from pathlib import Path

    import torch

    machine = f"{platform.processor() or platform.machine()} x{os.cpu_count()} torch{torch.__version__} threads{torch.get_num_threads()}"
    peak = r.get("peak_rss_above_model_mb", r.get("peak_rss_above_start_mb"))
    rows = [("embed", r.get("embed_s")), ("score", r.get("score_s")), ("score_extrapolated", r.get("score_s_extrapolated"))]
    new = not Path(path).exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["date", "machine", "device", "scales", "batch", "what", "seconds", "gflops", "peak_rss_mb"])
        if new:
            w.writeheader()
        for what, seconds in rows:
            if seconds is not None:
                w.writerow({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine, "device": args.device,
                            "scales": str(args.scale), "batch": args.batch, "what": f"musc_{r['mode']}_n{r['n']}_{what}",
                            "seconds": seconds, "gflops": "", "peak_rss_mb": peak})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("full", "scoring"))
    ap.add_argument("--n", default="16", help="comma-separated subset sizes")
    ap.add_argument("--scale", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4, help="full: images per embedding forward")
    ap.add_argument("--layers-count", type=int, default=4, help="scoring: number of layers")
    ap.add_argument("--queries", type=int, default=0,
                    help="query images whose MSM is timed per (layer, r), the rest extrapolated; 0: all (full), 2 (scoring)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", help="also append the results to this CSV (bench/results.csv's columns)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure this N here
    args = ap.parse_args()
    if args.one is not None:
        result = (measure_full(args.one, args.scale, args.batch, args.device, args.queries or args.one) if args.mode == "full"
                  else measure_scoring(args.one, args.scale, args.layers_count, args.queries or 2, args.device))
        print(json.dumps(result))
        return
    import torch

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}")
    for n in (int(x) for x in args.n.split(",")):
        cmd = [sys.executable, __file__, args.mode, "--one", str(n), "--scale", str(args.scale), "--batch", str(args.batch),
               "--layers-count", str(args.layers_count), "--queries", str(args.queries), "--device", args.device]
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr passes through: partial times
        if res.returncode:
            print(f"N={n}: failed (exit {res.returncode})")
            continue
        line = res.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        if args.csv:
            _append_csv(args.csv, json.loads(line), args)


if __name__ == "__main__":
    main()
