"""GEM path and backbone forward against the direct slow implementation (tests/reference.py)."""

import pytest
import torch
import torch.nn.functional as F

from fade_cli.model.backbone import preprocess_batch, resample_pos_embed
from fade_cli.model.gem import self_self_attention

from conftest import random_image
from reference import gem_tokens, l2n, softmax


@pytest.mark.parametrize("scale", [240, 64, 320])  # native grid, downsampled, upsampled positions
def test_clip_and_gem_tokens_match_reference(tiny_backbone, scale):
    pixels = preprocess_batch([random_image(1)], scale)
    emb = tiny_backbone.encode_images(pixels)
    with torch.no_grad():
        ref_clip, ref_gem = gem_tokens(tiny_backbone.model, pixels)
    assert emb.grid == scale // 16
    assert emb.gem.shape == (1, (scale // 16) ** 2, tiny_backbone.embed_dim)
    torch.testing.assert_close(emb.cls[0], ref_clip[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.clip[0], ref_clip[1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.gem[0], ref_gem[1:], atol=1e-5, rtol=0)


def test_gem_iterations_follow_reference(tiny_backbone):
    pixels = preprocess_batch([random_image(2)], 64)
    for it in (0, 2):
        emb = tiny_backbone.encode_images(pixels, gem_iterations=it)
        with torch.no_grad():
            _, ref_gem = gem_tokens(tiny_backbone.model, pixels, iterations=it)
        torch.testing.assert_close(emb.gem[0], ref_gem[1:], atol=1e-5, rtol=0)


def test_cls_equals_open_clip_encode_image(tiny_backbone):
    pixels = preprocess_batch([random_image(3), random_image(4)], 240)
    emb = tiny_backbone.encode_images(pixels)
    with torch.no_grad():
        ref = F.normalize(tiny_backbone.model.encode_image(pixels), dim=-1)
    torch.testing.assert_close(emb.cls, ref, atol=1e-5, rtol=0)


def test_batch_equals_single_images(tiny_backbone):
    imgs = [random_image(5), random_image(6)]
    both = tiny_backbone.encode_images(preprocess_batch(imgs, 64))
    for i, img in enumerate(imgs):
        one = tiny_backbone.encode_images(preprocess_batch([img], 64))
        torch.testing.assert_close(both.gem[i], one.gem[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(both.clip[i], one.clip[0], atol=1e-5, rtol=0)


def test_batches_are_chunked_by_token_budget(tiny_backbone, monkeypatch):
    imgs = [random_image(i) for i in range(5)]
    whole = tiny_backbone.encode_images(preprocess_batch(imgs, 64))
    monkeypatch.setattr(type(tiny_backbone), "max_batch_tokens", property(lambda self: 40))  # 2 images of 17 tokens
    calls = []
    real = type(tiny_backbone)._encode_chunk
    monkeypatch.setattr(type(tiny_backbone), "_encode_chunk", lambda self, px, *a: calls.append(px.shape[0]) or real(self, px, *a))
    chunked = tiny_backbone.encode_images(preprocess_batch(imgs, 64))
    assert calls == [2, 2, 1]
    for name in ("cls", "clip", "gem"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), atol=1e-6, rtol=0)


def test_skipping_the_last_normal_block_leaves_gem_unchanged(tiny_backbone):
    pixels = preprocess_batch([random_image(7)], 64)
    full = tiny_backbone.encode_images(pixels)
    gem_only = tiny_backbone.encode_images(pixels, want_cls=False, want_clip=False)
    assert gem_only.clip is None and gem_only.cls is None
    torch.testing.assert_close(gem_only.gem, full.gem, atol=0, rtol=0)
    assert (full.gem - full.clip).abs().max() > 1e-3  # the GEM path really differs from CLIP


def test_self_self_attention_matches_direct_formula():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    t = torch.tensor([0.7, 2.0])
    out = self_self_attention(q, k, v, t, iterations=1)
    for b in range(2):
        for h in range(3):
            acc = 0
            for z in (q[b, h], k[b, h], v[b, h]):
                zn = l2n(z)
                z = softmax(t[b] * zn @ zn.T) @ zn
                zn = l2n(z)
                acc = acc + softmax(t[b] * zn @ zn.T) @ v[b, h]
            torch.testing.assert_close(out[b, h], acc / 3, atol=1e-6, rtol=0)


def test_pos_embed_resampling_keeps_cls_and_constants():
    pos = torch.randn(1 + 15 * 15, 8)
    assert resample_pos_embed(pos, 15) is pos
    out = resample_pos_embed(pos, 28)
    assert out.shape == (1 + 28 * 28, 8)
    torch.testing.assert_close(out[0], pos[0])
    const = torch.cat([torch.zeros(1, 8), torch.full((225, 8), 0.25)])
    torch.testing.assert_close(resample_pos_embed(const, 56)[1:], torch.full((56 * 56, 8), 0.25), atol=1e-6, rtol=0)
