"""Prompt encoding speed: truncated batches (fade) vs the full 77-token context (open_clip).

    python bench/bench_text.py [--banks winclip,fade-llm] [--model ViT-B-16-plus-240]
Prints seconds for both, the speed-up, and the max difference of the embeddings.
"""

import argparse
import time

import torch

from fade_cli.model.backbone import load_backbone
from fade_cli.prompts.text import DEFAULT_FRAME
from fade_cli.prompts.banks import load_bank


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--banks", default="winclip,fade-llm")
    ap.add_argument("--class-name", default="object")
    args = ap.parse_args()
    bb = load_backbone(args.model, "none", "cpu")
    texts = []
    for name in args.banks.split(","):
        b = load_bank(name)
        texts += b.texts("normal", args.class_name) + b.texts("anomalous", args.class_name)
    framed = [DEFAULT_FRAME.replace("{prompt}", t) for t in texts]
    lengths = bb.tokenizer(framed).argmax(dim=-1) + 1
    t = time.perf_counter()
    ours = bb.encode_texts(framed)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
        ref = torch.cat([bb.model.encode_text(bb.tokenizer(framed[i : i + 64]), normalize=True) for i in range(0, len(framed), 64)])
    t_full = time.perf_counter() - t
    print(f"{len(texts)} prompts (tokens: mean {lengths.float().mean():.1f}, max {int(lengths.max())} of 77)")
    print(f"full 77-token context, batches of 64: {t_full:.2f} s")
    print(f"fade (sorted, truncated batches):     {t_ours:.2f} s  -> {t_full / t_ours:.1f}x faster")
    print(f"max |difference| of embeddings: {(ours - ref).abs().max():.2e}")


if __name__ == "__main__":
    main()
