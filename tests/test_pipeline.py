"""The whole FADE computation against a direct composition of the papers' formulas."""

import json

import numpy as np
import pytest
import torch

from fade_cli.model.backbone import preprocess_batch
from fade_cli.methods.fade import FadeConfig
from fade_cli.errors import MemoryBankError
from fade_cli.methods.fade import FadePipeline
from fade_cli.methods.base import build_reference_bank
from fade_cli.prompts.text import TextEncoderCache

from conftest import random_image
from reference import bilinear_resize, gem_tokens, kth_nn_distance, language_prob

CLS_NORMAL = ["a photo of a flawless {class}", "a {class} without defect"]
CLS_ANOM = ["a photo of a damaged {class}", "a {class} with a crack", "a broken {class}"]
SEG_NORMAL = ["a smooth clean surface", "an intact part"]
SEG_ANOM = ["a scratch on the surface", "a hole in the part"]


@pytest.fixture()
def banks(tmp_path):
    ours = {"schema_version": 1, "name": "cls-test", "version": "1.0.0", "description": "t",
            "generation": {"method": "manual"}, "placeholders": ["class"],
            "prompts": {"normal": CLS_NORMAL, "anomalous": CLS_ANOM}}
    official = {"normal": {"prompts": SEG_NORMAL}, "abnormal": {"prompts": SEG_ANOM}}
    (tmp_path / "cls.json").write_text(json.dumps(ours))
    (tmp_path / "seg.json").write_text(json.dumps(official))
    return str(tmp_path / "cls.json"), str(tmp_path / "seg.json")


def _h(backbone, prompts, cls_name):
    texts = [f"a photo of a {p.replace('{class}', cls_name)}." for p in prompts]
    with torch.no_grad():
        return backbone.model.encode_text(backbone.tokenizer(texts), normalize=True).mean(dim=0)


def reference_fade(backbone, image, refs, cls_scale, seg_scales, class_name, m, w):
    """FADE for one image, written directly from the paper and the official defaults."""
    h_cn, h_ca = _h(backbone, CLS_NORMAL, class_name.replace("_", " ")), _h(backbone, CLS_ANOM, class_name.replace("_", " "))
    h_sn, h_sa = _h(backbone, SEG_NORMAL, "object"), _h(backbone, SEG_ANOM, "object")
    with torch.no_grad():
        clip_cls, _ = gem_tokens(backbone.model, preprocess_batch([image], cls_scale))
        ac = float(language_prob(clip_cls[0], h_cn, h_ca))
        G = max(seg_scales) // 16
        lang, vis = [], []
        for s in seg_scales:
            g = s // 16
            clip, gem = gem_tokens(backbone.model, preprocess_batch([image], s))
            lang.append(bilinear_resize(language_prob(gem[1:], h_sn, h_sa).reshape(g, g).numpy().astype(np.float64), G))
            if refs:
                bank = torch.cat([gem_tokens(backbone.model, preprocess_batch([r], s))[0][1:] for r in refs])
                v = kth_nn_distance(clip[1:].numpy(), bank.numpy(), 1)
            else:
                v = kth_nn_distance(gem[1:].numpy(), gem[1:].numpy(), 2)
            vis.append(bilinear_resize(v.reshape(g, g), G))
    vision = m * np.mean(vis, axis=0)
    fused = np.clip((1 - w) * np.mean(lang, axis=0) + w * vision, 0, 1)
    score = ac if not refs else float(np.clip(0.5 * (ac + vision.max()), 0, 1))
    return score, fused


@pytest.mark.parametrize("shots", [0, 2])
def test_pipeline_equals_direct_fade(tiny_backbone, banks, tmp_path, shots):
    cls_bank, seg_bank = banks
    config = FadeConfig(cls_scale=48, seg_scales=(32, 64), cls_prompts=(cls_bank,), seg_prompts=(seg_bank,))
    refs = [random_image(10 + i) for i in range(shots)]
    few = config.resolved(few_shot=bool(refs))
    assert (few.vision_multiplier, few.vision_weight, few.vision_feature) == ((3.5, 0.85, "clip") if refs else (80.0, 0.5, "gem"))
    bank = build_reference_bank(tiny_backbone, refs, few.seg_scales, few.vision_feature) if refs else None
    pipe = FadePipeline.from_config(tiny_backbone, config, "metal_nut", bank, TextEncoderCache(tiny_backbone, tmp_path))
    images = [random_image(1), random_image(2, (40, 90))]
    results = pipe(images)
    for img, res in zip(images, results):
        score, fused = reference_fade(tiny_backbone, img, refs, 48, (32, 64), "metal_nut",
                                      few.vision_multiplier, few.vision_weight)
        assert res.map.shape == (4, 4)
        np.testing.assert_allclose(res.map.numpy(), fused, atol=2e-5)
        assert res.score == pytest.approx(score, abs=2e-5)


def test_modes_language_only_and_vision_only(tiny_backbone, banks, tmp_path):
    cls_bank, seg_bank = banks
    base = dict(cls_scale=32, seg_scales=(32,), cls_prompts=(cls_bank,), seg_prompts=(seg_bank,))
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    img = [random_image(3)]
    both = FadePipeline.from_config(tiny_backbone, FadeConfig(**base), "x", None, cache)(img)[0]
    lang = FadePipeline.from_config(tiny_backbone, FadeConfig(**base, segmentation="language"), "x", None, cache)(img)[0]
    vis = FadePipeline.from_config(tiny_backbone, FadeConfig(**base, segmentation="vision"), "x", None, cache)(img)[0]
    expected = np.clip(0.5 * lang.map.numpy() + 0.5 * np.clip(vis.map.numpy(), 0, 1), 0, 1)
    # vision-only maps are clipped after the multiplier; 'both' mixes the unclipped ones, so
    # compare where the vision term stays below 1
    ok = vis.map.numpy() < 0.999
    np.testing.assert_allclose(both.map.numpy()[ok], expected[ok], atol=1e-5)
    assert both.score == lang.score == vis.score  # 0-shot image score is the language AC score


def test_bank_from_other_model_or_scales_is_refused(tiny_backbone, banks, tmp_path):
    cls_bank, seg_bank = banks
    config = FadeConfig(cls_scale=32, seg_scales=(32, 64), cls_prompts=(cls_bank,), seg_prompts=(seg_bank,))
    bank = build_reference_bank(tiny_backbone, [random_image(4)], (32,), "clip")
    with pytest.raises(MemoryBankError, match="scale"):
        FadePipeline.from_config(tiny_backbone, config, "x", bank, TextEncoderCache(tiny_backbone, tmp_path))
    bank = build_reference_bank(tiny_backbone, [random_image(4)], (32, 64), "clip")
    bank.meta["weights_id"] = "other"
    with pytest.raises(MemoryBankError, match="built with"):
        FadePipeline.from_config(tiny_backbone, config, "x", bank, TextEncoderCache(tiny_backbone, tmp_path))


def test_embed_once_then_score_with_several_banks(tiny_backbone, banks, tmp_path):
    """Evaluation embeds each test image once and scores every shot/seed bank from it."""
    cls_bank, seg_bank = banks
    config = FadeConfig(cls_scale=32, seg_scales=(32, 64), cls_prompts=(cls_bank,), seg_prompts=(seg_bank,))
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    zero = FadePipeline.from_config(tiny_backbone, config, "x", None, cache)
    few = FadePipeline(tiny_backbone, config, "x", zero.cls_text, zero.seg_text, few_shot=True)
    images = [random_image(1), random_image(2)]
    embs = zero.embed(images, extra_features=("clip",))
    for z, direct in zip(zero.score(embs), zero(images)):
        assert z.score == direct.score and torch.equal(z.map, direct.map)
    for seed in range(2):
        bank = build_reference_bank(tiny_backbone, [random_image(40 + seed)], (32, 64), "clip")
        direct = FadePipeline.from_config(tiny_backbone, config, "x", bank, cache)(images)
        for a, b in zip(few.score(embs, bank), direct):
            assert a.score == pytest.approx(b.score, abs=1e-6)
            torch.testing.assert_close(a.map, b.map, atol=1e-6, rtol=0)
    with pytest.raises(Exception, match="needs a reference bank"):
        few.score(embs)
