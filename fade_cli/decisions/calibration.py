"""Thresholds calibrated from good images only, at a chosen false-alarm rate (docs/calibration.md).

A threshold t at false-alarm rate α is the score a new *normal* image reaches (score ≥ t) with
probability α: the (1 − α) quantile of the normal-score distribution, estimated from n normal
scores s_(1) ≤ … ≤ s_(n) (leave-one-out scores of the bank's references, or `fade calibrate`).

- Inside the data, (n + 1)·α ≥ 1: the conformal order statistic t = s_(r), r = ⌈(n + 1)(1 − α)⌉.
  Distribution-free: for continuous scores the rate at which new normal scores reach t is
  Beta(n + 1 − r, r) distributed, with mean (n + 1 − r)/(n + 1) ≤ α.
- Beyond the largest score, (n + 1)·α < 1 (too few references for the rate asked): an
  exponential tail (a generalised Pareto tail with shape 0) is fitted to the excesses of the k
  largest scores over u = s_(n−k): t = u + σ̂·ln(p_u / α), σ̂ the mean excess, p_u = (k + 1)/(n + 1)
  the unbiased estimate of P(S > u). Under that model the achieved rate is B·(α/p_u)^G with
  B ~ Beta(k + 1, n − k) and G ~ Gamma(k, 1/k), independent. Scores are bounded ([0, 1]), so real
  tails are lighter than exponential (shape ≤ 0) and the fit errs high: fewer false alarms than
  asked, more misses. A tail beyond the largest possible score (1) is capped there.

Every threshold carries a 90 % interval of the false-alarm rate it will achieve: exact (Beta)
inside the data, under the exponential model beyond it. Pixel thresholds use the same estimator on
a per-image sample of pixel scores; their interval is a bootstrap over images, because pixels of
one image are not independent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from ..errors import FadeError

DEFAULT_FALSE_ALARM_RATE = 0.01
INTERVAL = 0.90  # two-sided coverage of the stated false-alarm interval
MIN_SCORES = 2  # the tail fit needs one excess at least
PIXELS_PER_IMAGE = 2048  # normal pixel scores kept per reference image
CALIBRATION_FORMAT = 1
SCORE_MAX = 1.0  # every method's scores and maps are clipped to [0, 1]
_DRAWS = 20000  # Monte-Carlo draws for the tail interval (seeded: thresholds are reproducible)


class CalibrationError(FadeError):
    """Normal scores cannot give a threshold (too few, unreadable file, wrong kind)."""


@dataclass(frozen=True)
class Threshold:
    """A calibrated threshold and how far to trust it."""

    value: float
    false_alarm_rate: float  # the rate asked for
    estimator: str  # "empirical" (order statistic) or "exponential-tail"
    n: int  # normal scores it was estimated from (pixels: pixel samples)
    interval: tuple[float, float]  # 90 % interval of the false-alarm rate achieved at `value`
    extrapolated: bool  # beyond the largest normal score: too few scores for the rate asked
    low: float = 0.0  # smallest and largest normal score, for the normalised score
    high: float = 1.0

    def as_dict(self) -> dict:
        return {"value": round(self.value, 6), "false_alarm_rate": self.false_alarm_rate, "estimator": self.estimator,
                "n": self.n, "false_alarm_interval": [round(v, 6) for v in self.interval], "extrapolated": self.extrapolated}

    def warning(self, what: str = "reference images") -> str | None:
        """One line for the user when the threshold is extrapolated, else None."""
        if not self.extrapolated:
            return None
        need = math.ceil(1.0 / self.false_alarm_rate - 1.0)
        capped = " (capped at the largest possible score)" if self.value >= SCORE_MAX else ""
        return (f"{self.n} normal {what} are too few for a false-alarm rate of {self.false_alarm_rate:g} "
                f"(the quantile needs {need}); the threshold {self.value:.4f} is extrapolated by an exponential tail{capped} "
                f"and will give a false-alarm rate between {self.interval[0]:.2g} and {self.interval[1]:.2g} (90 %)")


def _check_rate(rate: float) -> None:
    if not 0.0 < rate < 1.0 or math.isnan(rate):
        raise CalibrationError(f"false-alarm rate {rate}: expected a number between 0 and 1 (e.g. 0.01)")


def _scores(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(arr).all():
        raise CalibrationError("normal scores contain NaN or infinite values")
    if arr.size < MIN_SCORES:
        raise CalibrationError(f"{arr.size} normal score(s): calibration needs at least {MIN_SCORES}")
    return np.sort(arr)


def tail_size(n: int) -> int:
    """Scores in the exponential tail fit: a fifth of them, at least 5, at most n − 1."""
    return max(1, min(n - 1, max(5, math.ceil(0.2 * n))))


def quantile_threshold(values, rate: float, upper: float | None = None) -> Threshold:
    """The threshold that normal scores reach with probability `rate` (module docstring).

    `upper`: the largest value a score can take (1 for every method's scores and maps); a
    tail extrapolated beyond it is capped there, and the interval is that of the capped value."""
    _check_rate(rate)
    s = _scores(values)
    n = s.size
    lo_q, hi_q = (1.0 - INTERVAL) / 2.0, (1.0 + INTERVAL) / 2.0
    r = max(1, math.ceil((n + 1) * (1.0 - rate) - 1e-9))  # tolerance: (n+1)(1−α) is often a whole number
    if r <= n:
        achieved = stats.beta(n + 1 - r, r)
        return Threshold(float(s[r - 1]), rate, "empirical", n, (float(achieved.ppf(lo_q)), float(achieved.ppf(hi_q))),
                         False, float(s[0]), float(s[-1]))
    k = tail_size(n)
    u = float(s[n - k - 1])
    sigma = float(np.mean(s[n - k:] - u))
    p_u = (k + 1) / (n + 1)
    value = u + float(stats.expon(scale=sigma).isf(rate / p_u)) if sigma > 0 else u
    if upper is not None:
        value = max(u, min(value, upper))
    rng = np.random.default_rng(0)
    b = rng.beta(k + 1, n - k, _DRAWS)
    g = rng.gamma(k, 1.0 / k, _DRAWS)
    # P(S >= value) = P(S > u)·exp(−(value − u)/σ), with σ̂/σ ~ Gamma(k, 1/k) under the model
    achieved = b * np.exp(-g * (value - u) / sigma) if sigma > 0 else b
    interval = tuple(float(v) for v in np.quantile(achieved, [lo_q, hi_q]))
    return Threshold(value, rate, "exponential-tail", n, interval, True, float(s[0]), float(s[-1]))


def pixel_threshold(samples, rate: float, upper: float | None = None) -> Threshold:
    """Threshold on map values from per-image pixel samples (n_images, m).

    The value is `quantile_threshold` of all samples; the interval is the wider of that
    estimator's and a bootstrap over images of the fraction of pixels at or above the value."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise CalibrationError("pixel samples must be a non-empty (images, pixels) array")
    base = quantile_threshold(arr, rate, upper)
    rng = np.random.default_rng(0)
    per_image = (arr >= base.value).mean(axis=1)
    picks = rng.integers(0, arr.shape[0], size=(500, arr.shape[0]))
    boot = np.quantile(per_image[picks].mean(axis=1), [(1.0 - INTERVAL) / 2.0, (1.0 + INTERVAL) / 2.0])
    interval = (min(base.interval[0], float(boot[0])), max(base.interval[1], float(boot[1])))
    return Threshold(base.value, rate, base.estimator, base.n, interval, base.extrapolated, base.low, base.high)


def normalised_score(score: float, threshold: Threshold) -> float:
    """Score rescaled so that the calibrated threshold is 0.5, as anomalib does:
    clip((score − t)/(max − min) + 0.5, 0, 1), min and max of the normal scores (span 1 if equal)."""
    span = threshold.high - threshold.low
    return float(min(1.0, max(0.0, (score - threshold.value) / (span if span > 0 else 1.0) + 0.5)))


def sample_pixels(full_map, count: int = PIXELS_PER_IMAGE, seed: int = 0) -> np.ndarray:
    """`count` values of one image's map (at the image's size), drawn without replacement when
    the image has that many pixels; the same seed gives the same pixels."""
    flat = np.asarray(full_map, dtype=np.float32).ravel()
    rng = np.random.default_rng(seed)
    return rng.choice(flat, size=count, replace=flat.size < count)


@dataclass
class NormalScores:
    """Scores of good images under one method and its settings: what calibration is made of.

    image: (n,) image scores; pixels: (n, m) sampled map values or None; meta: method label,
    settings, class, images, how the scores were obtained ("leave-one-out" or "zero-shot")."""

    image: np.ndarray
    pixels: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def image_threshold(self, rate: float) -> Threshold:
        return quantile_threshold(self.image, rate, upper=SCORE_MAX)

    def pixel_threshold(self, rate: float) -> Threshold:
        if self.pixels is None:
            raise CalibrationError("these normal scores hold no pixel scores (calibrated without maps)")
        return pixel_threshold(self.pixels, rate, upper=SCORE_MAX)

    # -- as arrays inside a reference bank's .npz (no pickle) -------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"calibration_image": np.asarray(self.image, dtype=np.float64),
                  "calibration_meta": np.array(json.dumps(self.meta))}
        if self.pixels is not None:
            arrays["calibration_pixels"] = np.asarray(self.pixels, dtype=np.float32)
        return arrays

    @classmethod
    def of_bank(cls, bank) -> "NormalScores | None":
        """The normal scores a reference bank (methods.memory.MemoryBank) keeps, or None."""
        return cls.from_arrays(bank.extra_arrays)

    def store_in(self, bank) -> None:
        """Keep these scores with `bank` (saved in its .npz)."""
        bank.extra_arrays.update(self.to_arrays())

    @classmethod
    def from_arrays(cls, arrays) -> "NormalScores | None":
        """From an npz opened with allow_pickle=False; None if it holds no calibration."""
        if "calibration_image" not in arrays:
            return None
        pixels = np.array(arrays["calibration_pixels"]) if "calibration_pixels" in arrays else None
        return cls(np.array(arrays["calibration_image"]), pixels, json.loads(str(arrays["calibration_meta"])))

    # -- as a JSON file (`fade calibrate -o FILE`) ------------------------------------------------
    def to_json(self) -> dict:
        return {"format": CALIBRATION_FORMAT, "kind": "fade-calibration", **self.meta,
                "image_scores": [float(v) for v in self.image],
                "pixel_scores": None if self.pixels is None else np.round(self.pixels.astype(np.float64), 6).tolist()}

    @classmethod
    def from_json(cls, data: dict, source: str = "calibration file") -> "NormalScores":
        if not isinstance(data, dict) or data.get("kind") != "fade-calibration":
            raise CalibrationError(f"{source}: not a fade calibration file")
        if data.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(f"{source}: calibration format {data.get('format')} is not supported (reads {CALIBRATION_FORMAT})")
        try:
            image = np.asarray(data["image_scores"], dtype=np.float64)
            pixels = None if data.get("pixel_scores") is None else np.asarray(data["pixel_scores"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{source}: malformed scores ({exc.__class__.__name__})") from None
        if image.ndim != 1 or (pixels is not None and (pixels.ndim != 2 or pixels.shape[0] != image.size)):
            raise CalibrationError(f"{source}: image_scores must be a list and pixel_scores one list per image")
        meta = {k: v for k, v in data.items() if k not in ("format", "kind", "image_scores", "pixel_scores")}
        return cls(image, pixels, meta)

    @classmethod
    def load(cls, path: Path) -> "NormalScores":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibrationError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path}: cannot read as JSON ({exc.__class__.__name__})") from None
        return cls.from_json(data, str(path))


def rates_at(threshold: float, scores, labels) -> dict:
    """The operating point a line sees at `threshold`: false-alarm rate (good images with
    score ≥ threshold, of all good ones) and miss rate (anomalous ones below it). labels: 1 =
    anomalous. Works on pixels too (map values and mask labels, flattened). None where a class
    of label is absent."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    flagged = s >= threshold
    good, bad = ~y, y
    return {"threshold": round(float(threshold), 6),
            "false_alarm_rate": round(float(flagged[good].mean()), 6) if good.any() else None,
            "miss_rate": round(float((~flagged[bad]).mean()), 6) if bad.any() else None}
