"""A made-up `fade segment --out` folder (small pictures, manifest rows, run.json with failures),
to measure and test the review page at thousands of images without running a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.io import heatmap_colors


def write_synthetic_run(out: Path, n: int, *, failed: int = 0, size: int = 64, seed: int = 0,
                        threshold: float = 0.5, regions: bool = True) -> Path:
    """Write `n` rows (inputs under out/inputs, overlay and mask under out/) and `failed` failures.

    Scores are uniform in [0, 1); every row carries a `regions` list like `fade segment`'s."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    scores = rng.random(n)
    lines = []
    for i, score in enumerate(scores):
        stem = f"part_{i:05d}"
        src = out / "inputs" / f"{stem}.png"
        base = rng.integers(40, 200, size=(size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((size, size), Image.NEAREST).save(src)
        heat = np.zeros((size, size), dtype=np.float32)
        y, x = rng.integers(size // 8, size - size // 8, size=2)
        r = max(2, int(score * size / 4))
        heat[max(0, y - r):y + r, max(0, x - r):x + r] = score
        Image.blend(Image.open(src).convert("RGB"), Image.fromarray(heatmap_colors(heat)), 0.5).save(out / f"{stem}.overlay.png")
        Image.fromarray(((heat >= 0.5) * 255).astype(np.uint8)).save(out / f"{stem}.mask.png")
        row = {"path": str(src), "class": "part", "score": round(float(score), 6), "anomalous": bool(score >= threshold),
               "threshold": threshold, "ms": 12.5, "method": "fade", "shots": 0, "banks": ["winclip@1.0.0"],
               "map_max": round(float(score), 6), "anomalous_fraction": round(float((heat >= 0.5).mean()), 6),
               "outputs": {"overlay": str(out / f"{stem}.overlay.png"), "mask": str(out / f"{stem}.mask.png")}}
        if regions:
            x0, y0, x1, y1 = int(max(0, x - r)), int(max(0, y - r)), int(min(size, x + r)), int(min(size, y + r))
            row["regions"] = [{"bbox": [x0, y0, x1, y1], "area": (x1 - x0) * (y1 - y0), "peak": row["map_max"],
                               "mean": row["map_max"]}] if score >= 0.5 else []
        lines.append(json.dumps({**row, "input": str(src), "settings": "synthetic"}))
    (out / "manifest.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
    failures = [{"input": str(out / "inputs" / f"broken_{k}.png"), "error": "not an image, or an unsupported format"}
                for k in range(failed)]
    (out / "run.json").write_text(json.dumps({"settings": {"method": "fade", "model": "synthetic", "threshold": threshold,
                                                           "pixel_threshold": 0.5}, "failures": failures}))
    return out
