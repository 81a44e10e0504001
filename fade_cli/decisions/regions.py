"""Defect regions: the connected components of a binary anomaly mask, as numbers.

Pixels are connected through their 8 neighbours (edges and corners). Each region reports its
bounding box in image pixels as [x0, y0, x1, y1] with x1, y1 exclusive (a PIL crop box), its
area in pixels, and the peak and mean of the anomaly map over its pixels. Regions are sorted by
peak (highest first; ties: larger area first) after those smaller than `min_area` are dropped.
This list is the `regions` field of `fade segment` rows (docs/cli.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CONNECTIVITY = np.ones((3, 3), dtype=bool)  # 8-connected


@dataclass(frozen=True)
class Region:
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    area: int
    peak: float
    mean: float

    def as_dict(self) -> dict:
        return {"bbox": list(self.bbox), "area": self.area, "peak": round(self.peak, 6), "mean": round(self.mean, 6)}


def find_regions(mask: np.ndarray, value_map: np.ndarray, min_area: int = 1) -> list[Region]:
    """Connected regions of `mask` (H, W) bool with statistics of `value_map` (H, W)."""
    mask = np.asarray(mask, dtype=bool)
    value_map = np.asarray(value_map, dtype=np.float64)
    if mask.shape != value_map.shape or mask.ndim != 2:
        raise ValueError(f"mask {mask.shape} and map {value_map.shape} must be the same 2-D shape")
    labels, count = ndimage.label(mask, structure=CONNECTIVITY)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(value_map), labels, index)
    peaks = ndimage.maximum(value_map, labels, index)
    means = ndimage.mean(value_map, labels, index)
    regions = []
    for i, box in enumerate(ndimage.find_objects(labels)):
        if areas[i] < min_area:
            continue
        rows, cols = box
        regions.append(Region((cols.start, rows.start, cols.stop, rows.stop), int(areas[i]), float(peaks[i]), float(means[i])))
    return sorted(regions, key=lambda r: (-r.peak, -r.area))


def largest(regions: list[Region]) -> Region | None:
    """The region with the largest area (first in peak order on ties), or None."""
    return max(regions, key=lambda r: r.area, default=None)
