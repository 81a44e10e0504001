"""Full-size ViT-B-16-plus-240 (random weights: same computation as the real checkpoint).

Marked slow: run with `python -m pytest -m slow` (a few minutes on 2 cores).
"""

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fade_cli.model.backbone import load_backbone, preprocess_batch

from conftest import random_image
from reference import gem_tokens

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_backbone():
    return load_backbone("ViT-B-16-plus-240", "none", "cpu")


def test_shapes_of_the_paper_model(full_backbone):
    v = full_backbone.model.visual
    assert (full_backbone.patch_size, v.conv1.out_channels, len(v.transformer.resblocks), full_backbone.embed_dim) == (16, 896, 12, 640)
    assert v.transformer.resblocks[0].attn.num_heads == 14 and v.positional_embedding.shape[0] == 1 + 15 * 15


@pytest.mark.parametrize("scale", [240, 448])
def test_full_size_tokens_match_reference(full_backbone, scale):
    pixels = preprocess_batch([random_image(0, (300, 200))], scale)
    emb = full_backbone.encode_images(pixels)
    with torch.no_grad():
        ref_clip, ref_gem = gem_tokens(full_backbone.model, pixels)
        ref_cls = F.normalize(full_backbone.model.encode_image(pixels), dim=-1)[0] if scale == 240 else ref_clip[0]
    torch.testing.assert_close(emb.cls[0], ref_cls, atol=2e-5, rtol=0)
    torch.testing.assert_close(emb.clip[0], ref_clip[1:], atol=2e-5, rtol=0)
    torch.testing.assert_close(emb.gem[0], ref_gem[1:], atol=2e-5, rtol=0)


def test_full_size_segment_three_scales(tmp_path, monkeypatch, capsys):
    from fade_cli.cli import main

    random_image(1, (320, 240)).save(tmp_path / "part.png")
    monkeypatch.setattr(sys, "argv", ["fade", "segment", str(tmp_path / "part.png"), "--out", str(tmp_path / "out"),
                                      "--pretrained", "none", "--device", "cpu", "--class", "bottle", "-q"])
    monkeypatch.setenv("FADE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    row = json.loads(out)
    m = np.load(row["outputs"]["map"], allow_pickle=False)
    assert m.shape == (240, 320) and m.dtype == np.float32 and 0 <= m.min() <= m.max() <= 1
    assert Image.open(row["outputs"]["mask"]).size == (320, 240)
