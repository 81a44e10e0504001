"""The operating point a line would see, for `fade eval`: thresholds calibrated from the
class's train/good images only, then the false-alarm and miss rates they give on the test set
(beside the threshold-free AUROC / PRO; docs/calibration.md)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .calibration import SCORE_MAX, CalibrationError, Threshold, pixel_threshold, quantile_threshold, rates_at


def calibration_sample(train: Sequence, count: int) -> list:
    """`count` train images spread evenly over the path-sorted list (all of them if fewer):
    deterministic, and independent of the seeds that choose the few-shot references."""
    ordered = sorted(train, key=lambda s: str(getattr(s, "image", s)))
    if count >= len(ordered):
        return ordered
    picks = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [ordered[i] for i in picks]


def _point(t: Threshold, measured: dict) -> dict:
    return {"threshold": round(t.value, 6), "estimator": t.estimator, "normal": t.n,
            "expected_false_alarm": [round(v, 6) for v in t.interval],
            "false_alarm_rate": measured["false_alarm_rate"], "miss_rate": measured["miss_rate"]}


def operating_point(rate: float, normal_scores: Sequence[float], normal_pixels: np.ndarray | None,
                    test_scores: Sequence[float], labels: Sequence[int], test_maps: np.ndarray | None = None,
                    masks: np.ndarray | None = None) -> dict:
    """Calibrate at `rate` from the normal scores, measure on the test set.

    normal_pixels: (n, m) map values of the normal images; test_maps and masks: (N, H, W) at
    the evaluation size. Returns {"false_alarm_rate_asked", "image": {...}, "pixel": {...}}
    with measured rates (fractions) and the interval the calibration expected; or
    {"skipped": reason} when the normal images are too few."""
    try:
        t = quantile_threshold(normal_scores, rate, upper=SCORE_MAX)
    except CalibrationError as exc:
        return {"false_alarm_rate_asked": rate, "skipped": str(exc)}
    out = {"false_alarm_rate_asked": rate, "image": _point(t, rates_at(t.value, test_scores, labels))}
    if normal_pixels is not None and test_maps is not None and masks is not None:
        pt = pixel_threshold(normal_pixels, rate, upper=SCORE_MAX)
        out["pixel"] = _point(pt, rates_at(pt.value, test_maps, masks))
    return out


def score_calibration_images(zero, few, banks: dict, references: dict, samples: Sequence, eval_size: int,
                             batch_size: int, extra_features=(), load=None) -> dict:
    """Normal image scores and pixel samples (at the evaluation size) of `samples` under every
    run: zero-shot runs with `zero`, few-shot ones with `few` and their bank. A run's own
    references are left out of its calibration (their distance to the bank is zero).
    Each image is embedded once. Returns {run: (scores, pixels (n, m))}."""
    from .calibration import sample_pixels
    from .normals import full_size_map

    out = {run: ([], []) for run in references}
    if getattr(zero, "scores_whole_batch", False):
        # a batch method (MuSc) scores good images against each other: the calibration images are
        # one subset, embedded `batch_size` at a time; such methods are zero-shot only
        parts = [zero.embed([load(s.image) for s in samples[i:i + batch_size]], extra_features=extra_features)
                 for i in range(0, len(samples), batch_size)]
        results = zero.score(zero.concat_embeddings(parts)) if len(samples) >= 2 else []
        for run in references:
            for i, res in enumerate(results):
                out[run][0].append(res.score)
                out[run][1].append(sample_pixels(full_size_map(res.map, (eval_size, eval_size)), seed=i))
        return {run: (scores, np.stack(pixels) if pixels else None) for run, (scores, pixels) in out.items()}
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start:start + batch_size])
        embeddings = zero.embed([load(s.image) for s in chunk], extra_features=extra_features)
        for run, refs in references.items():
            results = few.score(embeddings, banks[run]) if run in banks else zero.score(embeddings)
            for i, (s, res) in enumerate(zip(chunk, results)):
                if s.image in refs:
                    continue
                out[run][0].append(res.score)
                out[run][1].append(sample_pixels(full_size_map(res.map, (eval_size, eval_size)), seed=start + i))
    return {run: (scores, np.stack(pixels) if pixels else None) for run, (scores, pixels) in out.items()}
