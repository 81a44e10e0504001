"""MuSc: zero-shot anomaly maps from the unlabeled batch itself (Li et al., ICLR 2024), as tensors.

Normal patches of an industrial product find many similar patches in the *other* images of a
batch; defects find few. Per subset of N images, per backbone layer l and aggregation degree r:

  1. LNAMD (local neighbourhood aggregation): each image's patch tokens after block l are
     layer-normalised over all of its patches and channels (no affine), averaged over r×r
     neighbourhoods (zero padding counted, as PatchCore's unfold + mean), L2-normalised.
  2. MSM (mutual scoring): for patch p of image i and every other image j,
        d_ij(p) = min_q ‖z_ip − z_jq‖₂
     and the patch's score is the mean of the ⌊(N−1)·fraction⌋ smallest d_ij(p) over j
     (fraction 0.3; at least one image).
  3. The (l, r) maps are averaged; image score = max of the map.
  4. RsCIN (re-scoring with constrained image-level neighbourhood): with W = cosine similarity
     of the images' CLS embeddings, for each window size k keep each row's k largest entries
     (the image itself included), row-normalise, s ← W̃ s; the results of all k are averaged.

Memory: `mutual_scores` never builds the N×L×N×L distance tensor; see its docstring for the
bound. Everything here is pure tensor code; the backbone pass is in `fade_cli.backbone`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_R_VALUES = (1, 3, 5)
DEFAULT_FRACTION = 0.3
# MuSc's run scripts: window sizes (1, 2, 3) for MVTec-AD, (1, 8, 9) for VisA
DEFAULT_RSCIN_WINDOWS = (1, 2, 3)
# similarity entries per matrix product in `mutual_scores`: 2**25 float32 = 128 MiB
DEFAULT_BLOCK_ELEMENTS = 1 << 25


def quarter_layers(depth: int) -> tuple[int, ...]:
    """0-based blocks at the quarter points of a ViT of `depth` blocks.

    MuSc's scripts read blocks (2, 5, 8, 11) of 12-block ViTs, ViT-B-16-plus-240 included, and
    (5, 11, 17, 23) of 24-block ones: the last block of each quarter. Shallow test models get
    the same rule (depth 7 -> (1, 3, 5, 6))."""
    return tuple(sorted({max(0, math.ceil(depth * q / 4) - 1) for q in (1, 2, 3, 4)}))


def layer_normalize(tokens: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, L, C) patch tokens -> each image standardised over all its L·C values (no affine)."""
    return F.layer_norm(tokens, tokens.shape[1:], eps=eps)


def neighbourhood_mean(features: torch.Tensor, r: int) -> torch.Tensor:
    """(B, L, C) on a square g×g patch grid -> mean over each patch's r×r window (r odd).

    Outside the grid counts as zero (the window is always divided by r²), as MuSc's
    unfold-with-padding followed by a mean does."""
    if r < 1 or r % 2 == 0:
        raise ValueError(f"aggregation degree r must be an odd number >= 1, not {r}")
    if r == 1:
        return features
    b, n, c = features.shape
    g = math.isqrt(n)
    grid = features.transpose(1, 2).reshape(b, c, g, g)
    pooled = F.avg_pool2d(grid, kernel_size=r, stride=1, padding=r // 2, count_include_pad=True)
    return pooled.reshape(b, c, n).transpose(1, 2)


def aggregate(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """LNAMD for one layer and degree: (B, L, C) raw tokens -> (B, L, C) unit patch features."""
    return F.normalize(neighbourhood_mean(layer_normalize(tokens.float()), r), dim=-1)


def lowest_count(others: int, fraction: float) -> int:
    """How many of the `others` per-image distances are averaged: ⌊others·fraction⌋, at least 1.

    (MuSc's code would average an empty set, NaN, below 4 images; one image is the minimum here.)
    The small epsilon keeps e.g. 10·0.3 = 3.0000000000000004 from flooring differently."""
    return max(1, min(others, math.floor(others * fraction + 1e-9)))


def mutual_scores(features: torch.Tensor, fraction: float = DEFAULT_FRACTION,
                  block_elements: int = DEFAULT_BLOCK_ELEMENTS, queries: Sequence[int] | None = None) -> torch.Tensor:
    """MSM: (N, L, C) unit patch features of a subset -> (N, L) patch scores, N >= 2.

    `queries` scores only those images (rows of the result, in that order), against all N:
    for splitting one subset's work, and for timing a few rows.

    For unit vectors ‖a − b‖ = √(2 − 2⟨a, b⟩), so the nearest patch is the most similar one and
    the distance needs only the largest dot product. Query image i is compared with the
    others `refs_per_block` images at a time. Memory beyond `features` and the (N, L) output:
    one similarity block of at most max(block_elements, L²) floats, plus its (L, refs) max and
    one (L, N) row of per-image distances, i.e. about 4·(block_elements + 2·N·L) bytes in
    float32 — independent of N² for a fixed block.
    """
    n, length, _ = features.shape
    if n < 2:
        raise ValueError("mutual scoring needs at least 2 images")
    k = lowest_count(n - 1, fraction)
    refs_per_block = max(1, block_elements // (length * length))
    flat = features.reshape(n * length, -1)
    queries = range(n) if queries is None else queries
    out = torch.empty(len(queries), length, dtype=features.dtype, device=features.device)
    for row, i in enumerate(queries):
        nearest = torch.empty(length, n, dtype=features.dtype, device=features.device)  # (L, N) max similarity
        for start in range(0, n, refs_per_block):
            stop = min(n, start + refs_per_block)
            sim = features[i] @ flat[start * length : stop * length].T  # (L, refs·L)
            nearest[:, start:stop] = sim.view(length, stop - start, length).amax(dim=-1)
        nearest[:, i] = float("-inf")  # never the image itself
        distances = (2.0 - 2.0 * nearest).clamp_min(0.0).sqrt()  # self -> +inf, sorts last
        out[row] = distances.topk(k, dim=1, largest=False).values.mean(dim=1)
    return out


def mutual_map(layer_tokens: Sequence[torch.Tensor], r_values: Sequence[int] = DEFAULT_R_VALUES,
               fraction: float = DEFAULT_FRACTION, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> torch.Tensor:
    """Raw tokens per layer, each (N, L, C), -> (N, g, g) map averaged over layers and r values.

    One (layer, r) aggregate exists at a time: memory is the tokens plus one (N, L, C) set."""
    if not layer_tokens or not r_values:
        raise ValueError("mutual scoring needs at least one layer and one aggregation degree")
    n, length, _ = layer_tokens[0].shape
    total = torch.zeros(n, length, dtype=torch.float32, device=layer_tokens[0].device)
    for tokens in layer_tokens:
        for r in r_values:
            total += mutual_scores(aggregate(tokens, r), fraction, block_elements)
    g = math.isqrt(length)
    return (total / (len(layer_tokens) * len(r_values))).view(n, g, g)


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """(N, g, g) -> (N,) the map's maximum (MuSc takes the max of the upsampled map; bilinear
    upsampling never exceeds the grid's maximum, so the grid's max is used)."""
    return maps.flatten(1).amax(dim=1)


def rscin(scores: torch.Tensor, cls: torch.Tensor, windows: Sequence[int] = DEFAULT_RSCIN_WINDOWS) -> torch.Tensor:
    """RsCIN re-ranking: (N,) scores, (N, D) L2-normalised CLS embeddings -> (N,) scores.

    For each window k (capped at N): keep each image's k most similar images (itself, with
    similarity 1, included), weights = those similarities clamped at 0, row-normalised; the new
    score is the weighted mean of their scores; the windows' results are averaged. k = 1 keeps
    a score as it is. MuSc min-max normalises the scores first; that affine map commutes with
    this row-stochastic averaging, so it is left out here and scores keep the map's units
    (comparable between subsets)."""
    if not windows:
        return scores
    sim = cls.float() @ cls.float().T
    n = sim.shape[0]
    out = torch.zeros_like(scores, dtype=torch.float32)
    for k in windows:
        if k < 1:
            raise ValueError(f"RsCIN window sizes must be >= 1, not {k}")
        values, idx = sim.topk(min(k, n), dim=1)
        weights = values.clamp_min(0.0)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        out += (weights * scores.float()[idx]).sum(dim=1)
    return out / len(windows)
