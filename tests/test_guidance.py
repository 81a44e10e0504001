"""Language score and multi-scale fusion against the direct formulas."""

import numpy as np
import torch

from fade_cli.methods.guidance import fuse_scales, language_score, resize_map, to_grid
from fade_cli.prompts.text import TextClassifier

from reference import bilinear_resize, l2n, language_prob


def test_language_score_is_the_two_way_softmax():
    torch.manual_seed(0)
    f = l2n(torch.randn(50, 16))
    text = TextClassifier(h_normal=l2n(torch.randn(16)) * 0.9, h_anomalous=l2n(torch.randn(16)) * 0.8, counts=(1, 1), banks=())
    ours = language_score(f, text)
    ref = language_prob(f.double(), text.h_normal.double(), text.h_anomalous.double())
    torch.testing.assert_close(ours.double(), ref, atol=1e-6, rtol=0)
    assert ((ours >= 0) & (ours <= 1)).all()


def test_resize_matches_cv2_style_bilinear():
    rng = np.random.default_rng(0)
    for h, out in [(15, 56), (28, 56), (4, 7)]:
        m = rng.random((h, h))
        ours = resize_map(torch.from_numpy(m)[None], (out, out))[0].numpy()
        np.testing.assert_allclose(ours, bilinear_resize(m, out), atol=1e-12)


def test_fuse_scales_is_mean_at_largest_grid():
    rng = np.random.default_rng(1)
    maps = [rng.random((2, g, g)) for g in (3, 5, 10)]
    fused = fuse_scales([torch.from_numpy(m) for m in maps]).numpy()
    for b in range(2):
        ref = np.mean([bilinear_resize(m[b], 10) for m in maps], axis=0)
        np.testing.assert_allclose(fused[b], ref, atol=1e-12)


def test_to_grid_is_row_major():
    scores = torch.arange(12.0).view(1, 12)[:, :9]
    grid = to_grid(scores)
    assert grid[0, 0, 2] == 2 and grid[0, 1, 0] == 3
