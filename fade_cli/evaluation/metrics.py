"""Evaluation metrics of the FADE / ALFA papers' tables, as the official FADE evaluation computes them.

Anomaly classification (AC, image level): AUROC, AUPR and F1-max of the image scores.
Anomaly segmentation (AS, pixel level): AUROC and F1-max over every pixel of every test image,
and AUPRO, the area under the per-region-overlap curve up to 30 % FPR (Bergmann et al.).

The official code calls sklearn (`roc_auc_score`, `auc(recall, precision)` on
`precision_recall_curve`) and the MVTec AD PRO routine. These are re-implemented here with
numpy/scipy only: one sort per call, vectorised cumulative counts, and tied scores handled
exactly (all samples sharing a score form one threshold step), so 20M-pixel inputs are fine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

# 8-connectivity, as the official PRO code's structuring element: diagonal pixels are one region.
_PRO_STRUCTURE = np.ones((3, 3), dtype=int)

IMAGE_KEYS = ("image_auroc", "image_aupr", "image_f1_max")
PIXEL_KEYS = ("pixel_auroc", "pixel_f1_max", "pro")


# --------------------------------------------------------------------------- input checks


def _as_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """0/1 ints or bools -> bool array; other values are refused rather than thresholded."""
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr
    if arr.size and np.any((arr != 0) & (arr != 1)):
        raise ValueError(f"{name} must hold only 0/1 or booleans")
    return arr.astype(bool)


def _as_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        raise ValueError(f"{name} contain NaN")
    return arr


def _pair(labels: np.ndarray, scores: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    names = ("labels", "scores") if what == "image" else ("masks", "maps")
    y = _as_labels(labels, names[0])
    s = _as_scores(scores, names[1])
    if y.shape != s.shape:
        raise ValueError(f"{names[0]} shape {y.shape} differs from {names[1]} shape {s.shape}")
    if y.size == 0:
        raise ValueError(f"no {what} samples to evaluate")
    return y.ravel(), s.ravel()


# --------------------------------------------------------------------------- sorted counts


def _descending(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices sorting `scores` high to low, and the last sorted position of each tie group.

    Each tie group is one threshold t (predict anomalous where score >= t); the order inside a
    group is irrelevant because only the counts at group ends are ever read.
    """
    order = np.argsort(scores)[::-1]
    s = scores[order]
    ends = np.flatnonzero(s[1:] != s[:-1])
    return order, np.append(ends, s.size - 1)


def _threshold_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at every distinct threshold, highest first."""
    order, ends = _descending(s)
    tps = np.cumsum(y[order], dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return tps, fps


def _auroc(tps: np.ndarray, fps: np.ndarray) -> float:
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    if n_pos == 0 or n_neg == 0:
        only = "anomalous" if n_neg == 0 else "normal"
        raise ValueError(f"AUROC is undefined: every sample is {only} (need both classes)")
    # Trapezoids of the ROC staircase in integer counts: twice the area is
    # sum dFP * (TP_prev + TP), exact in int64 (<= 2 P N); a tie group's diagonal step is
    # what makes this the Mann-Whitney statistic with ties counted 1/2.
    tp_prev = np.concatenate(([0], tps[:-1]))
    fp_prev = np.concatenate(([0], fps[:-1]))
    twice_area = int(np.sum((fps - fp_prev) * (tps + tp_prev)))
    return twice_area / (2.0 * n_pos * n_neg)


def _precision_recall(tps: np.ndarray, fps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_pos = int(tps[-1])
    if n_pos == 0:
        raise ValueError("precision/recall are undefined: no anomalous sample")
    # tps + fps >= 1 at every real threshold, so no division by zero.
    return tps / (tps + fps), tps / n_pos


def _aupr(tps: np.ndarray, fps: np.ndarray) -> float:
    precision, recall = _precision_recall(tps, fps)
    # sklearn's curve ends at (recall 0, precision 1); trapezoids from there, as auc() does.
    # Points after full recall are vertical steps of zero width, so sklearn versions that
    # truncate the curve at full recall give the same area.
    x = np.concatenate(([0.0], recall))
    y = np.concatenate(([1.0], precision))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _average_precision(tps: np.ndarray, fps: np.ndarray) -> float:
    precision, recall = _precision_recall(tps, fps)
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def _f1_max(tps: np.ndarray, fps: np.ndarray) -> float:
    n_pos = int(tps[-1])
    if n_pos == 0:
        raise ValueError("F1 is undefined: no anomalous sample")
    # 2PR/(P+R) = 2 TP / (predicted positives + actual positives); 0 when TP = 0.
    return float(np.max(2.0 * tps / (tps + fps + n_pos)))


# --------------------------------------------------------------------------- image level


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of image scores (labels 1 = anomalous); ties count 1/2, as sklearn's roc_auc_score."""
    return _auroc(*_threshold_counts(*_pair(labels, scores, "image")))


def aupr(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve by the trapezoidal rule.

    This is the official FADE 'AUPR': sklearn `auc(recall, precision)` over
    `precision_recall_curve`, i.e. one point per distinct threshold plus (recall 0, precision 1).
    It differs slightly from `average_precision`; say which one you report.
    """
    return _aupr(*_threshold_counts(*_pair(labels, scores, "image")))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Step-wise average precision sum_n (R_n - R_{n-1}) P_n (sklearn's average_precision_score)."""
    return _average_precision(*_threshold_counts(*_pair(labels, scores, "image")))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 = 2PR/(P+R) over every distinct threshold t (score >= t is anomalous)."""
    return _f1_max(*_threshold_counts(*_pair(labels, scores, "image")))


# --------------------------------------------------------------------------- pixel level


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """ROC AUC over all pixels of all images; masks and maps have the same shape, e.g. (N, H, W)."""
    return _auroc(*_threshold_counts(*_pair(masks, maps, "pixel")))


def pixel_f1_max(masks: np.ndarray, maps: np.ndarray) -> float:
    """F1-max over all pixels of all images (masks and maps of the same shape, e.g. (N, H, W))."""
    return _f1_max(*_threshold_counts(*_pair(masks, maps, "pixel")))


def _area_to_limit(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y) for x in [x[0], limit]; y at `limit` linearly interpolated.

    x is non-decreasing and may repeat (vertical steps); this is the official `trapezoid(...,
    x_max=limit)`: keep every point with x <= limit, then add the slice up to `limit`.
    """
    k = int(np.searchsorted(x, limit, side="right"))  # x[:k] <= limit < x[k:]
    area = float(np.sum(np.diff(x[:k]) * (y[1:k] + y[: k - 1]) / 2.0))
    if k < x.size and x[k - 1] < limit:
        y_lim = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
        area += (limit - x[k - 1]) * (y[k - 1] + y_lim) / 2.0
    return float(area)


def _pro_curve(
    masks: np.ndarray, maps: np.ndarray, order_ends: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct threshold, highest first, starting at (0, 0)."""
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3:
        raise ValueError(f"PRO needs masks of shape (N, H, W), got {masks.shape}")
    # Global region ids: connected components per image, numbered across images (0 = outside).
    regions = np.zeros(masks.shape, dtype=np.int32)
    n_regions = 0
    for i, mask in enumerate(masks):
        labelled, k = ndimage.label(mask, structure=_PRO_STRUCTURE)
        if k:
            regions[i] = np.where(labelled > 0, labelled + n_regions, 0)
            n_regions += k
    if n_regions == 0:
        raise ValueError("PRO is undefined: the masks hold no anomalous region")
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)
    n_ok = int(sizes[0])
    if n_ok == 0:
        raise ValueError("PRO is undefined: every pixel is anomalous, so FPR has no denominator")
    # A region pixel adds 1/|region| to that region's overlap; the mean over regions is the
    # running sum of these weights divided by the number of regions.
    weight = np.zeros(n_regions + 1)
    weight[1:] = 1.0 / sizes[1:]

    order, ends = order_ends if order_ends is not None else _descending(maps.ravel())
    region_sorted = regions.ravel()[order]
    del regions
    fprs = np.cumsum(region_sorted == 0, dtype=np.int64)[ends] / n_ok
    pros = np.cumsum(weight[region_sorted])[ends] / n_regions
    # Summation error must not push the last point past 1 (the official code clips too).
    np.minimum(pros, 1.0, out=pros)
    return np.concatenate(([0.0], fprs)), np.concatenate(([0.0], pros))


def pro_auc(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve for FPR in [0, fpr_limit] (AUPRO, as in the papers).

    Every distinct score is a threshold. Regions are the 8-connected components of each
    image's mask; PRO(t) is the mean over all regions of all images of the fraction of the
    region scored >= t; FPR(t) is the fraction of pixels outside every region scored >= t.
    The curve starts at (0, 0); the area up to `fpr_limit` (PRO interpolated there) is divided
    by `fpr_limit`. Images without anomaly contribute only to the FPR. Unlike the official code,
    which stores FPRs as float32, everything here is float64 / exact counts.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    m, s = _as_labels(masks, "masks"), _as_scores(maps, "maps")
    if m.shape != s.shape:
        raise ValueError(f"masks shape {m.shape} differs from maps shape {s.shape}")
    fprs, pros = _pro_curve(m, s)
    return _area_to_limit(fprs, pros, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------- resizing


def _to_nchw(arr: np.ndarray, name: str) -> tuple[torch.Tensor, bool]:
    if arr.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(arr))[None, None], True
    if arr.ndim == 3:
        return torch.from_numpy(np.ascontiguousarray(arr))[:, None], False
    raise ValueError(f"{name} must be (H, W) or (N, H, W), got shape {arr.shape}")


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Ground-truth mask -> bool (size, size) the way the official evaluation does it.

    Nonzero -> 1.0, torchvision's default tensor Resize (bilinear, antialiased), then > 0.5.
    Thin defects can vanish and blobs shrink slightly compared with nearest-neighbour resizing;
    that is what the published numbers were computed with. (H, W) or (N, H, W).
    """
    arr = np.asarray(mask)
    t, single = _to_nchw((arr != 0).astype(np.float32), "mask")
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    res = (out[:, 0] > 0.5).numpy()
    return res[0] if single else res


def resize_map(anomaly_map: np.ndarray, size: int) -> np.ndarray:
    """Anomaly map -> float32 (size, size), bilinear with half-pixel centres, no antialiasing.

    The official code clips maps to [0, 1], quantises them to uint8 and resizes with cv2's
    INTER_LINEAR; we keep float precision (fewer ties), so scores can differ in the last digit.
    (H, W) or (N, H, W).
    """
    from ..methods.guidance import resize_map as resize_maps  # the one bilinear map resize of the project

    arr = np.asarray(anomaly_map, dtype=np.float32)
    t, single = _to_nchw(arr, "anomaly map")
    res = resize_maps(t[:, 0], (size, size)).numpy()
    return res[0] if single else res


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    fpr_limit: float = 0.3,
    curves: dict | None = None,
) -> dict[str, float]:
    """All table metrics of one class, in percent.

    labels/scores: (N,) image labels (1 = anomalous) and scores. masks/maps: (N, H, W) at the
    evaluation size (see `resize_mask`, `resize_map`); with them, the pixel metrics are added.
    `curves`, if given, receives the curves behind them, thinned for plotting (`curve_points`):
    image_roc and pixel_roc {fpr, tpr}, pro {fpr, pro} for FPR up to `fpr_limit`.
    """
    y, s = _pair(labels, scores, "image")
    counts = _threshold_counts(y, s)
    if curves is not None:
        curves["image_roc"] = _roc_points(*counts)
    out = {
        "image_auroc": 100.0 * _auroc(*counts),
        "image_aupr": 100.0 * _aupr(*counts),
        "image_f1_max": 100.0 * _f1_max(*counts),
    }
    if masks is None and maps is None:
        return out
    if masks is None or maps is None:
        raise ValueError("pixel metrics need both masks and maps")
    m, a = _as_labels(masks, "masks"), _as_scores(maps, "maps")
    if m.shape != a.shape:
        raise ValueError(f"masks shape {m.shape} differs from maps shape {a.shape}")
    if m.ndim != 3 or m.shape[0] != y.size:
        raise ValueError(f"masks must be (N, H, W) with N = {y.size} images, got {m.shape}")
    # One sort of the pixels serves pixel AUROC, pixel F1 and PRO.
    order, ends = _descending(a.ravel())
    tps = np.cumsum(m.ravel()[order], dtype=np.int64)[ends]
    pixel_counts = (tps, ends + 1 - tps)
    out["pixel_auroc"] = 100.0 * _auroc(*pixel_counts)
    if curves is not None:
        curves["pixel_roc"] = _roc_points(*pixel_counts)
    out["pixel_f1_max"] = 100.0 * _f1_max(*pixel_counts)
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fprs, pros = _pro_curve(m, a, (order, ends))
    out["pro"] = 100.0 * _area_to_limit(fprs, pros, fpr_limit) / fpr_limit
    if curves is not None:
        k = int(np.searchsorted(fprs, fpr_limit, side="right"))  # fprs[:k] <= limit, as the area
        x, y_pro = fprs[:k], pros[:k]
        if k < fprs.size and x[-1] < fpr_limit:  # end at the limit, PRO interpolated as in the area
            y_lim = pros[k - 1] + (pros[k] - pros[k - 1]) * (fpr_limit - fprs[k - 1]) / (fprs[k] - fprs[k - 1])
            x, y_pro = np.append(x, fpr_limit), np.append(y_pro, y_lim)
        fx, fy = curve_points(x, y_pro)
        curves["pro"] = {"fpr": fx, "pro": fy}
    return out


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """The image-level ROC curve {fpr, tpr} from (0, 0) to (1, 1), thinned for plotting."""
    return _roc_points(*_threshold_counts(*_pair(labels, scores, "image")))


def _roc_points(tps: np.ndarray, fps: np.ndarray) -> dict[str, list[float]]:
    fpr = np.concatenate(([0.0], fps / fps[-1]))
    tpr = np.concatenate(([0.0], tps / tps[-1]))
    x, y = curve_points(fpr, tpr)
    return {"fpr": x, "tpr": y}


def curve_points(x: np.ndarray, y: np.ndarray, n: int = 100, digits: int = 5) -> tuple[list[float], list[float]]:
    """A monotone curve (x non-decreasing, y non-decreasing) thinned to about 2n points for plots.

    Kept: the first and last point at each of n+1 even steps of x and of y, so vertical and
    horizontal runs (ROC staircases) keep their corners; short curves are kept whole."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size > 2 * n + 2:
        keep = [0, x.size - 1]
        for values in (x, y):
            grid = np.linspace(values[0], values[-1], n + 1)
            keep += [np.searchsorted(values, grid, side="left"), np.searchsorted(values, grid, side="right") - 1]
        idx = np.unique(np.clip(np.concatenate([np.atleast_1d(k) for k in keep]), 0, x.size - 1))
        x, y = x[idx], y[idx]
    return np.round(x, digits).tolist(), np.round(y, digits).tolist()
