"""Metrics: hand-computed cases, and direct slow references (one loop per threshold) on random ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fade_cli.evaluation.metrics import (
    aupr,
    average_precision,
    evaluate,
    f1_max,
    image_auroc,
    pixel_auroc,
    pixel_f1_max,
    pro_auc,
    resize_map,
    resize_mask,
)

# --------------------------------------------------------------------------- slow references


def ref_auroc(labels, scores) -> float:
    """Mann-Whitney: the fraction of (anomalous, normal) pairs ranked right, ties counted 1/2."""
    labels, scores = np.ravel(labels), np.ravel(scores)
    pos, neg = scores[labels == 1], scores[labels == 0]
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def ref_pr_points(labels, scores) -> list[tuple[float, float]]:
    """(recall, precision) at every distinct threshold, highest threshold first."""
    labels, scores = np.ravel(labels), np.ravel(scores)
    points = []
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = int(np.sum(pred & (labels == 1)))
        points.append((tp / int(np.sum(labels == 1)), tp / int(np.sum(pred))))
    return points


def ref_aupr(labels, scores) -> float:
    """Trapezoids between consecutive PR points, starting from (recall 0, precision 1)."""
    area, (r0, p0) = 0.0, (0.0, 1.0)
    for r, p in ref_pr_points(labels, scores):
        area += (r - r0) * (p + p0) / 2
        r0, p0 = r, p
    return area


def ref_ap(labels, scores) -> float:
    area, r0 = 0.0, 0.0
    for r, p in ref_pr_points(labels, scores):
        area += (r - r0) * p
        r0 = r
    return area


def ref_f1_max(labels, scores) -> float:
    return max((2 * p * r / (p + r) if p + r > 0 else 0.0) for r, p in ref_pr_points(labels, scores))


def ref_pro(masks, maps, limit=0.3) -> float:
    """Per threshold: label regions, count overlaps and false positives directly; then clip at limit."""
    regions = []  # (image index, bool mask of one region)
    for i, m in enumerate(masks):
        lab, k = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == j) for j in range(1, k + 1)]
    ok = masks == 0
    curve = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        fpr = np.sum(pred & ok) / np.sum(ok)
        pro = np.mean([np.sum(pred[i] & r) / np.sum(r) for i, r in regions])
        curve.append((float(fpr), float(pro)))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


def random_case(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)  # both classes present
    scores = np.round(rng.random(n) * 0.6 + 0.3 * labels, 1)  # one decimal: many ties
    return labels, scores


def random_masks(seed: int, n: int = 3, h: int = 12, w: int = 10):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n - 1):  # the last image stays normal: it may only add false positives
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = 1
    masks[0, -1, -1] = 1  # a one-pixel region
    maps = np.round(rng.random((n, h, w)) * 0.7 + 0.3 * masks, 1)
    return masks, maps


# --------------------------------------------------------------------------- hand-computed

LABELS = np.array([0, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8])
# With ties: 0.5 is shared by a normal and an anomalous image.
TIE_LABELS = np.array([0, 1, 0, 1])
TIE_SCORES = np.array([0.5, 0.5, 0.2, 0.9])


def test_image_auroc_by_hand():
    assert image_auroc(LABELS, SCORES) == pytest.approx(0.75, abs=1e-12)
    # pairs (pos, neg): (.5,.5) tie 1/2, (.5,.2) 1, (.9,.5) 1, (.9,.2) 1 -> 3.5 / 4
    assert image_auroc(TIE_LABELS, TIE_SCORES) == pytest.approx(0.875, abs=1e-12)
    assert image_auroc([0, 1], [0.3, 0.3]) == pytest.approx(0.5, abs=1e-12)
    assert image_auroc(np.array([False, True]), np.array([0.9, 0.1])) == 0.0


def test_aupr_ap_f1_by_hand():
    # Thresholds .8 .4 .35 .1 -> (R, P) = (.5, 1) (.5, .5) (1, 2/3) (1, .5), after (0, 1).
    assert aupr(LABELS, SCORES) == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2, abs=1e-12)  # 19/24
    assert average_precision(LABELS, SCORES) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-12)  # 5/6
    assert f1_max(LABELS, SCORES) == pytest.approx(0.8, abs=1e-12)  # at t = .35: P 2/3, R 1
    # Ties: thresholds .9 .5 .2 -> (.5, 1) (1, 2/3) (1, .5).
    assert aupr(TIE_LABELS, TIE_SCORES) == pytest.approx(0.5 + 0.5 * (1 + 2 / 3) / 2, abs=1e-12)  # 11/12
    assert average_precision(TIE_LABELS, TIE_SCORES) == pytest.approx(5 / 6, abs=1e-12)
    assert f1_max(TIE_LABELS, TIE_SCORES) == pytest.approx(0.8, abs=1e-12)
    # Every score tied: one point (R 1, P 1/2); F1 = 2/3.
    assert aupr([0, 1], [0.2, 0.2]) == pytest.approx(0.75, abs=1e-12)
    assert f1_max([0, 1], [0.2, 0.2]) == pytest.approx(2 / 3, abs=1e-12)


def test_single_class_and_bad_input_raise():
    with pytest.raises(ValueError, match="both classes"):
        image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="both classes"):
        image_auroc([1, 1], [0.1, 0.2])
    for fn in (aupr, average_precision, f1_max):
        with pytest.raises(ValueError, match="no anomalous"):
            fn([0, 0, 0], [0.1, 0.2, 0.3])
    assert aupr([1, 1], [0.1, 0.2]) == pytest.approx(1.0)  # all anomalous: precision is 1 throughout
    with pytest.raises(ValueError, match="0/1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="shape"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="both classes"):
        pixel_auroc(np.zeros((2, 3, 3)), np.random.default_rng(0).random((2, 3, 3)))


def test_pixel_metrics_by_hand():
    masks = np.array([[[0, 1], [0, 0]], [[0, 0], [1, 0]]])
    maps = np.array([[[0.1, 0.4], [0.2, 0.2]], [[0.3, 0.1], [0.4, 0.0]]])
    # Anomalous {.4, .4}; normal {.1, .2, .2, .3, .1, 0}: every pair ranked right.
    assert pixel_auroc(masks, maps) == 1.0
    assert pixel_f1_max(masks, maps) == 1.0
    maps[0, 1, 1] = 0.4  # a normal pixel tied with both anomalous ones: 2 pairs of 12 at 1/2
    assert pixel_auroc(masks, maps) == pytest.approx(11 / 12, abs=1e-12)
    assert pixel_f1_max(masks, maps) == pytest.approx(2 * 2 / (3 + 2), abs=1e-12)


def test_pro_by_hand():
    mask = np.array([[[1, 1, 0], [0, 0, 0]]])
    score = np.array([[[0.9, 0.5, 0.8], [0.1, 0.2, 0.3]]])
    # One region (2 px), 4 normal px. Curve: (0,0) (0,.5) (.25,.5) (.25,1) (.5,1) (.75,1) (1,1).
    # Up to .3: .25 * .5 + .05 * 1 = .175 -> / .3 = 7/12.
    assert pro_auc(mask, score) == pytest.approx(7 / 12, abs=1e-12)
    # Limit on a curve point: .25 * .5 / .25.
    assert pro_auc(mask, score, fpr_limit=0.25) == pytest.approx(0.5, abs=1e-12)
    assert pro_auc(mask, score, fpr_limit=1.0) == pytest.approx((0.125 + 0.75) / 1.0, abs=1e-12)
    # A 2-D mask/map pair is one image.
    assert pro_auc(mask[0], score[0]) == pytest.approx(7 / 12, abs=1e-12)


def test_pro_uses_8_connectivity():
    # (0,0) touches (1,1) only diagonally: one region of 3 px with 8-connectivity
    # (4-connectivity would give regions of 1 and 2 px and PRO 1/2 at the first threshold).
    mask = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]]])
    score = np.full((1, 3, 3), 0.5)
    score[0, 0, 0], score[0, 1, 1], score[0, 1, 2] = 0.9, 0.1, 0.1
    # Curve: (0,0) (0,1/3) (1,1/3) (1,1): area up to .3 is .3 / 3 -> 1/3.
    assert pro_auc(mask, score) == pytest.approx(1 / 3, abs=1e-12)
    assert ref_pro(mask, score) == pytest.approx(1 / 3, abs=1e-12)


def test_pro_errors_and_normal_images():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no anomalous region"):
        pro_auc(np.zeros((2, 4, 4)), rng.random((2, 4, 4)))
    with pytest.raises(ValueError, match="every pixel"):
        pro_auc(np.ones((1, 4, 4)), rng.random((1, 4, 4)))
    with pytest.raises(ValueError, match="fpr_limit"):
        pro_auc(np.eye(4)[None], rng.random((1, 4, 4)), fpr_limit=0)
    # A normal image only adds false positives: scoring its pixels high lowers PRO.
    mask = np.zeros((2, 4, 4))
    mask[0, 1:3, 1:3] = 1
    maps = mask * 0.9 + 0.1
    assert pro_auc(mask, maps) == pytest.approx(1.0)
    maps[1] = 1.5  # 16 of 28 normal pixels above every region pixel: FPR .57 before any overlap
    assert pro_auc(mask, maps) == 0.0
    maps[1, 1:] = 0.05  # now only its top row, 4 of 28 (FPR 1/7), comes first: (.3 - 1/7) / .3
    assert pro_auc(mask, maps) == pytest.approx((0.3 - 4 / 28) / 0.3, abs=1e-12)
    assert pro_auc(mask, maps) == pytest.approx(ref_pro(mask, maps), abs=1e-9)


# --------------------------------------------------------------------------- against references


@pytest.mark.parametrize("seed", range(6))
def test_image_metrics_match_references(seed):
    labels, scores = random_case(seed, n=30 + 7 * seed)
    assert len(np.unique(scores)) < len(scores)  # ties are exercised
    assert image_auroc(labels, scores) == pytest.approx(ref_auroc(labels, scores), abs=1e-9)
    assert aupr(labels, scores) == pytest.approx(ref_aupr(labels, scores), abs=1e-9)
    assert average_precision(labels, scores) == pytest.approx(ref_ap(labels, scores), abs=1e-9)
    assert f1_max(labels, scores) == pytest.approx(ref_f1_max(labels, scores), abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_pixel_metrics_match_references(seed):
    masks, maps = random_masks(seed)
    assert pixel_auroc(masks, maps) == pytest.approx(ref_auroc(masks, maps), abs=1e-9)
    assert pixel_f1_max(masks, maps) == pytest.approx(ref_f1_max(masks, maps), abs=1e-9)
    for limit in (0.3, 0.05, 0.5, 1.0):
        assert pro_auc(masks, maps, limit) == pytest.approx(ref_pro(masks, maps, limit), abs=1e-9)


def test_pro_with_continuous_scores_matches_reference():
    masks, _ = random_masks(11, n=4, h=16, w=16)
    maps = np.random.default_rng(11).random(masks.shape) + 0.4 * masks  # no ties at all
    assert pro_auc(masks, maps) == pytest.approx(ref_pro(masks, maps), abs=1e-9)


def test_evaluate_in_percent_and_class_rows():
    masks, maps = random_masks(3, n=4)
    labels = masks.any(axis=(1, 2)).astype(int)
    scores = maps.max(axis=(1, 2)) + 0.01 * np.arange(4)
    out = evaluate(labels, scores, masks, maps)
    assert list(out) == ["image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_f1_max", "pro"]
    assert out["image_auroc"] == pytest.approx(100 * ref_auroc(labels, scores), abs=1e-7)
    assert out["image_aupr"] == pytest.approx(100 * ref_aupr(labels, scores), abs=1e-7)
    assert out["image_f1_max"] == pytest.approx(100 * ref_f1_max(labels, scores), abs=1e-7)
    assert out["pixel_auroc"] == pytest.approx(100 * ref_auroc(masks, maps), abs=1e-7)
    assert out["pixel_f1_max"] == pytest.approx(100 * ref_f1_max(masks, maps), abs=1e-7)
    assert out["pro"] == pytest.approx(100 * ref_pro(masks, maps), abs=1e-7)
    assert all(type(v) is float for v in out.values())

    image_only = evaluate(labels, scores)
    assert list(image_only) == ["image_auroc", "image_aupr", "image_f1_max"]
    with pytest.raises(ValueError, match="both masks and maps"):
        evaluate(labels, scores, masks=masks)


# --------------------------------------------------------------------------- resizing


def test_resize_mask_is_antialiased_bilinear_then_half():
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[1:3, 1:3] = 255  # a 2x2 defect in the centre, nonzero but not 1
    # 4 -> 2 with antialiasing: a triangle filter of radius 2 input pixels centred on input
    # 0.5 (output 0) and 2.5 (output 1). For output 0, inputs 0..3 weigh .75 .75 .25 0 (sum
    # 1.75) and the defect's inputs 1, 2 get .75 + .25 = 1; so per axis 1/1.75, and every
    # output is (1/1.75)^2 = 0.327 < 0.5: the defect disappears, while nearest-neighbour
    # (sampling inputs 0 and 2) keeps it at output (1, 1).
    nearest = torch.nn.functional.interpolate(torch.tensor(mask, dtype=torch.float32)[None, None], size=(2, 2))
    assert nearest[0, 0, 1, 1] == 255
    small = resize_mask(mask, 2)
    assert small.dtype == bool and small.shape == (2, 2) and not small.any()
    # A single corner pixel: weight (.75/1.75)^2 = 0.18; nearest keeps it, bilinear drops it.
    corner = np.zeros((4, 4))
    corner[0, 0] = 1
    assert not resize_mask(corner, 2).any()
    # A 3x3 block survives: inputs 0..2 carry all the weight of output (0, 0), which is 1.
    block = np.zeros((4, 4))
    block[:3, :3] = 1
    assert resize_mask(block, 2)[0, 0]
    # Batches resize image by image.
    both = resize_mask(np.stack([mask, block]), 2)
    assert both.shape == (2, 2, 2) and both[1, 0, 0] and not both[0].any()


def test_resize_mask_matches_torchvision_default_resize():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    rng = np.random.default_rng(0)
    mask = np.zeros((37, 53), dtype=np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, 30), rng.integers(0, 45)
        mask[y : y + rng.integers(1, 8), x : x + rng.integers(1, 8)] = 1
    for size in (16, 24, 80):
        expected = tvf.resize(torch.tensor(mask, dtype=torch.float32)[None], [size, size]) > 0.5
        np.testing.assert_array_equal(resize_mask(mask, size), expected[0].numpy())


def test_resize_map_bilinear_half_pixel_centres():
    amap = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float64)
    out = resize_map(amap, 4)
    assert out.dtype == np.float32 and out.shape == (4, 4)
    # align_corners=False: output x=1 samples input x=0.25 -> 0.25; x=0 clamps to input 0.
    np.testing.assert_allclose(out[0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[:, 0], [0.0, 0.5, 1.5, 2.0], atol=1e-6)
    assert resize_map(np.stack([amap, amap]), 3).shape == (2, 3, 3)
