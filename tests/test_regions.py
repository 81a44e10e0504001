"""Defect regions equal a direct connected-component computation: a plain flood fill, and
scipy.ndimage.label with per-label numpy statistics."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from scipy import ndimage

from fade_cli.decisions.regions import find_regions, largest


def _flood_fill_regions(mask: np.ndarray, value_map: np.ndarray) -> list[dict]:
    """Obviously-correct reference: breadth-first search over the 8 neighbours of each pixel."""
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    h, w = mask.shape
    for y0 in range(h):
        for x0 in range(w):
            if not mask[y0, x0] or seen[y0, x0]:
                continue
            pixels, queue = [], deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                pixels.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            ys, xs = zip(*pixels)
            values = [value_map[p] for p in pixels]
            out.append({"bbox": [min(xs), min(ys), max(xs) + 1, max(ys) + 1], "area": len(pixels),
                        "peak": max(values), "mean": sum(values) / len(values)})
    return out


def _same(ours, reference):
    key = lambda r: (r["bbox"], r["area"])  # noqa: E731
    assert sorted(key(r) for r in ours) == sorted(key(r) for r in reference)
    ref = {tuple(r["bbox"]) + (r["area"],): r for r in reference}
    for r in ours:
        match = ref[tuple(r["bbox"]) + (r["area"],)]
        assert r["peak"] == pytest.approx(match["peak"], abs=1e-6) and r["mean"] == pytest.approx(match["mean"], abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_regions_equal_a_flood_fill(seed):
    rng = np.random.default_rng(seed)
    value_map = ndimage.gaussian_filter(rng.random((40, 52)), 2)
    mask = value_map >= np.quantile(value_map, 0.8)
    ours = [r.as_dict() for r in find_regions(mask, value_map)]
    assert len(ours) >= 2
    _same(ours, _flood_fill_regions(mask, value_map))
    peaks = [r["peak"] for r in ours]
    assert peaks == sorted(peaks, reverse=True)


def test_regions_equal_scipy_label_statistics():
    rng = np.random.default_rng(11)
    value_map = rng.random((30, 30))
    mask = value_map > 0.7
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    reference = []
    for i in range(1, count + 1):
        ys, xs = np.nonzero(labels == i)
        reference.append({"bbox": [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], "area": len(ys),
                          "peak": value_map[ys, xs].max(), "mean": value_map[ys, xs].mean()})
    _same([r.as_dict() for r in find_regions(mask, value_map)], reference)


def test_diagonal_pixels_join_and_min_area_drops_specks():
    mask = np.zeros((6, 8), dtype=bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal: one region of 2
    mask[4, 6] = True  # a speck
    value_map = np.where(mask, 0.9, 0.1)
    value_map[4, 6] = 0.95
    regions = find_regions(mask, value_map)
    assert [r.area for r in regions] == [1, 2]  # sorted by peak: the speck peaks higher
    assert regions[1].bbox == (1, 1, 3, 3)
    assert [r.area for r in find_regions(mask, value_map, min_area=2)] == [2]
    assert largest(regions).area == 2
    assert find_regions(np.zeros((3, 3), bool), np.zeros((3, 3))) == [] and largest([]) is None


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same 2-D shape"):
        find_regions(np.zeros((3, 3), bool), np.zeros((3, 4)))
