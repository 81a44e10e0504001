"""MuSc's tensor steps (fade_cli/methods/musc.py) against direct loop-by-loop implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fade_cli.methods import musc


def _tokens(n=4, g=4, c=5, seed=0) -> torch.Tensor:
    return torch.randn(n, g * g, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- direct references -----------------------------------------------------------------------

def slow_layer_normalize(tokens):
    out = torch.empty_like(tokens)
    for b in range(tokens.shape[0]):
        values = tokens[b]
        mean = values.sum() / values.numel()
        var = ((values - mean) ** 2).sum() / values.numel()
        out[b] = (values - mean) / math.sqrt(var + 1e-5)
    return out


def slow_neighbourhood_mean(features, r):
    b, n, c = features.shape
    g = math.isqrt(n)
    out = torch.zeros_like(features)
    for i in range(b):
        for y in range(g):
            for x in range(g):
                total = torch.zeros(c, dtype=features.dtype)
                for dy in range(-(r // 2), r // 2 + 1):
                    for dx in range(-(r // 2), r // 2 + 1):
                        if 0 <= y + dy < g and 0 <= x + dx < g:
                            total += features[i, (y + dy) * g + (x + dx)]
                out[i, y * g + x] = total / (r * r)  # outside the grid counts as zero
    return out


def slow_aggregate(tokens, r):
    agg = slow_neighbourhood_mean(slow_layer_normalize(tokens), r)
    return torch.stack([torch.stack([v / v.norm() for v in img]) for img in agg])


def slow_mutual_scores(z, fraction):
    n, length, _ = z.shape
    k = max(1, math.floor((n - 1) * fraction + 1e-9))
    out = torch.empty(n, length, dtype=z.dtype)
    for i in range(n):
        for p in range(length):
            per_image = []
            for j in range(n):
                if j == i:
                    continue
                per_image.append(min(float(torch.linalg.vector_norm(z[i, p] - z[j, q])) for q in range(length)))
            per_image.sort()
            out[i, p] = sum(per_image[:k]) / k
    return out


def slow_rscin(scores, cls, windows):
    n = len(scores)
    result = [0.0] * n
    for k in windows:
        for i in range(n):
            sims = sorted(((float(cls[i] @ cls[j]), j) for j in range(n)), reverse=True)[: min(k, n)]
            weights = [max(s, 0.0) for s, _ in sims]
            result[i] += sum(w * float(scores[j]) for w, (_, j) in zip(weights, sims)) / sum(weights)
    return torch.tensor([v / len(windows) for v in result], dtype=torch.float64)


# --- each step ---------------------------------------------------------------------------------

def test_quarter_layers_match_muscs_choices():
    assert musc.quarter_layers(12) == (2, 5, 8, 11)  # ViT-B-16-plus-240, MuSc's scripts
    assert musc.quarter_layers(24) == (5, 11, 17, 23)  # ViT-L-14(-336)
    assert musc.quarter_layers(7) == (1, 3, 5, 6)


def test_layer_normalize_matches_loop():
    t = _tokens(3, 3, 4)
    torch.testing.assert_close(musc.layer_normalize(t), slow_layer_normalize(t))


@pytest.mark.parametrize("r", [1, 3, 5])
def test_neighbourhood_mean_matches_loop(r):
    f = _tokens(2, 5, 3, seed=r)
    torch.testing.assert_close(musc.neighbourhood_mean(f, r), slow_neighbourhood_mean(f, r))


def test_neighbourhood_mean_refuses_even_degree():
    with pytest.raises(ValueError, match="odd"):
        musc.neighbourhood_mean(_tokens(), 2)


@pytest.mark.parametrize("r", [1, 3, 5])
def test_aggregate_matches_loop(r):
    t = _tokens(2, 4, 3, seed=10 + r)
    torch.testing.assert_close(musc.aggregate(t, r).double(), slow_aggregate(t, r), atol=1e-5, rtol=1e-5)


def test_lowest_count():
    assert musc.lowest_count(199, 0.3) == 59
    assert musc.lowest_count(10, 0.3) == 3  # not 3.0000000000000004 -> trouble
    assert musc.lowest_count(2, 0.3) == 1  # never an empty mean
    assert musc.lowest_count(5, 1.0) == 5


@pytest.mark.parametrize("fraction", [0.3, 0.5, 1.0])
def test_mutual_scores_match_loop(fraction):
    z = F.normalize(_tokens(6, 3, 4, seed=3), dim=-1)
    torch.testing.assert_close(musc.mutual_scores(z, fraction), slow_mutual_scores(z, fraction), atol=1e-6, rtol=1e-6)


def test_mutual_scores_independent_of_block_size():
    z = F.normalize(_tokens(7, 3, 4, seed=4), dim=-1).float()
    whole = musc.mutual_scores(z, block_elements=1 << 20)
    for block in (1, 9, 20, 50):  # one reference image per product, and uneven splits
        torch.testing.assert_close(musc.mutual_scores(z, block_elements=block), whole)


def test_mutual_scores_of_some_queries_are_those_rows():
    z = F.normalize(_tokens(5, 3, 4, seed=9), dim=-1)
    torch.testing.assert_close(musc.mutual_scores(z, queries=[3, 0]), musc.mutual_scores(z)[[3, 0]])


def test_mutual_scores_need_two_images():
    with pytest.raises(ValueError):
        musc.mutual_scores(F.normalize(_tokens(1), dim=-1))


def test_mutual_map_is_mean_over_layers_and_degrees():
    layers = [_tokens(4, 3, 4, seed=s) for s in (5, 6)]
    expected = torch.stack([slow_mutual_scores(slow_aggregate(t, r), 0.3) for t in layers for r in (1, 3)]).mean(0)
    got = musc.mutual_map(layers, (1, 3), 0.3)
    assert got.shape == (4, 3, 3)
    torch.testing.assert_close(got.double().flatten(1), expected, atol=1e-5, rtol=1e-5)


def test_image_scores_are_map_maxima():
    maps = torch.rand(3, 4, 4)
    assert torch.equal(musc.image_scores(maps), torch.tensor([float(m.max()) for m in maps]))


@pytest.mark.parametrize("windows", [(1,), (1, 2, 3), (2, 5), (1, 8, 9)])
def test_rscin_matches_loop(windows):
    g = torch.Generator().manual_seed(7)
    cls = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64) + 1.0, dim=-1)
    scores = torch.rand(6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(musc.rscin(scores, cls, windows).double(), slow_rscin(scores, cls, windows),
                               atol=1e-6, rtol=1e-6)


def test_rscin_window_one_keeps_scores_and_commutes_with_min_max():
    g = torch.Generator().manual_seed(8)
    cls = F.normalize(torch.randn(5, 4, generator=g) + 0.5, dim=-1)
    scores = torch.rand(5, generator=g)
    torch.testing.assert_close(musc.rscin(scores, cls, (1,)), scores)
    lo, hi = scores.min(), scores.max()
    # MuSc normalises before re-ranking; the re-ranking is row-stochastic, so the order is the same
    torch.testing.assert_close(musc.rscin((scores - lo) / (hi - lo), cls, (2, 3)),
                               (musc.rscin(scores, cls, (2, 3)) - lo) / (hi - lo))


def test_rscin_pulls_a_noisy_normal_score_towards_its_neighbours():
    cls = F.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [0.0, 1.0]]), dim=-1)
    scores = torch.tensor([0.9, 0.1, 0.1, 0.8])  # image 0: noise on a normal look-alike of 1, 2
    new = musc.rscin(scores, cls, (1, 2, 3))
    assert new[0] < scores[0] and new[3] > new[0]


# --- planted defect ----------------------------------------------------------------------------

def test_planted_defect_ranks_above_the_same_location_elsewhere():
    g, c, n = 6, 16, 8
    gen = torch.Generator().manual_seed(11)
    product = torch.randn(g * g, c, generator=gen)  # the same object in every image
    tokens = product + 0.1 * torch.randn(n, g * g, c, generator=gen)
    defect_image, defect_patch = 3, 2 * g + 4
    tokens[defect_image, defect_patch] = 3.0 * torch.randn(c, generator=gen)
    layers = [tokens, tokens + 0.05 * torch.randn(n, g * g, c, generator=gen)]
    maps = musc.mutual_map(layers, (1, 3, 5)).flatten(1)
    at_defect = maps[:, defect_patch]
    others = torch.cat([at_defect[:defect_image], at_defect[defect_image + 1:]])
    assert at_defect[defect_image] > others.max()
    assert int(maps[defect_image].argmax()) == defect_patch
    scores = musc.image_scores(maps.view(n, g, g))
    assert int(scores.argmax()) == defect_image


# --- backbone: intermediate tokens ---------------------------------------------------------------

def test_encode_layers_matches_open_clip_blocks(tiny_backbone):
    bb = tiny_backbone
    pixels = torch.randn(3, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    captured = {}
    blocks = bb.model.visual.transformer.resblocks
    hooks = [blocks[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out)) for i in (1, 4)]
    try:
        with torch.no_grad():
            reference_cls = F.normalize(bb.model.encode_image(pixels), dim=-1)
    finally:
        for h in hooks:
            h.remove()
    cls, tokens = bb.encode_layers(pixels, (4, 1))
    assert tokens.shape == (3, 2, 15 * 15, 64)
    torch.testing.assert_close(cls, reference_cls, atol=1e-5, rtol=1e-4)
    for k, layer in enumerate((4, 1)):
        out = captured[layer]
        out = out if out.shape[0] == 3 else out.transpose(0, 1)  # open_clip may run sequence-first
        torch.testing.assert_close(tokens[:, k], out[:, 1:], atol=1e-5, rtol=1e-4)


def test_encode_layers_same_in_chunks(tiny_backbone, monkeypatch):
    from fade_cli.model.backbone import Backbone

    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    whole = tiny_backbone.encode_layers(pixels, (0, 6))
    monkeypatch.setattr(Backbone, "max_batch_tokens", property(lambda self: 17))  # one image per forward
    chunked = tiny_backbone.encode_layers(pixels, (0, 6))
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)


def test_encode_layers_refuses_missing_blocks(tiny_backbone):
    from fade_cli.errors import UsageError

    with pytest.raises(UsageError, match="block index"):
        tiny_backbone.encode_layers(torch.zeros(1, 3, 32, 32), (7,))
