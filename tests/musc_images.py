"""Synthetic product photos for the MuSc tests: one textured object, optionally one defect."""

from __future__ import annotations

import numpy as np
from PIL import Image


def product_images(n: int, defect: int | None = None, seed: int = 0) -> list[Image.Image]:
    """n noisy photos of one textured 'product'; image `defect` gets a magenta square."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(base).resize((128, 128), Image.NEAREST)).astype(int)
    out = []
    for i in range(n):
        a = np.clip(base + rng.integers(-10, 10, base.shape), 0, 255)
        if i == defect:
            a[64:96, 32:64] = [255, 0, 255]
        out.append(Image.fromarray(a.astype(np.uint8)))
    return out
