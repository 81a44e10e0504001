"""DINOv2 vision backbone: a timm ViT that turns images into patch tokens (AnomalyDINO sec. 3).

`load_dino_backbone` turns (timm model name, pretrained tag | checkpoint file | "none") into a
`DinoBackbone`; `DinoBackbone.encode` returns the patch tokens of timm's `forward_features`
(after the final norm, prefix tokens dropped), the features AnomalyDINO matches.

Input (AnomalyDINO's preprocessing, one documented change): RGB, resized with PIL bicubic so
that the short side is `size` (448) and the long side keeps the aspect ratio, rounded to the
nearest multiple of the patch size (14) — AnomalyDINO crops the remainder instead; both agree on
square images. ImageNet mean/std normalisation. The positional embedding is resampled per input
grid by timm (`dynamic_img_size`, bicubic, antialiased).

Weights are loaded without unpickling: safetensors, or torch.load(weights_only=True), then
mapped to timm's layout by timm's own checkpoint filter (official DINOv2 .pth files included).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import BackboneError, UsageError

DEFAULT_VISION_SIZE = 448  # AnomalyDINO's smaller edge
RANDOM_WEIGHTS = "none"
DINO_MODELS = ("vit_small_patch14_dinov2", "vit_base_patch14_dinov2")  # ViT-S/14, ViT-B/14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_size(width: int, height: int, short_side: int, patch: int) -> tuple[int, int]:
    """(width, height) of an image -> (width, height) it is resized to: short side = short_side,
    long side keeping the aspect ratio, rounded to a multiple of `patch` (at least one patch)."""
    if width <= height:
        long_side = height * short_side / width
        return short_side, max(patch, int(round(long_side / patch)) * patch)
    long_side = width * short_side / height
    return max(patch, int(round(long_side / patch)) * patch), short_side


@dataclass
class DinoBackbone:
    """A loaded timm DINOv2 ViT. Use `load_dino_backbone` to make one."""

    model: torch.nn.Module
    model_name: str
    pretrained: str
    device: torch.device
    size: int = DEFAULT_VISION_SIZE
    dtype: torch.dtype = torch.float32
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def weights_id(self) -> str:
        """Fingerprint of the weights themselves (tag, file or random init alike)."""
        if self._fingerprint is None:
            from .fingerprint import weights_fingerprint

            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> (3, H, W) ImageNet-normalised float tensor, H and W multiples of 14."""
        rgb = image.convert("RGB")
        w, h = input_size(*rgb.size, self.size, self.patch_size)
        arr = np.asarray(rgb.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (x - mean) / std

    def _autocast(self):
        if self.dtype != torch.float32:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return torch.autocast(self.device.type, enabled=False)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) from `preprocess` -> (B, (H/14)·(W/14), D) patch tokens, row-major, float32,
        not normalised (the foreground PCA reads their raw values)."""
        p = self.patch_size
        if pixels.shape[-1] % p or pixels.shape[-2] % p:
            raise UsageError(f"DINOv2 input {tuple(pixels.shape[-2:])} is not a multiple of the patch size {p}")
        with self._autocast():
            tokens = self.model.forward_features(pixels.to(self.device))
        return tokens[:, self.model.num_prefix_tokens :].float()

    def encode_images(self, images: Sequence[Image.Image]) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Images -> per image (patch tokens (N, D), grid (h, w)); images of one input size share a forward."""
        pixels = [self.preprocess(im) for im in images]
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, x in enumerate(pixels):
            by_shape[tuple(x.shape[-2:])].append(i)
        out: list = [None] * len(pixels)
        for (h, w), idx in by_shape.items():
            tokens = self.encode(torch.stack([pixels[i] for i in idx]))
            for row, i in enumerate(idx):
                out[i] = (tokens[row], (h // self.patch_size, w // self.patch_size))
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(pretrained).exists()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors without unpickling: safetensors, else torch.load(weights_only=True)."""
    if not path.is_file():
        raise BackboneError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one line
        raise BackboneError(f"{path}: cannot read as a checkpoint ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise BackboneError(f"{path}: not a state dict")
    return state


def _create(model_name: str, **kwargs):
    import timm

    if model_name not in timm.list_models():
        raise BackboneError(f"unknown vision backbone '{model_name}' (timm DINOv2 models: {', '.join(DINO_MODELS)})")
    return timm.create_model(model_name, num_classes=0, dynamic_img_size=True, **kwargs)


def _build(model_name: str, pretrained: str, seed: int):
    if pretrained == RANDOM_WEIGHTS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _create(model_name, pretrained=False)
    if _looks_like_path(pretrained):
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = read_state_dict(Path(pretrained))
        model = _create(model_name, pretrained=False)
        try:
            # timm's filter maps official DINOv2 checkpoints (mask_token, registers) to its layout
            # and resamples a positional embedding of another grid
            model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
        except Exception as exc:  # noqa: BLE001
            raise BackboneError(f"{pretrained}: cannot load as a {model_name} checkpoint ({_first_line(exc)})") from None
        return model
    import timm

    tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{model_name}.*")]
    if pretrained not in tags:
        known = ", ".join(tags) if tags else "none published"
        raise BackboneError(f"unknown pretrained tag '{pretrained}' for {model_name} (known: {known}; or pass a checkpoint file)")
    try:
        return _create(f"{model_name}.{pretrained}", pretrained=True)
    except Exception as exc:  # noqa: BLE001 - hub failures vary
        raise BackboneError(
            f"cannot get the '{pretrained}' weights of {model_name} ({_first_line(exc)}); offline? "
            f"download them elsewhere and pass --vision-pretrained /path/to/model.safetensors"
        ) from None


def load_dino_backbone(model_name: str = DINO_MODELS[0], pretrained: str = RANDOM_WEIGHTS, device: torch.device | str = "cpu",
                       size: int = DEFAULT_VISION_SIZE, dtype: torch.dtype = torch.float32, seed: int = 0) -> DinoBackbone:
    """Load a timm DINOv2 ViT by name with a timm pretrained tag, a local checkpoint or "none"
    (random weights seeded with `seed`: same computation and speed, no accuracy; tests, benchmarks)."""
    from timm.models.vision_transformer import VisionTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.ERROR)
        try:
            model = _build(model_name, pretrained, seed)
        finally:
            logging.disable(previous)
    if not isinstance(model, VisionTransformer):
        raise BackboneError(f"vision backbone '{model_name}' is not a timm ViT (use e.g. {DINO_MODELS[0]})")
    backbone = DinoBackbone(model=model.to(device).eval(), model_name=model_name, pretrained=pretrained,
                            device=torch.device(device), size=size, dtype=dtype)
    if size <= 0 or size % backbone.patch_size:
        raise UsageError(f"--vision-size {size} is not a positive multiple of the patch size {backbone.patch_size}")
    return backbone
