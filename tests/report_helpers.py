"""Helpers of the review-page tests: the page's inline data, and a small made-up eval folder."""

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from fade_cli.evaluation import metrics


def page_data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="fade-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(block)


def eval_folder(tmp_path: Path, with_curves: bool = True):
    rng = np.random.default_rng(2)
    images, scores = [], []
    for i in range(12):
        label = int(i >= 6)
        p = tmp_path / "data" / ("bad" if label else "good") / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        s = float(rng.random() * 0.5 + 0.4 * label)
        images.append({"path": str(p), "label": label, "defect": "bad" if label else "good", "scores": {"0shot_seed0": s}})
        scores.append(s)
    labels = np.array([im["label"] for im in images])
    curves = {}
    m = {k: round(v, 4) for k, v in metrics.evaluate(labels, np.array(scores), curves=curves).items()}
    run = {"shots": 0, "seed": 0, "references": [], "metrics": m, **({"curves": curves} if with_curves else {})}
    cr = {"class": "widget", "runs": [run], "images": images}
    summary = {"classes": {"widget": {"0": {k: {"mean": v, "std": 0.0, "n": 1} for k, v in m.items()}}},
               "mean": {"0": {k: {"mean": v, "std": 0.0, "n": 1} for k, v in m.items()}}}
    return summary, [cr], {"dataset": "folder", "method": "fade", "model": "tiny"}, images
