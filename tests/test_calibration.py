"""Calibrated thresholds: the achieved false-alarm rate on held-out normal scores lies within the
stated interval as often as stated (90 %), for the order-statistic and the tail estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fade_cli.decisions.calibration import (
    CalibrationError,
    NormalScores,
    normalised_score,
    pixel_threshold,
    quantile_threshold,
    sample_pixels,
)


def _coverage(dist, n: int, rate: float, trials: int = 300, seed: int = 0) -> tuple[float, list[float], set[str]]:
    """Fraction of trials whose true achieved rate (the held-out exceedance, exact via sf) lies
    inside the stated interval; the achieved rates; the estimators used."""
    rng = np.random.default_rng(seed)
    inside, achieved, kinds = 0, [], set()
    for _ in range(trials):
        t = quantile_threshold(dist.rvs(size=n, random_state=rng), rate)
        a = float(dist.sf(t.value))
        achieved.append(a)
        kinds.add(t.estimator)
        inside += t.interval[0] <= a <= t.interval[1]
    return inside / trials, achieved, kinds


def test_order_statistic_is_the_conformal_rank():
    scores = np.random.default_rng(1).random(199)
    t = quantile_threshold(scores, 0.05)
    r = math.ceil(200 * 0.95)  # 190
    assert t.estimator == "empirical" and not t.extrapolated
    assert t.value == np.sort(scores)[r - 1]
    assert t.warning() is None


def test_empirical_threshold_lands_within_its_interval_as_often_as_stated():
    dist = stats.beta(2, 5)  # bounded, like method scores
    coverage, achieved, kinds = _coverage(dist, n=400, rate=0.05)
    assert kinds == {"empirical"}
    assert 0.85 <= coverage <= 0.95
    assert abs(np.mean(achieved) - 0.05) < 0.005  # conformal: mean (n+1-r)/(n+1) <= rate


def test_tail_threshold_lands_within_its_interval_when_the_tail_is_exponential():
    dist = stats.expon(loc=0.2, scale=0.05)  # exponential above any u: the model holds exactly
    coverage, achieved, kinds = _coverage(dist, n=20, rate=0.01)
    assert kinds == {"exponential-tail"}
    assert 0.85 <= coverage <= 0.95
    assert 0.005 < np.median(achieved) < 0.02


def test_tail_threshold_on_held_out_scores():
    dist = stats.gamma(3, scale=0.05)  # tail asymptotically exponential
    rng = np.random.default_rng(7)
    held_out = dist.rvs(size=400_000, random_state=rng)
    inside = 0
    for _ in range(60):
        t = quantile_threshold(dist.rvs(size=50, random_state=rng), 0.01)
        inside += t.interval[0] <= float(np.mean(held_out >= t.value)) <= t.interval[1]
    assert inside / 60 >= 0.8


def test_tail_is_conservative_for_bounded_light_tails():
    coverage, achieved, _ = _coverage(stats.beta(2, 5), n=30, rate=0.01, trials=200)
    assert np.median(achieved) <= 0.01  # the fit errs towards fewer false alarms


def test_tail_formula_and_warning():
    scores = np.array([0.10, 0.12, 0.15, 0.16, 0.20, 0.21, 0.25, 0.30])
    t = quantile_threshold(scores, 0.01)
    k = 5  # tail_size(8): at least 5
    u = np.sort(scores)[8 - k - 1]
    sigma = np.mean(np.sort(scores)[8 - k:] - u)
    assert t.value == pytest.approx(u + sigma * math.log((k + 1) / 9 / 0.01))
    assert t.extrapolated and t.value > scores.max()
    message = t.warning()
    assert "8 normal reference images are too few" in message and "99" in message


@pytest.mark.parametrize("values, rate, message", [
    ([0.3], 0.01, "at least 2"),
    ([0.1, float("nan"), 0.2], 0.01, "NaN"),
    ([0.1, 0.2, 0.3], 0.0, "between 0 and 1"),
    ([0.1, 0.2, 0.3], 1.5, "between 0 and 1"),
])
def test_bad_inputs_are_refused(values, rate, message):
    with pytest.raises(CalibrationError, match=message):
        quantile_threshold(values, rate)


def test_pixel_threshold_is_the_quantile_of_all_samples_with_a_wider_interval():
    rng = np.random.default_rng(3)
    # images differ in level: pixels of one image are correlated, so the interval must widen
    samples = rng.normal(size=(12, 1)) * 0.05 + rng.random((12, 2048)) * 0.3
    t = pixel_threshold(samples, 0.01)
    assert t.value == quantile_threshold(samples.ravel(), 0.01).value
    plain = quantile_threshold(samples.ravel(), 0.01).interval
    assert t.interval[0] <= plain[0] and t.interval[1] >= plain[1] and t.interval[1] > plain[1]


def test_normalised_score_puts_the_threshold_at_one_half():
    t = quantile_threshold(np.linspace(0.2, 0.4, 200), 0.05)
    assert normalised_score(t.value, t) == 0.5
    assert normalised_score(t.value + 0.1, t) == pytest.approx(0.5 + 0.1 / 0.2)
    assert normalised_score(5.0, t) == 1.0 and normalised_score(-5.0, t) == 0.0
    assert (normalised_score(0.39, t) >= 0.5) == (0.39 >= t.value)


def test_sample_pixels_is_reproducible_and_without_replacement():
    m = np.arange(100 * 80, dtype=np.float32).reshape(100, 80)
    a, b = sample_pixels(m, 500, seed=4), sample_pixels(m, 500, seed=4)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 500
    assert sample_pixels(np.zeros((4, 4)), 50).shape == (50,)


def test_normal_scores_round_trip_json_and_arrays(tmp_path):
    scores = NormalScores(np.array([0.1, 0.2, 0.3]), np.random.default_rng(0).random((3, 16)).astype(np.float32),
                          {"method": "fade", "class": "bottle", "how": "zero-shot"})
    path = tmp_path / "c.json"
    import json

    path.write_text(json.dumps(scores.to_json()))
    back = NormalScores.load(path)
    assert np.allclose(back.image, scores.image) and np.allclose(back.pixels, scores.pixels, atol=1e-6)
    assert back.meta == scores.meta
    np.savez(tmp_path / "b.npz", **scores.to_arrays())
    with np.load(tmp_path / "b.npz", allow_pickle=False) as npz:
        again = NormalScores.from_arrays(npz)
    assert np.array_equal(again.image, scores.image) and np.array_equal(again.pixels, scores.pixels)
    assert again.meta == scores.meta
    with np.load(tmp_path / "b.npz", allow_pickle=False) as npz:
        assert NormalScores.from_arrays({k: npz[k] for k in npz.files if k != "calibration_image"}) is None


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read as JSON"),
    ('{"kind": "something"}', "not a fade calibration file"),
    ('{"kind": "fade-calibration", "format": 9}', "format 9"),
    ('{"kind": "fade-calibration", "format": 1, "image_scores": [[1, 2]]}', "must be a list"),
    ('{"kind": "fade-calibration", "format": 1, "image_scores": [0.1, 0.2], "pixel_scores": [[0.1]]}', "one list per image"),
])
def test_bad_calibration_files_are_refused(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=message):
        NormalScores.load(path)


def test_rates_at_counts_false_alarms_and_misses():
    scores = [0.1, 0.5, 0.7, 0.2, 0.9, 0.4]
    labels = [0, 0, 0, 1, 1, 1]
    from fade_cli.decisions.calibration import rates_at

    r = rates_at(0.5, scores, labels)
    assert r["threshold"] == 0.5
    assert r["false_alarm_rate"] == pytest.approx(2 / 3, abs=1e-6) and r["miss_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert rates_at(0.0, scores, labels)["miss_rate"] == 0.0 and rates_at(1.0, scores, labels)["false_alarm_rate"] == 0.0
    assert rates_at(0.5, [0.1, 0.6], [0, 0])["miss_rate"] is None


def test_tail_beyond_the_largest_possible_score_is_capped_with_its_interval():
    scores = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    free, capped = quantile_threshold(scores, 0.001), quantile_threshold(scores, 0.001, upper=1.0)
    assert free.value > 1.0 and capped.value == 1.0
    assert capped.interval[1] > free.interval[1]  # a lower threshold: more false alarms expected
    assert NormalScores(scores).image_threshold(0.001).value == 1.0


def test_operating_point_measures_the_calibrated_thresholds_on_the_test_set():
    from fade_cli.decisions.operating import calibration_sample, operating_point

    rng = np.random.default_rng(5)
    normal = rng.beta(2, 8, 300)
    pixels = rng.beta(2, 8, (30, 200))
    test = np.concatenate([rng.beta(2, 8, 500), rng.beta(8, 2, 100)])
    labels = np.r_[np.zeros(500), np.ones(100)]
    maps = rng.beta(2, 8, (6, 8, 8))
    masks = np.zeros((6, 8, 8), bool)
    masks[:, :2] = True
    maps[masks] = rng.beta(8, 2, masks.sum())
    op = operating_point(0.05, normal, pixels, test, labels, maps, masks)
    t = quantile_threshold(normal, 0.05, upper=1.0).value
    assert op["image"]["threshold"] == round(t, 6)
    assert op["image"]["false_alarm_rate"] == pytest.approx(np.mean(test[:500] >= t), abs=1e-6)
    assert op["image"]["miss_rate"] == pytest.approx(np.mean(test[500:] < t), abs=1e-6)
    assert 0.02 < op["image"]["false_alarm_rate"] < 0.08  # the same distribution: near the rate asked
    pt = op["pixel"]["threshold"]
    assert op["pixel"]["false_alarm_rate"] == pytest.approx(np.mean(maps[~masks] >= pt), abs=1e-6)
    assert operating_point(0.05, [0.3], None, test, labels)["skipped"].startswith("1 normal score")
    assert calibration_sample(list(range(10)), 3) == [0, 4, 9] and calibration_sample([2, 1], 5) == [1, 2]


def test_calibrated_output_spec_travels_to_ray_actors():
    import pickle
    from pathlib import Path

    from fade_cli.engines.runner import OutputSpec

    t = quantile_threshold(np.linspace(0.1, 0.3, 50), 0.05)
    spec = OutputSpec(threshold=t.value, base=Path("."), threshold_source="bank:b.npz", false_alarm_rate=0.05, normalise=t)
    assert pickle.loads(pickle.dumps(spec)) == spec
