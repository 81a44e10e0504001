"""MuSc as a method (fade_cli/methods/musc_batch.py): subsets, embedding in chunks, fusion, a planted defect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fade_cli.errors import UsageError
from fade_cli.methods import musc
from fade_cli.methods.musc_batch import MuscEmbeddings, MuscOptions, MuscPipeline, subsets

from musc_images import product_images


def test_subsets_are_balanced_and_in_order():
    assert subsets(0, 5) == []
    assert [list(s) for s in subsets(5, 5)] == [[0, 1, 2, 3, 4]]
    assert [len(s) for s in subsets(11, 5)] == [4, 4, 3]  # not 5, 5, 1
    assert [list(s) for s in subsets(6, 3)] == [list(s) for s in subsets(6, 4)] == [[0, 1, 2], [3, 4, 5]]
    parts = subsets(203, 50)
    assert sum(len(s) for s in parts) == 203 and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [i for s in parts for i in s] == list(range(203))


def test_options_check():
    assert MuscOptions().check() == []
    for bad in (dict(r_values=(2,)), dict(fraction=0.0), dict(language_weight=1.5), dict(subset_size=1),
                dict(layers=(1, 1)), dict(rscin_windows=(0,))):
        assert MuscOptions(**bad).check(), bad


def test_default_layers_are_the_quarter_points(tiny_backbone):
    p = MuscPipeline(tiny_backbone, MuscOptions(scale=64), "object")
    assert p.options.layers == musc.quarter_layers(7)
    with pytest.raises(UsageError, match="blocks 0..6"):
        MuscPipeline(tiny_backbone, MuscOptions(scale=64, layers=(3, 9)), "object")


def test_embedding_in_chunks_equals_one_pass(tiny_backbone):
    p = MuscPipeline(tiny_backbone, MuscOptions(scale=64), "object")
    images = product_images(5)
    whole = p.embed(images)
    parts = MuscEmbeddings.concat([p.embed(images[i : i + 2]) for i in range(0, 5, 2)])
    torch.testing.assert_close(parts.cls, whole.cls)
    torch.testing.assert_close(parts.tokens, whole.tokens)
    a = [r.score for r in p.score(whole)]
    b = [r.score for r in p.score(parts)]
    assert a == pytest.approx(b, abs=1e-6)


def test_planted_defect_through_the_backbone(tiny_backbone):
    p = MuscPipeline(tiny_backbone, MuscOptions(scale=128), "object")
    results = p(product_images(8, defect=5))
    scores = [r.score for r in results]
    assert int(np.argmax(scores)) == 5
    maps = torch.stack([r.map for r in results])  # (8, 8, 8): the square covers rows 4-5, cols 2-3
    at_defect = maps[:, 4:6, 2:4].mean(dim=(1, 2))
    assert at_defect[5] > torch.cat([at_defect[:5], at_defect[6:]]).max()
    row, col = divmod(int(maps[5].argmax()), 8)
    assert 4 <= row <= 5 and 2 <= col <= 3
    assert all(0.0 <= float(r.map.min()) and float(r.map.max()) <= 1.0 for r in results)


def test_score_is_rscin_of_the_map_maximum(tiny_backbone):
    opt = MuscOptions(scale=64, r_values=(1, 3), rscin_windows=(1, 2))
    p = MuscPipeline(tiny_backbone, opt, "object")
    emb = p.embed(product_images(4, defect=1))
    results = p.score(emb)
    raw = musc.mutual_map([emb.tokens[:, k] for k in range(emb.tokens.shape[1])], (1, 3), opt.fraction)
    vision = (0.5 * raw).clamp(0, 1)
    torch.testing.assert_close(torch.stack([r.map for r in results]), vision)
    expected = musc.rscin(musc.image_scores(vision), emb.cls, (1, 2))
    assert [r.score for r in results] == pytest.approx(expected.tolist(), abs=1e-6)


def test_one_image_is_refused(tiny_backbone):
    p = MuscPipeline(tiny_backbone, MuscOptions(scale=64), "object")
    with pytest.raises(UsageError, match="at least 2"):
        p(product_images(1))


def test_language_fusion_is_a_weighted_mean(tiny_backbone, tmp_path):
    from fade_cli.methods.fade import FadeConfig
    from fade_cli.prompts.text import TextEncoderCache

    images = product_images(3, defect=0)
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    config = FadeConfig(cls_scale=64, seg_scales=(64, 96), classification="language", segmentation="language")
    fused = MuscPipeline.from_config(tiny_backbone, MuscOptions(scale=64, language_weight=0.25, language=config), "object", cache)
    alone = MuscPipeline.from_config(tiny_backbone, MuscOptions(scale=64, language=config), "object", cache)
    assert alone.language is None and fused.banks and not alone.banks
    lang = fused.language(images)
    mutual = alone(images)
    out = fused(images)
    for f, m, l in zip(out, mutual, lang):
        assert f.map.shape == l.map.shape == (6, 6)
        expected_map = (0.75 * torch.nn.functional.interpolate(m.map[None, None], size=(6, 6), mode="bilinear",
                                                                align_corners=False)[0, 0] + 0.25 * l.map).clamp(0, 1)
        torch.testing.assert_close(f.map, expected_map, atol=1e-6, rtol=1e-5)
        assert f.score == pytest.approx(0.75 * m.score + 0.25 * l.score, abs=1e-6)
        assert f.language_score == pytest.approx(l.score, abs=1e-6)


def test_registry_entry_options():
    from fade_cli.methods.musc_batch import MUSC

    assert MUSC.scores_whole_batch and "language_weight" in MUSC.flags and "windows" not in MUSC.flags
    defaults = MUSC.options({})
    assert (defaults.scale, defaults.layers, defaults.r_values, defaults.fraction, defaults.rscin_windows,
            defaults.language_weight, defaults.subset_size) == (512, None, (1, 3, 5), 0.3, (1, 2, 3), 0.0, 200)
    assert defaults.language.segmentation == defaults.language.classification == "language"
    opt = MUSC.options({"layers": "2,5", "r_values": "1,3", "rscin_windows": "none", "musc_scale": 240,
                        "language_weight": 0.4, "scales": "240,448", "seg_prompts": ["winclip"]})
    assert (opt.layers, opt.r_values, opt.rscin_windows, opt.scale) == ((2, 5), (1, 3), (), 240)
    assert opt.language.seg_scales == (240, 448) and opt.language.seg_prompts == ("winclip",)
    assert MUSC.prompt_sets(MUSC.options({}), "bottle") == []
    assert MUSC.prompt_sets(opt, "bottle")
    for bad, flag in (({"r_values": "x"}, "--r-values"), ({"r_values": "2"}, "--r-values"),
                      ({"lowest_fraction": 1.5}, "--lowest-fraction"), ({"subset_size": 1}, "--subset-size")):
        with pytest.raises(UsageError, match=flag):
            MUSC.options(bad)


def test_registry_entry_refuses_references(tiny_backbone):
    from fade_cli.methods.musc_batch import MUSC

    with pytest.raises(UsageError, match="zero-shot"):
        MUSC.pipeline(tiny_backbone, MUSC.options({"musc_scale": 64}), "object", few_shot=True)
