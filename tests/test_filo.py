"""FiLo / FiLo++ training-free switches against direct, slow implementations written from the papers.

Each switch is checked on small random tensors against loops, for its invariances, and inside the
pipeline against a direct composition; the CLI tests check that every flag changes the output
and that the defaults stay FADE."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from fade_cli.methods.fade import FadeConfig
from fade_cli.methods.filo import (
    FILO_PRESET,
    MULTI_SHAPE_KERNELS,
    grid_kernels,
    POSITIONS,
    build_filo_text,
    gaussian_smooth,
    method_label,
    multi_shape_features,
    multi_shape_map,
    object_prior,
    peak_region,
    position_language_map,
    region_grid,
    resolve_switches,
    smoothing_sigma,
)
from fade_cli.methods.guidance import TEMPERATURE, fuse_scales, language_score, to_grid
from fade_cli.methods.memory import self_knn_distance
from fade_cli.methods.fade import FadePipeline
from fade_cli.methods.base import build_reference_bank
from fade_cli.prompts.text import TextClassifier, TextEncoderCache
from fade_cli.prompts.banks import load_bank

from conftest import random_image
from helpers import ALFA, FAST, rows, run

NAMES = [["top left", "top", "top right"], ["left", "center", "right"], ["bottom left", "bottom", "bottom right"]]


# ---- direct implementations ------------------------------------------------------------------
def direct_region(g: int, i: int, j: int) -> str:
    """Region of grid cell (row i, column j): where its centre falls among the image's thirds."""
    y, x = (i + 0.5) / g, (j + 0.5) / g
    row = 0 if y < 1 / 3 else 1 if y < 2 / 3 else 2
    col = 0 if x < 1 / 3 else 1 if x < 2 / 3 else 2
    return NAMES[row][col]


def direct_peak_region(m: np.ndarray) -> str:
    g = m.shape[0]
    best, where = -np.inf, None
    for i in range(g):
        for j in range(g):
            if m[i, j] > best:
                best, where = m[i, j], (i, j)
    return "center" if m.max() == m.min() else direct_region(g, *where)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def direct_aggregate(patches: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Mean over the kh×kw neighbours that lie inside the grid, then unit length; loops."""
    b, n, d = patches.shape
    g = int(math.isqrt(n))
    grid = patches.reshape(b, g, g, d)
    out = torch.empty_like(grid)
    for bi in range(b):
        for i in range(g):
            for j in range(g):
                acc, count = torch.zeros(d, dtype=patches.dtype), 0
                for di in range(-(kh // 2), kh // 2 + 1):
                    for dj in range(-(kw // 2), kw // 2 + 1):
                        if 0 <= i + di < g and 0 <= j + dj < g:
                            acc += grid[bi, i + di, j + dj]
                            count += 1
                out[bi, i, j] = unit(acc / count)
    return out.reshape(b, n, d)


def direct_prob(f: torch.Tensor, h_n: torch.Tensor, h_a: torch.Tensor) -> torch.Tensor:
    """FADE eq. 1-2: softmax over [<f,h−>, <f,h+>]/τ, anomalous entry; f (..., D)."""
    logits = torch.stack([f @ h_n.to(f.dtype), f @ h_a.to(f.dtype)], dim=-1) / TEMPERATURE
    return torch.softmax(logits, dim=-1)[..., 1]


def direct_gaussian(m: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised Gaussian truncated at 4σ, borders mirrored (…c b a | a b c…), 2-D loops."""
    r = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k2 = np.outer(k, k) / np.outer(k, k).sum()
    padded = np.pad(m, r, mode="symmetric")
    out = np.zeros_like(m)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            out[i, j] = (padded[i : i + 2 * r + 1, j : j + 2 * r + 1] * k2).sum()
    return out


def random_patches(b=2, g=6, d=5, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return unit(torch.randn(b, g * g, d, generator=gen, dtype=torch.float64))


def random_text(d=5, seed=1) -> TextClassifier:
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(2, d, generator=gen, dtype=torch.float64) * 0.3
    return TextClassifier(h_normal=h[0], h_anomalous=h[1], counts=(1, 1), banks=())


# ---- positions -------------------------------------------------------------------------------
@pytest.mark.parametrize("g", [3, 7, 12, 56])
def test_positions_pick_the_region_of_a_single_hot_spot(g):
    cells = [(i, j) for i in range(g) for j in range(g)]
    maps = torch.rand(len(cells), g, g, generator=torch.Generator().manual_seed(g)) * 0.1
    for k, (i, j) in enumerate(cells):
        maps[k, i, j] = 5.0
    got = [POSITIONS[r] for r in peak_region(maps).tolist()]
    assert got == [direct_region(g, i, j) for i, j in cells]
    assert got == [direct_peak_region(m) for m in maps.numpy()]


def test_a_flat_first_pass_points_to_the_center():
    assert [POSITIONS[r] for r in peak_region(torch.full((2, 5, 5), 0.3)).tolist()] == ["center", "center"]


def test_regions_agree_with_filo_pixel_boxes():
    """The official FiLo code's boxes at 518 px (14 px patches, 37×37 grid), by patch centre."""
    boxes = {"top left": [(0, 0), (172, 172)], "top": [(173, 0), (344, 172)], "top right": [(345, 0), (517, 172)],
             "left": [(0, 173), (172, 344)], "center": [(173, 173), (344, 344)], "right": [(345, 173), (517, 344)],
             "bottom left": [(0, 345), (172, 517)], "bottom": [(173, 345), (344, 517)],
             "bottom right": [(345, 345), (517, 517)]}
    grid = region_grid(37)
    for i in range(37):
        for j in range(37):
            cx, cy = 14 * j + 7, 14 * i + 7
            (name,) = [n for n, ((x1, y1), (x2, y2)) in boxes.items() if x1 <= cx <= x2 and y1 <= cy <= y2]
            assert POSITIONS[int(grid[i, j])] == name


def test_position_language_map_uses_each_images_region():
    patches = random_patches(b=3, g=4, d=6)
    gen = torch.Generator().manual_seed(5)
    h_n = torch.randn(6, generator=gen, dtype=torch.float64) * 0.3
    h_pos = torch.randn(9, 6, generator=gen, dtype=torch.float64) * 0.3
    region = torch.tensor([0, 4, 8])
    got = position_language_map(patches, h_n, h_pos[region], multi_shape=False)
    for b in range(3):
        expected = torch.stack([direct_prob(patches[b, n], h_n, h_pos[region[b]]) for n in range(16)]).reshape(4, 4)
        torch.testing.assert_close(got[b], expected)


def test_pos_placeholder_filling():
    bank = load_bank("filo")
    plain = bank.texts("anomalous", "bottle")
    assert any("{pos}" in t for t in plain)  # unchanged when no position is asked for
    filled = bank.texts("anomalous", "bottle", pos="at top left")
    assert len(filled) == len(plain) and not any("{pos}" in t for t in filled)
    assert [f for p, f in zip(plain, filled) if "{pos}" in p] == [p.replace("{pos}", "at top left") for p in plain if "{pos}" in p]
    dropped = bank.texts("anomalous", "bottle", pos="")
    assert all("{pos}" not in t and "  " not in t and t == t.strip() for t in dropped)


class CountingEncoder:
    """Deterministic fake text encoder: one fixed random unit vector per text; counts calls."""

    def __init__(self, d=8):
        self.d, self.calls, self.table = d, [], {}

    def vec(self, text):
        if text not in self.table:
            gen = torch.Generator().manual_seed(len(self.table) + 1)
            self.table[text] = unit(torch.randn(self.d, generator=gen))
        return self.table[text]

    def encode(self, texts, frame="{prompt}"):
        self.calls.append(list(texts))
        return torch.stack([self.vec(t) for t in texts])


def test_position_text_is_embedded_once_for_all_nine_regions():
    enc = CountingEncoder()
    text = build_filo_text(FadeConfig(positions=True), "metal_nut", enc)
    assert len(enc.calls) == 1 and text.h_positions.shape == (9, 8)
    bank = load_bank("filo")
    torch.testing.assert_close(text.h_normal, torch.stack([enc.vec(t) for t in bank.texts("normal", "metal_nut", pos="")]).mean(0))
    for k, pos in enumerate(POSITIONS):
        texts = bank.texts("anomalous", "metal_nut", pos=f"at {pos}")
        assert any(t.endswith(f"at {pos}") for t in texts)
        torch.testing.assert_close(text.h_positions[k], torch.stack([enc.vec(t) for t in texts]).mean(0))
    assert text.foreground is None and text.banks == ("filo@2.0.0",)
    both = build_filo_text(FadeConfig(positions=True, object_prior=0.7), "metal_nut", CountingEncoder())
    assert both.foreground is not None


def test_pipeline_text_is_computed_at_setup_and_cached(tiny_backbone, tmp_path):
    cfg = FadeConfig(cls_scale=32, seg_scales=(32, 64), seg_prompts=("winclip",), positions=True, object_prior=0.7)
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    pipe = FadePipeline.from_config(tiny_backbone, cfg, "bottle", None, cache)
    assert cache.misses == 4 and cache.hits == 0  # cls, seg, positions (all nine at once), foreground
    pipe([random_image(1)])
    pipe([random_image(2), random_image(3)])
    assert (cache.misses, cache.hits) == (4, 0)  # nothing embedded per image
    again = TextEncoderCache(tiny_backbone, tmp_path)
    FadePipeline.from_config(tiny_backbone, cfg, "bottle", None, again)
    assert (again.misses, again.hits) == (0, 4)


# ---- multi-shape -----------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", MULTI_SHAPE_KERNELS)
def test_multi_shape_features_equal_direct_neighbour_mean(kernel):
    patches = random_patches()
    torch.testing.assert_close(multi_shape_features(patches, kernel), direct_aggregate(patches, *kernel))


def test_multi_shape_map_is_the_mean_of_per_kernel_language_maps():
    patches, text = random_patches(), random_text()
    expected = torch.stack([
        torch.stack([direct_prob(f, text.h_normal, text.h_anomalous) for f in direct_aggregate(patches, *k).reshape(-1, 5)])
        .reshape(2, 6, 6) for k in MULTI_SHAPE_KERNELS]).mean(0)
    torch.testing.assert_close(multi_shape_map(patches, text, reference_grid=0), expected)  # kernels as FiLo's
    # default: kernels scaled to the grid; on FiLo's own 37×37 grid that is FiLo's six
    scaled = [k for k in grid_kernels(6)]
    expected = torch.stack([
        torch.stack([direct_prob(f, text.h_normal, text.h_anomalous) for f in direct_aggregate(patches, *k).reshape(-1, 5)])
        .reshape(2, 6, 6) for k in scaled]).mean(0)
    torch.testing.assert_close(multi_shape_map(patches, text), expected)


def _direct_kernels(grid):
    return list(dict.fromkeys((_direct_side(h, grid), _direct_side(w, grid)) for h, w in MULTI_SHAPE_KERNELS))


def _direct_side(k, grid, reference=37):
    """The odd window side nearest to k·grid/reference (at least 1), by search."""
    target = max(1.0, k * grid / reference)
    return min(range(1, 2 * grid + 2, 2), key=lambda n: (abs(n - target), n))


@pytest.mark.parametrize("grid", [15, 28, 37, 56])
def test_multi_shape_kernels_keep_their_share_of_the_grid(grid):
    """FiLo's MMCI kernels (1, 3, 5, 7, 1×5, 5×1 on a 37×37 grid) scaled to our grids."""
    got = grid_kernels(grid)
    expected = list(dict.fromkeys((_direct_side(h, grid), _direct_side(w, grid)) for h, w in MULTI_SHAPE_KERNELS))
    assert list(got) == expected
    if grid == 37:
        assert got == MULTI_SHAPE_KERNELS
    for (h, w), (h0, w0) in zip([(_direct_side(a, grid), _direct_side(b, grid)) for a, b in MULTI_SHAPE_KERNELS],
                                MULTI_SHAPE_KERNELS):
        assert abs(h / grid - h0 / 37) <= 1 / grid + 1e-9 and abs(w / grid - w0 / 37) <= 1 / grid + 1e-9
    assert max(max(k) for k in got) / grid <= 7 / 37 + 1.0 / grid  # a 7×7 no longer covers half of a 15×15 grid
    assert grid_kernels(grid, reference_grid=0) == MULTI_SHAPE_KERNELS


def test_multi_shape_with_only_the_1x1_kernel_is_the_plain_path():
    patches, text = random_patches(), random_text()
    assert torch.equal(multi_shape_map(patches, text, kernels=((1, 1),)), to_grid(language_score(patches, text)))


def test_multi_shape_keeps_a_constant_feature_field():
    patches = unit(torch.ones(1, 36, 5, dtype=torch.float64))
    for k in MULTI_SHAPE_KERNELS:
        torch.testing.assert_close(multi_shape_features(patches, k), patches)


# ---- object prior, smoothing -----------------------------------------------------------------
def test_object_prior_with_lambda_one_is_the_identity():
    maps, fg = torch.rand(2, 5, 5), torch.rand(2, 5, 5)
    assert torch.equal(object_prior(maps, fg, 1.0), maps)


def test_object_prior_scales_the_outside_by_lambda():
    maps, fg = torch.rand(2, 5, 5), torch.rand(2, 5, 5)
    got = object_prior(maps, fg, 0.3)
    for idx in np.ndindex(2, 5, 5):
        f = float(fg[idx])
        assert float(got[idx]) == pytest.approx(float(maps[idx]) * (f * 1.0 + (1 - f) * 0.3), rel=1e-6)
    binary = (fg > 0.5).float()
    hard = object_prior(maps, binary, 0.0)
    assert torch.equal(hard[binary == 1], maps[binary == 1]) and not hard[binary == 0].any()


def test_smoothing_keeps_a_constant_map_and_every_maps_mean():
    const = torch.full((1, 9, 9), 0.37)
    torch.testing.assert_close(gaussian_smooth(const, 1.5), const)
    maps = torch.rand(2, 7, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (0.5, 2.0, 10.0):
        torch.testing.assert_close(gaussian_smooth(maps, sigma).mean(dim=(1, 2)), maps.mean(dim=(1, 2)))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7])
def test_smoothing_equals_a_direct_gaussian_per_map(sigma):
    maps = torch.rand(2, 8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = gaussian_smooth(maps, sigma)
    for b in range(2):  # each map on its own: images never blur into each other
        np.testing.assert_allclose(got[b].numpy(), direct_gaussian(maps[b].numpy(), sigma), atol=1e-12)
    assert torch.equal(gaussian_smooth(maps, 0.0), maps)


def test_sigma_in_eval_pixels_becomes_grid_cells():
    assert smoothing_sigma(4.0, 56, 448) == 0.5
    assert smoothing_sigma(4.0, 4, 448) == pytest.approx(4 * 4 / 448)


# ---- the switches inside the pipeline -------------------------------------------------------
SMALL = dict(cls_scale=32, seg_scales=(32, 64), seg_prompts=("winclip",), vision_multiplier=1.0)


def _maps(pipe, emb):
    """FADE's fused language and vision maps from the pipeline's own texts (the first pass)."""
    cfg = pipe.config
    lang = fuse_scales([to_grid(language_score(emb[s].gem, pipe.seg_text)) for s in cfg.seg_scales])
    return lang, cfg.vision_multiplier


def _fg(pipe, emb):
    return fuse_scales([torch.stack([torch.stack([direct_prob(f, pipe.filo_text.foreground.h_normal,
                                                              pipe.filo_text.foreground.h_anomalous) for f in p])
                                     for p in emb[s].gem]).reshape(-1, s // 16, s // 16) for s in pipe.config.seg_scales])


def test_defaults_are_plain_fade(tiny_backbone, tmp_path):
    cfg = FadeConfig()
    assert (cfg.positions, cfg.object_prior, cfg.multi_shape, cfg.smooth_sigma, cfg.fg_matching) == (False, None, False, 0.0, False)
    assert method_label(cfg) == "fade"
    pipe = FadePipeline.from_config(tiny_backbone, FadeConfig(**SMALL), "x", None, TextEncoderCache(tiny_backbone, tmp_path))
    assert pipe.filo is None and pipe.filo_text is None


def test_pipeline_positions_equal_a_direct_two_pass_composition(tiny_backbone, tmp_path):
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    pipe = FadePipeline.from_config(tiny_backbone, FadeConfig(**SMALL, positions=True), "bottle", None, cache)
    images = [random_image(1), random_image(2)]
    emb = pipe.embed(images)
    lang1, m = _maps(pipe, emb)
    vision = fuse_scales([to_grid(self_knn_distance(emb[s].gem, 2)) for s in pipe.config.seg_scales]) * m
    w = pipe.config.vision_weight
    first = ((1 - w) * lang1 + w * vision).clamp(0, 1)
    results = pipe.score(emb)
    for b, res in enumerate(results):
        pos = direct_peak_region(first[b].numpy())
        k = POSITIONS.index(pos)
        second = fuse_scales([torch.stack([direct_prob(f, pipe.filo_text.h_normal, pipe.filo_text.h_positions[k])
                                           for f in emb[s].gem[b]]).reshape(1, s // 16, s // 16) for s in pipe.config.seg_scales])[0]
        expected = ((1 - w) * 0.5 * (lang1[b] + second) + w * vision[b]).clamp(0, 1)
        torch.testing.assert_close(res.map, expected, atol=1e-5, rtol=0)
    plain = FadePipeline.from_config(tiny_backbone, FadeConfig(**SMALL), "bottle", None, cache).score(emb)
    assert [r.score for r in results] == [r.score for r in plain]  # zero-shot score stays the CLS language score
    assert any(not torch.allclose(r.map, p.map) for r, p in zip(results, plain))


def test_pipeline_object_prior(tiny_backbone, tmp_path):
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    images = [random_image(1), random_image(2)]
    plain = FadePipeline.from_config(tiny_backbone, FadeConfig(**SMALL), "bottle", None, cache)
    emb = plain.embed(images)
    base = plain.score(emb)
    identity = FadePipeline.from_config(tiny_backbone, FadeConfig(**SMALL, object_prior=1.0), "bottle", None, cache).score(emb)
    assert all(torch.equal(a.map, b.map) and a.score == b.score for a, b in zip(identity, base))
    pipe = FadePipeline.from_config(tiny_backbone, FadeConfig(**SMALL, object_prior=0.4), "bottle", None, cache)
    fg = _fg(pipe, emb)
    lang, m = _maps(pipe, emb)
    vision = fuse_scales([to_grid(self_knn_distance(emb[s].gem, 2)) for s in pipe.config.seg_scales]) * m
    w = pipe.config.vision_weight
    for b, res in enumerate(pipe.score(emb)):
        expected = (((1 - w) * lang[b] + w * vision[b]) * (0.4 + 0.6 * fg[b])).clamp(0, 1)
        torch.testing.assert_close(res.map, expected, atol=1e-5, rtol=0)


def test_pipeline_foreground_matching_restricts_few_shot_vision(tiny_backbone, tmp_path):
    """FiLo++ eqs. 5–7: the few-shot map × (λ + (1 − λ)·F) once (λ = 0.7 without the object
    prior), after the image score (which keeps FADE's ½(AC + max(m·vision)) on the unsuppressed map)."""
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    images = [random_image(1), random_image(2)]
    bank = build_reference_bank(tiny_backbone, [random_image(30)], (32, 64), "clip")
    for extra, lam in (({}, 0.7), ({"object_prior": 0.4}, 0.4)):
        cfg = FadeConfig(**SMALL, fg_matching=True, **extra)
        pipe = FadePipeline.from_config(tiny_backbone, cfg, "bottle", bank, cache)
        emb = pipe.embed(images)
        fg = _fg(pipe, emb)
        lang, m = _maps(pipe, emb)
        vision = fuse_scales([to_grid(bank.score(s, emb[s].clip)) for s in pipe.config.seg_scales]) * m
        ac = language_score(emb[32].cls, pipe.cls_text)
        w = pipe.config.vision_weight
        lang_out = lang * (lam + (1 - lam) * fg) if "object_prior" in extra else lang
        for b, res in enumerate(pipe.score(emb)):
            suppressed = vision[b] * (lam + (1 - lam) * fg[b])  # once, even with the object prior on
            torch.testing.assert_close(res.map, ((1 - w) * lang_out[b] + w * suppressed).clamp(0, 1), atol=1e-5, rtol=0)
            assert res.score == pytest.approx(float((0.5 * (ac[b] + vision[b].max())).clamp(0, 1)), abs=1e-5)
    # zero-shot there is no reference bank to restrict: the map is FADE's
    cfg = FadeConfig(**SMALL, fg_matching=True)
    zero = FadePipeline.from_config(tiny_backbone, cfg, "bottle", None, cache)(images)
    plain = FadePipeline.from_config(tiny_backbone, FadeConfig(**SMALL), "bottle", None, cache)(images)
    assert all(torch.equal(a.map, b.map) for a, b in zip(zero, plain))


def test_filo_image_score_is_half_text_plus_max_map_before_suppression(tiny_backbone, tmp_path):
    """FiLo's score (official code): ½(text probability + max of the map), the object prior
    applied to the map afterwards."""
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    images = [random_image(1), random_image(2)]
    bank = build_reference_bank(tiny_backbone, [random_image(30)], (32, 64), "clip")
    for refs in (None, bank):
        cfg = FadeConfig(**SMALL, filo_score=True, object_prior=0.5)
        pipe = FadePipeline.from_config(tiny_backbone, cfg.resolved(refs is not None), "bottle", refs, cache)
        emb = pipe.embed(images)
        fg = _fg(pipe, emb)
        lang, m = _maps(pipe, emb)
        if refs is None:
            vision = fuse_scales([to_grid(self_knn_distance(emb[s].gem, 2)) for s in pipe.config.seg_scales]) * m
        else:
            vision = fuse_scales([to_grid(bank.score(s, emb[s].clip)) for s in pipe.config.seg_scales]) * m
        ac = language_score(emb[32].cls, pipe.cls_text)
        w = pipe.config.vision_weight
        for b, res in enumerate(pipe.score(emb)):
            before = ((1 - w) * lang[b] + w * vision[b]).clamp(0, 1)
            assert res.score == pytest.approx(float(0.5 * (ac[b] + before.max())), abs=1e-5)
            torch.testing.assert_close(res.map, (before * (0.5 + 0.5 * fg[b])).clamp(0, 1), atol=1e-5, rtol=0)
    assert method_label(FadeConfig(filo_score=True)) == "filo[filo-score]"
    assert any("language" in e for e in FadeConfig(filo_score=True, classification="vision").check())


def test_pipeline_multi_shape_and_smoothing(tiny_backbone, tmp_path):
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    images = [random_image(1, (96, 96))]
    cfg = FadeConfig(**{**SMALL, "seg_scales": (64, 128)}, segmentation="language", multi_shape=True, smooth_sigma=60.0)
    pipe = FadePipeline.from_config(tiny_backbone, cfg, "bottle", None, cache)
    emb = pipe.embed(images)
    text = pipe.seg_text
    lang = fuse_scales([torch.stack([
        torch.stack([direct_prob(f, text.h_normal, text.h_anomalous) for f in direct_aggregate(emb[s].gem.double(), *k)[0]])
        .reshape(1, s // 16, s // 16) for k in _direct_kernels(s // 16)]).mean(0) for s in (64, 128)])
    sigma = 60.0 * 8 / 448
    expected = np.clip(direct_gaussian(lang[0].numpy(), sigma), 0, 1)
    np.testing.assert_allclose(pipe.score(emb)[0].map.numpy(), expected, atol=1e-5)


def test_switches_from_options():
    off = {"positions": False, "object_prior": None, "multi_shape": False, "smooth_sigma": 0.0, "fg_matching": False,
           "filo_score": False, "multi_shape_grid": 37}
    assert resolve_switches(False) == off
    assert resolve_switches(True) == {**FILO_PRESET, "smooth_sigma": float(FILO_PRESET["smooth_sigma"]),
                                        "multi_shape_grid": 37}
    assert resolve_switches(True, multi_shape_grid=0, filo_score=True)["multi_shape_grid"] == 0
    assert resolve_switches(False, filo_score=True)["filo_score"] is True
    assert resolve_switches(False, object_prior=0.5)["object_prior"] == 0.5
    assert resolve_switches(True, object_prior=0.2)["object_prior"] == 0.2
    assert resolve_switches(True, object_prior=1.0)["object_prior"] is None  # λ = 1 is off
    assert resolve_switches(True, positions=False, smooth=0.0)["positions"] is False
    assert resolve_switches(True, smooth=0.0)["smooth_sigma"] == 0.0
    assert method_label(replace(FadeConfig(), **resolve_switches(True))) == \
        "filo[object-prior=0.7,multi-shape,smooth=4,fg-matching]"


@pytest.mark.parametrize("change, message", [
    (dict(object_prior=1.5), "λ"), (dict(smooth_sigma=-1.0), "σ"),
    (dict(positions=True, segmentation="vision"), "language map"),
])
def test_bad_switch_values_are_refused(change, message):
    assert any(message in e for e in replace(FadeConfig(), **change).check())


# ---- command line ----------------------------------------------------------------------------
SEG = [*FAST, "--vision-multiplier", "1", "-q"]


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    """One text-embedding cache for this module's CLI runs (keyed by content, so sharing is safe)."""
    return tmp_path_factory.mktemp("filo-text-cache")


def _segment(capsys, monkeypatch, image_dir, out, *flags, cache):
    code, stdout, stderr = run(capsys, monkeypatch, "segment", str(image_dir), "--out", str(out), *SEG, *flags,
                               cache=cache)
    assert code == 0, stderr
    found = rows(stdout)
    return found, [np.load(r["outputs"]["map"]) for r in found]


@pytest.mark.parametrize("flags, label", [
    (["--positions"], "filo[positions]"),
    (["--object-prior", "0.7"], "filo[object-prior=0.7]"),
    (["--object-prior", "0"], "filo[object-prior=0]"),
    (["--multi-shape", "--scales", "64,256"], "filo[multi-shape]"),  # kernels > 1×1 from a 16×16 grid on
    (["--multi-shape", "--multi-shape-grid", "0"], "filo[multi-shape=fixed]"),  # FiLo's kernels on every grid
    (["--smooth", "100"], "filo[smooth=100]"),
    (["--method", "filo", "--smooth", "100"], "filo[object-prior=0.7,multi-shape,smooth=100,fg-matching]"),
    (["--method", "filo", "--positions"], "filo[positions,object-prior=0.7,multi-shape,smooth=4,fg-matching]"),
])
def test_each_flag_changes_the_segmentation(capsys, monkeypatch, image_dir, tmp_path, text_cache, flags, label):
    base_rows, base_maps = _segment(capsys, monkeypatch, image_dir, tmp_path / "base", cache=text_cache)
    assert all(r["method"] == "fade" for r in base_rows)
    new_rows, new_maps = _segment(capsys, monkeypatch, image_dir, tmp_path / "new", *flags, cache=text_cache)
    assert all(r["method"] == label for r in new_rows)
    assert max(float(np.abs(a - b).max()) for a, b in zip(base_maps, new_maps)) > 1e-4


@pytest.mark.parametrize("flags", [
    ["--object-prior", "1"],
    ["--fg-matching"],  # zero-shot: nothing to restrict
    ["--method", "filo", "--object-prior", "1", "--no-multi-shape", "--smooth", "0", "--no-fg-matching"],
])
def test_switches_that_are_off_leave_fade_unchanged(capsys, monkeypatch, image_dir, tmp_path, text_cache, flags):
    base_rows, base_maps = _segment(capsys, monkeypatch, image_dir, tmp_path / "base", cache=text_cache)
    new_rows, new_maps = _segment(capsys, monkeypatch, image_dir, tmp_path / "new", *flags, cache=text_cache)
    assert [r["score"] for r in new_rows] == [r["score"] for r in base_rows]
    assert all(np.array_equal(a, b) for a, b in zip(base_maps, new_maps))
    if "--fg-matching" not in flags:
        assert all(r["method"] == "fade" for r in new_rows)


def test_fg_matching_changes_few_shot_maps_after_the_score(capsys, monkeypatch, image_dir, tmp_path, text_cache):
    refs = tmp_path / "good"
    refs.mkdir()
    random_image(20).save(refs / "0.png")
    plain, plain_maps = _segment(capsys, monkeypatch, image_dir, tmp_path / "a", "--refs", str(refs), cache=text_cache)
    restricted, maps = _segment(capsys, monkeypatch, image_dir, tmp_path / "b", "--refs", str(refs), "--fg-matching",
                                cache=text_cache)
    assert [r["method"] for r in restricted] == ["filo[fg-matching]"] * 3
    assert [r["score"] for r in restricted] == [r["score"] for r in plain]  # suppressed after the image score
    assert max(float(np.abs(a - b).max()) for a, b in zip(plain_maps, maps)) > 1e-4


def test_filo_switches_are_refused_with_alfa(capsys, monkeypatch, image_dir, tmp_path):
    code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir), "--method", "alfa", "--positions", *FAST[:6],
                          cache=tmp_path)
    assert code == 2 and "fade: error: --positions does not apply to --method alfa" in stderr


def test_prompt_sets_outside_the_position_pass_drop_the_placeholder():
    from fade_cli.prompts.text import build_text_classifier

    enc = CountingEncoder()
    build_text_classifier([load_bank("filo")], "bottle", enc)
    texts = [t for call in enc.calls for t in call]
    assert texts and not any("{pos}" in t for t in texts)
    assert "bottle with a crack in the glass" in texts  # framed: "a photo of a bottle with ..."


def test_filo_score_flag_changes_scores_not_maps(capsys, monkeypatch, image_dir, tmp_path, text_cache):
    base_rows, base_maps = _segment(capsys, monkeypatch, image_dir, tmp_path / "base", cache=text_cache)
    new_rows, new_maps = _segment(capsys, monkeypatch, image_dir, tmp_path / "new", "--filo-score", cache=text_cache)
    assert all(r["method"] == "filo[filo-score]" for r in new_rows)
    assert all(np.array_equal(a, b) for a, b in zip(base_maps, new_maps))  # nothing suppressed: same map
    assert any(abs(a["score"] - b["score"]) > 1e-4 for a, b in zip(base_rows, new_rows))
    code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir), *FAST, "--filo-score", "--classification-mode",
                          "vision", cache=text_cache)
    assert code == 2 and "classification mode" in stderr
    code, _, stderr = run(capsys, monkeypatch, "detect", str(image_dir), *ALFA, "--filo-score", cache=text_cache)
    assert code == 2 and "--filo-score does not apply to --method alfa" in stderr
