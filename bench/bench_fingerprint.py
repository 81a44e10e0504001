"""Weights fingerprint speed on a full-size model (random init, no download).

    python bench/bench_fingerprint.py [--model ViT-B-16-plus-240] [--repeat 3]
Prints the tensor count and size, the first (uncached) fingerprint time, the best of --repeat
uncached times, and the time of a cached call.
"""

import argparse
import time

import open_clip
import torch

from fade_cli.model.fingerprint import weights_fingerprint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model = open_clip.create_model(args.model, pretrained=None).to(args.device)
    tensors = [*model.parameters(), *model.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    print(f"{args.model} on {args.device}: {len(tensors)} tensors, {sum(t.numel() for t in tensors) / 1e6:.1f}M values, {size / 2**20:.0f} MiB")
    t = time.perf_counter()
    first = weights_fingerprint(model)
    print(f"first call:  {time.perf_counter() - t:.3f} s  ({first[:16]}...)")
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        assert weights_fingerprint(model, cache=False) == first
        times.append(time.perf_counter() - t)
    print(f"uncached, best of {args.repeat}: {min(times):.3f} s  ({size / 2**20 / min(times):.0f} MiB/s)")
    t = time.perf_counter()
    weights_fingerprint(model)
    print(f"cached call: {(time.perf_counter() - t) * 1e3:.2f} ms")


if __name__ == "__main__":
    with torch.no_grad():
        main()
