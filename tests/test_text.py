"""Text encoding (truncated context) and the on-disk text-embedding cache."""

import numpy as np
import torch

from fade_cli.model.backbone import load_backbone
from fade_cli.prompts.text import TextEncoderCache

from conftest import TINY

TEXTS = ["a photo of a cat.", "a photo of a a cropped photo of the damaged metal nut with a long scratch.",
         "x", "a photo of a flawless object.", "a photo of a " + "very " * 30 + "long prompt."]


def test_truncated_text_encoding_equals_full_context(tiny_backbone):
    ours = tiny_backbone.encode_texts(TEXTS, batch_size=2)
    with torch.no_grad():
        ref = tiny_backbone.model.encode_text(tiny_backbone.tokenizer(TEXTS), normalize=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_cache_hits_misses_and_keys(tiny_backbone, tmp_path):
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    first = cache.encode(TEXTS[:3])
    assert (cache.hits, cache.misses) == (0, 1)
    again = cache.encode(TEXTS[:3])
    assert (cache.hits, cache.misses) == (1, 1)
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    cache.encode(TEXTS[:2])  # other texts: other key
    assert cache.misses == 2
    framed = cache.encode(TEXTS[:3], frame="{prompt}")  # other frame: other key, other embeddings
    assert (cache.hits, cache.misses) == (1, 3)
    assert not torch.allclose(framed, first)
    torch.testing.assert_close(framed, tiny_backbone.encode_texts(TEXTS[:3]), atol=0, rtol=0)


def test_cache_is_keyed_by_weights(tiny_backbone, tmp_path):
    other = load_backbone(TINY, "none", "cpu", seed=1)
    assert other.weights_id != tiny_backbone.weights_id
    TextEncoderCache(tiny_backbone, tmp_path).encode(TEXTS[:2])
    c2 = TextEncoderCache(other, tmp_path)
    c2.encode(TEXTS[:2])
    assert c2.misses == 1


def test_damaged_cache_file_is_recomputed(tiny_backbone, tmp_path):
    cache = TextEncoderCache(tiny_backbone, tmp_path)
    good = cache.encode(TEXTS[:2])
    (path,) = (tmp_path / "text").glob("*.npy")
    path.write_bytes(b"garbage")
    fresh = TextEncoderCache(tiny_backbone, tmp_path)  # a new run: nothing in memory, the disk copy is damaged
    again = fresh.encode(TEXTS[:2])
    assert fresh.misses == 1
    torch.testing.assert_close(again, good)
    assert np.load(path, allow_pickle=False).shape == tuple(good.shape)
