"""Guidance: language scores of embeddings against prompts, and the multi-scale fusion of maps.

Language (FADE eq. 1-2): p = exp(<f,h+>/τ) / (exp(<f,h+>/τ) + exp(<f,h−>/τ)), τ = 0.01,
which is exactly sigmoid((<f,h+> − <f,h−>)/τ).
Multi-scale aggregation (FADE sec. 3.2, official code): each scale's patch-grid map is resized
bilinearly (half-pixel centres, no antialias: cv2.resize's INTER_LINEAR) to the grid of the
largest scale, then the scales are averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..prompts.text import TextClassifier

TEMPERATURE = 0.01


def language_score(embeddings: torch.Tensor, text: TextClassifier, temperature: float = TEMPERATURE) -> torch.Tensor:
    """(..., D) L2-normalised embeddings -> (...) anomaly probability in [0, 1]."""
    h_n = text.h_normal.to(embeddings.device, embeddings.dtype)
    h_a = text.h_anomalous.to(embeddings.device, embeddings.dtype)
    return torch.sigmoid((embeddings @ h_a - embeddings @ h_n) / temperature)


def to_grid(patch_scores: torch.Tensor) -> torch.Tensor:
    """(B, g*g) -> (B, g, g), row-major as the ViT lays out its patches."""
    b, n = patch_scores.shape
    g = int(round(n**0.5))
    return patch_scores.view(b, g, g)


def resize_map(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W) bilinear, align_corners=False, no antialias."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def fuse_scales(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-scale (B, g_s, g_s) maps -> (B, G, G) mean at the largest grid G."""
    g = max(m.shape[-1] for m in maps)
    return torch.stack([resize_map(m, (g, g)) for m in maps]).mean(dim=0)
