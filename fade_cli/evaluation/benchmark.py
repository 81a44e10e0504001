"""Evaluation: the papers' per-class tables on MVTec-AD, VisA or a plain folder.

For one class, every test image is embedded once; each (shots, seed) configuration then scores
those embeddings with its own reference bank (the references chosen as the official code does
for that seed). Maps are kept at the patch grid and resized to the evaluation size (448 by
default) per configuration when its metrics are computed, so memory stays small.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.datasets import ClassSplit, DatasetError, load_mask, sample_references
from ..data.io import load_image, overlay, read_ahead, save_npy, save_png
from ..errors import ImageError
from ..methods.memory import MemoryBank
from ..model.backbone import Backbone
from .metrics import evaluate, resize_map, resize_mask

METRIC_KEYS = ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_f1_max", "pro")


@dataclass(frozen=True)
class Run:
    """One evaluated configuration of a class."""

    shots: int
    seed: int

    @property
    def label(self) -> str:
        return f"{self.shots}shot_seed{self.seed}"


def runs_for(shots: Sequence[int], seeds: int) -> list[Run]:
    """0-shot does not depend on the seed: it runs once (seed 0)."""
    return [Run(k, s) for k in sorted(set(shots)) for s in (range(1) if k == 0 else range(seeds))]


@dataclass
class ClassResult:
    class_name: str
    runs: list[dict] = field(default_factory=list)  # {shots, seed, references, metrics}
    images: list[dict] = field(default_factory=list)  # {path, label, defect, scores: {run label: score}}

    def as_dict(self) -> dict:
        return {"class": self.class_name, "runs": self.runs, "images": self.images}


def _bank_for(pipeline, refs: list[Path], cache: dict[Path, MemoryBank]) -> MemoryBank:
    """A k-shot bank from per-image banks, each reference embedded once across seeds."""
    for p in refs:
        if p not in cache:
            try:
                img = load_image(p)
            except ImageError as exc:
                raise DatasetError(f"{p}: {exc}") from None
            cache[p] = pipeline.embed_references([img])
    return MemoryBank.concat([cache[p] for p in refs])


def evaluate_class(
    backbone: Backbone,
    make_pipeline: Callable[[str], object],
    split: ClassSplit,
    runs: Sequence[Run],
    eval_size: int = 448,
    batch_size: int = 1,
    maps_dir: Path | None = None,
    overlays_dir: Path | None = None,
    on_image: Callable[[], None] | None = None,
) -> ClassResult:
    """Metrics of every run of one class (values in percent, as the papers' tables).

    `make_pipeline(class_name)` gives the method's zero-shot pipeline (FADE, ALFA, ...); its
    `few_shot_variant()` scores the same embeddings against each run's reference bank."""
    if not split.test:
        raise DatasetError(f"class {split.class_name}: no test images")
    zero = make_pipeline(split.class_name)
    few = zero.few_shot_variant() if any(r.shots for r in runs) else None
    ref_cache: dict[Path, MemoryBank] = {}
    banks: dict[Run, MemoryBank] = {}
    result = ClassResult(split.class_name)
    for run in runs:
        refs = [s.image for s in sample_references(split.train, run.shots, run.seed)] if run.shots else []
        if run.shots:
            banks[run] = _bank_for(few, refs, ref_cache)
        result.runs.append({"shots": run.shots, "seed": run.seed, "references": [str(p) for p in refs]})

    has_masks = any(s.mask is not None for s in split.test)
    labels, masks = [], []
    scores: dict[Run, list[float]] = {r: [] for r in runs}
    grid_maps: dict[Run, list[torch.Tensor]] = {r: [] for r in runs}
    extra = (few.bank_layout.feature,) if few else ()

    def read(sample):  # in a reader thread: the image, and its mask at the evaluation size
        try:
            image = load_image(sample.image)
        except ImageError as exc:
            raise DatasetError(f"{sample.image}: {exc}") from None
        return image, (resize_mask(load_mask(sample.mask, image.size), eval_size) if has_masks else None)

    with contextlib.closing(read_ahead(split.test, read, ahead=max(2 * batch_size, 8))) as reads:
        while chunk := list(itertools.islice(reads, batch_size)):
            embeddings = zero.embed([image for _, (image, _) in chunk], extra_features=extra)
            outcomes = {r: (few.score(embeddings, banks[r]) if r.shots else zero.score(embeddings)) for r in runs}
            for i, (s, (image, mask)) in enumerate(chunk):
                labels.append(s.label)
                if has_masks:
                    masks.append(mask)
                row = {"path": str(s.image), "label": s.label, "defect": s.defect, "scores": {}}
                for r in runs:
                    res = outcomes[r][i]
                    scores[r].append(res.score)
                    grid_maps[r].append(res.map)
                    row["scores"][r.label] = round(res.score, 6)
                    _save_inspection(maps_dir, overlays_dir, r, split, s.image, image, res.map, eval_size)
                result.images.append(row)
                if on_image:
                    on_image()

    y = np.asarray(labels, dtype=int)
    if y.min() == y.max():
        raise DatasetError(f"class {split.class_name}: the test set has only {'anomalous' if y[0] else 'good'} images; metrics need both")
    mask_arr = np.stack(masks) if has_masks else None
    for entry, r in zip(result.runs, runs):
        maps = resize_map(torch.stack(grid_maps[r]).numpy(), eval_size) if has_masks else None
        entry["metrics"] = {k: round(v, 4) for k, v in evaluate(y, np.asarray(scores[r]), mask_arr, maps).items()}
    return result


def _save_inspection(maps_dir, overlays_dir, run: Run, split: ClassSplit, path: Path, image, grid_map, size: int) -> None:
    if maps_dir is None and overlays_dir is None:
        return
    rel = Path(split.class_name) / run.label / (path.parent.name + "_" + path.stem)
    full = resize_map(grid_map.numpy(), size)
    if maps_dir is not None:
        save_npy((maps_dir / rel).with_suffix(".npy"), full.astype(np.float32))
    if overlays_dir is not None:
        save_png((overlays_dir / rel).with_suffix(".png"), overlay(image.resize((size, size)), full))


def summarize(class_results: Sequence[dict], runs: Sequence[Run]) -> dict:
    """mean ± std over seeds per class and shots; the 'mean' row averages classes per seed first."""
    out: dict = {"classes": {}, "mean": {}}
    shots_values = sorted({r.shots for r in runs})
    for cr in class_results:
        per = out["classes"][cr["class"]] = {}
        for k in shots_values:
            metrics = [run["metrics"] for run in cr["runs"] if run["shots"] == k]
            per[str(k)] = _mean_std(metrics)
    for k in shots_values:
        seeds = sorted({r.seed for r in runs if r.shots == k})
        per_seed = []
        for seed in seeds:
            rows = [run["metrics"] for cr in class_results for run in cr["runs"] if run["shots"] == k and run["seed"] == seed]
            keys = [m for m in METRIC_KEYS if all(m in row for row in rows)]
            per_seed.append({m: float(np.mean([row[m] for row in rows])) for m in keys})
        out["mean"][str(k)] = _mean_std(per_seed)
    return out


def _mean_std(rows: Sequence[dict]) -> dict:
    keys = [m for m in METRIC_KEYS if rows and all(m in r for r in rows)]
    return {m: {"mean": round(float(np.mean([r[m] for r in rows])), 4), "std": round(float(np.std([r[m] for r in rows])), 4),
                "n": len(rows)} for m in keys}


def markdown_table(summary: dict) -> str:
    """One Markdown table: a row per (shots, class) and the mean rows; values mean ± std."""
    names = {"image_auroc": "AUROC", "image_aupr": "AUPR", "image_f1_max": "F1-max",
             "pixel_auroc": "pAUROC", "pixel_f1_max": "pF1-max", "pro": "PRO"}
    present = [m for m in METRIC_KEYS if any(m in v for c in summary["classes"].values() for v in c.values())]
    lines = ["| shots | class | " + " | ".join(names[m] for m in present) + " |",
             "|---|---|" + "---|" * len(present)]

    def cell(stats: dict, m: str) -> str:
        if m not in stats:
            return "–"
        s = stats[m]
        return f"{s['mean']:.1f}" + (f" ± {s['std']:.1f}" if s["n"] > 1 else "")

    for k in summary["mean"]:
        for cls, per in summary["classes"].items():
            lines.append(f"| {k} | {cls} | " + " | ".join(cell(per[k], m) for m in present) + " |")
        lines.append(f"| {k} | **mean** | " + " | ".join(cell(summary["mean"][k], m) for m in present) + " |")
    return "\n".join(lines)
