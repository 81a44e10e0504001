"""Shared fixtures: a tiny random-init open_clip ViT (7 blocks, width 64) and generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image
from timm.models import register_model

TESTS = Path(__file__).parent
TINY_CONFIG = TESTS / "fade-tiny.json"
open_clip.add_model_config(TINY_CONFIG)
TINY = "fade-tiny"


@pytest.fixture(scope="session")
def tiny_backbone():
    from fade_cli.model.backbone import load_backbone

    return load_backbone(TINY, "none", "cpu")


def random_image(seed: int, size=(72, 56)) -> Image.Image:
    """A textured RGB image (w, h) = size, different per seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.NEAREST)
    noise = rng.integers(0, 40, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        random_image(i, (72 + 8 * i, 56)).save(d / f"img{i}.png")
    return d


# A tiny timm DINOv2 ViT (2 blocks, width 48, patch 14), registered with timm so that the CLI
# can build it by name, as open_clip builds fade-tiny.
TINY_DINO = "fade_tiny_patch14_dinov2"


@register_model
def fade_tiny_patch14_dinov2(pretrained: bool = False, **kwargs):
    from timm.models.vision_transformer import vit_small_patch14_dinov2

    return vit_small_patch14_dinov2(pretrained=False, **{"depth": 2, "embed_dim": 48, "num_heads": 3, "img_size": 112, **kwargs})
