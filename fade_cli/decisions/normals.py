"""Normal scores of good images, as the method scores a line's images: what thresholds are
calibrated from (fade_cli/decisions/calibration.py, docs/calibration.md).

- `leave_one_out`: each reference of a few-shot bank scored against a bank of the *other*
  references, with the same method and settings (`fade bank build`). A bank of n − 1 images
  scores a little higher than the bank of n used later, so the threshold errs high.
- `score_normals`: held-out good images scored by a pipeline as it is, zero-shot or with its
  reference bank (`fade calibrate`).
Both keep every image score and `PIXELS_PER_IMAGE` map values per image, drawn from the map at
the image's size (the map `fade segment` thresholds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .calibration import PIXELS_PER_IMAGE, CalibrationError, NormalScores, sample_pixels


def full_size_map(grid_map, size: tuple[int, int]) -> np.ndarray:
    """A (G, G) map at an image's (w, h) size, clipped to [0, 1], as `fade segment` writes it."""
    from ..methods.guidance import resize_map

    w, h = size
    return resize_map(grid_map[None].float(), (h, w))[0].clamp(0, 1).numpy().astype(np.float32)


def settings_of(pipeline) -> dict:
    """What a calibration is only valid for: model, weights, method, its settings, prompts and class."""
    backbone = pipeline.backbone
    return _as_json({"model": backbone.model_name, "weights_id": backbone.weights_id, "method": pipeline.method_label,
                     "config": pipeline.config.as_dict(), "banks": pipeline.banks, "class": pipeline.class_name})


def _as_json(value):
    """As it reads back from a file (tuples become lists), so saved and live settings compare."""
    return json.loads(json.dumps(value, default=str))


def check_settings(scores: NormalScores, pipeline, source: str) -> None:
    """Refuse normal scores made with another model, method or settings than this run's."""
    made, now = scores.meta.get("settings") or {}, settings_of(pipeline)
    for key in ("model", "weights_id", "method", "banks", "class", "config"):
        if made.get(key) != now[key]:
            if key == "config":
                diff = sorted(k for k in set(made.get(key) or {}) | set(now[key])
                              if (made.get(key) or {}).get(k) != now[key].get(k))
                what = f"other settings ({', '.join(diff)})"
            else:
                what = f"another {key}, {made.get(key)!r} (this run: {now[key]!r})"
            how = scores.meta.get("how")
            hint = (" (zero-shot normal scores for a few-shot run?)" if how == "zero-shot" and pipeline.few_shot else
                    " (few-shot normal scores for a zero-shot run?)" if how != "zero-shot" and not pipeline.few_shot else "")
            raise CalibrationError(f"{source}: normal scores made with {what}{hint}; calibrate again with this run's options")


def _pixels(result, image: Image.Image, seed: int, count: int) -> np.ndarray | None:
    return None if result.map is None else sample_pixels(full_size_map(result.map, image.size), count, seed)


def score_normals(pipeline, images: Sequence[Image.Image], paths: Sequence[Path], class_name: str,
                  batch_size: int = 1, pixels_per_image: int = PIXELS_PER_IMAGE,
                  on_image: Callable[[], None] | None = None) -> NormalScores:
    """Good images scored by `pipeline` as it stands (zero-shot, or with its own bank)."""
    image_scores, pixels = [], []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        for i, (img, res) in enumerate(zip(chunk, pipeline(chunk))):
            image_scores.append(res.score)
            pixels.append(_pixels(res, img, start + i, pixels_per_image))
            if on_image:
                on_image()
    how = "held-out" if pipeline.few_shot else "zero-shot"
    return _normal_scores(image_scores, pixels, pipeline, class_name, paths, how)


def leave_one_out(pipeline, images: Sequence[Image.Image], paths: Sequence[Path], class_name: str,
                  pixels_per_image: int = PIXELS_PER_IMAGE, on_image: Callable[[], None] | None = None) -> NormalScores:
    """Each of the n images of `pipeline`'s reference bank (built from `images`, in that order)
    scored few-shot against the bank without its own patches: every image is embedded once more,
    as a query; the banks of the others are slices of the bank."""
    bank = pipeline.reference_bank
    if bank is None or not pipeline.few_shot:
        raise CalibrationError("leave-one-out calibration needs a few-shot pipeline with its reference bank")
    n = len(images)
    if n < 2:
        raise CalibrationError("leave-one-out calibration needs at least 2 reference images")
    if int(bank.meta.get("n_images", 0)) != n or any(t.shape[0] % n for t in [*bank.patches.values(), *bank.arrays.values()]):
        raise CalibrationError(f"the reference bank does not hold {n} images' patches in order")
    image_scores, pixels = [], []
    for i, img in enumerate(images):
        res = pipeline.score(pipeline.embed([img]), bank_without(bank, i, n))[0]
        image_scores.append(res.score)
        pixels.append(_pixels(res, img, i, pixels_per_image))
        if on_image:
            on_image()
    return _normal_scores(image_scores, pixels, pipeline, class_name, paths, "leave-one-out")


def bank_without(bank, i: int, n: int):
    """`bank` (n images, equal patch counts per image and scale) without image i's patches (and
    its rows of the bank's per-image `arrays`)."""
    import torch

    def without(t):
        per = t.shape[0] // n
        return torch.cat([t[: i * per], t[(i + 1) * per:]])

    # per-image arrays a method keeps with its bank (rows in reference order) are sliced alike
    return type(bank)(patches={scale: without(t) for scale, t in bank.patches.items()},
                      meta=dict(bank.meta, n_images=n - 1), arrays={k: without(t) for k, t in bank.arrays.items()})


def _normal_scores(image_scores, pixels, pipeline, class_name, paths, how) -> NormalScores:
    meta = {"class": class_name, "how": how, "settings": settings_of(pipeline), "images": [str(p) for p in paths]}
    stacked = None if any(p is None for p in pixels) else np.stack(pixels)
    return NormalScores(np.asarray(image_scores, dtype=np.float64), stacked, meta)
